"""Tests of the map explorer: the static figure and the widget callbacks (called directly)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402

import pytest  # noqa: E402

from labkit.methods.interchange_analysis import synthetic_zoo  # noqa: E402
from labkit.viz.interchange import map_figure  # noqa: E402
from labkit.widgets import interchange as wid  # noqa: E402
from labkit.widgets.picture import figure_png  # noqa: E402


@pytest.fixture(scope="module")
def zoo():
    return synthetic_zoo(n_members=3, dim=6, num_classes=4, seed=1)


def test_map_explorer_callbacks_refit(zoo):
    explorer = wid.MapExplorer(zoo, "toy0", "toy1")
    first = explorer.view.retention
    assert explorer.rank.disabled and explorer.alpha.disabled and not explorer.n_pairs.disabled
    explorer.method.value = "reduced_rank"
    assert not explorer.rank.disabled and explorer.alpha.disabled
    explorer.rank.value = 1
    assert explorer.view.r2 < 0.9  # a rank-1 map cannot carry a 6-d space
    explorer.method.value = "affine"
    assert explorer.view.retention == pytest.approx(first)
    full_r2 = explorer.view.r2
    explorer.n_pairs.value = 10  # few pairs for a 6-d map: it fits the noise, held-out R^2 drops
    assert explorer.view.r2 < full_r2
    explorer.dst.value = explorer.src.value
    explorer.method.value = "identity"
    assert explorer.rank.disabled and explorer.alpha.disabled and explorer.n_pairs.disabled
    assert "no slider applies" in explorer.hint.value
    assert explorer.view.r2 == pytest.approx(1.0)
    assert wid.map_explorer(zoo) is not None


def test_map_explorer_displays_a_picture_of_its_first_state(zoo):
    widget = wid.map_explorer(zoo, "toy0", "toy1")
    bundle = widget._repr_mimebundle_()
    png = base64.b64decode(bundle["image/png"])
    first_state, _ = map_figure(zoo, "toy0", "toy1", "affine", n_pairs=len(zoo.train_labels))
    assert png == figure_png(first_state)
    assert bundle["text/plain"].startswith("map explorer: an interactive widget")
    assert "VBox" not in bundle["text/plain"] and "children" not in bundle["text/plain"]


def test_map_explorer_says_why_a_map_cannot_be_built():
    import dataclasses

    toy = synthetic_zoo(n_members=2, dim=6, num_classes=4, seed=1)
    narrow = synthetic_zoo(n_members=2, dim=3, num_classes=4, seed=2).members[0]
    toy.extras["low_dim"] = dataclasses.replace(narrow, name="narrow")
    explorer = wid.MapExplorer(toy, "toy0", "narrow")
    assert explorer.dst.options[-1] == "narrow" and explorer.view.retention > 0
    explorer.method.value = "identity"
    assert explorer.view is None and "equal dims" in explorer.message.value
    explorer.method.value = "affine"
    assert explorer.view is not None and explorer.message.value == ""
