"""Tests of the map explorer: the static figure and the widget callbacks (called directly)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import base64  # noqa: E402

import pytest  # noqa: E402

from labkit.methods.interchange_experiments import synthetic_zoo  # noqa: E402
from labkit.widgets import interchange as wid  # noqa: E402
from labkit.widgets.picture import figure_png  # noqa: E402


@pytest.fixture(scope="module")
def zoo():
    return synthetic_zoo(n_members=3, dim=6, num_classes=4, seed=1)


def test_explorer_metrics_fitted_vs_identity(zoo):
    _, fitted = wid.explorer_metrics(zoo, "toy0", "toy1", "affine")
    _, ident = wid.explorer_metrics(zoo, "toy0", "toy1", "identity")
    _, heads = wid.explorer_metrics(zoo, "toy0", "toy1", "heads (closed form)")
    assert fitted["retention"] > 0.95 and fitted["r2"] > 0.9
    assert ident["r2"] < fitted["r2"]
    # closed form into a 6-d head with 4 classes is exact: B's head reproduces A's accuracy
    assert heads["accuracy"] == pytest.approx(fitted["source_accuracy"])
    with pytest.raises(ValueError, match="rank"):
        wid.explorer_metrics(zoo, "toy0", "toy1", "reduced_rank", rank=0)


def test_explorer_figure_has_scatter_and_bars(zoo):
    fig, metrics = wid.explorer_figure(zoo, "toy0", "toy2", "ridge", alpha=10.0)
    assert len(fig.axes) == 2
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights == pytest.approx([metrics["source_accuracy"], metrics["target_accuracy"],
                                     metrics["accuracy"]])


def test_map_explorer_callbacks_refit(zoo):
    explorer = wid.MapExplorer(zoo, "toy0", "toy1")
    first = explorer.metrics["retention"]
    assert explorer.rank.disabled and explorer.alpha.disabled and not explorer.n_pairs.disabled
    explorer.method.value = "reduced_rank"
    assert not explorer.rank.disabled and explorer.alpha.disabled
    explorer.rank.value = 1
    assert explorer.metrics["r2"] < 0.9  # a rank-1 map cannot carry a 6-d space
    explorer.method.value = "affine"
    assert explorer.metrics["retention"] == pytest.approx(first)
    full_r2 = explorer.metrics["r2"]
    explorer.n_pairs.value = 10  # few pairs for a 6-d map: it fits the noise, held-out R^2 drops
    assert explorer.metrics["r2"] < full_r2
    explorer.dst.value = explorer.src.value
    explorer.method.value = "identity"
    assert explorer.rank.disabled and explorer.alpha.disabled and explorer.n_pairs.disabled
    assert "no slider applies" in explorer.hint.value
    assert explorer.metrics["r2"] == pytest.approx(1.0)
    assert wid.map_explorer(zoo) is not None


def test_map_explorer_displays_a_picture_of_its_first_state(zoo):
    widget = wid.map_explorer(zoo, "toy0", "toy1")
    bundle = widget._repr_mimebundle_()
    png = base64.b64decode(bundle["image/png"])
    first_state, _ = wid.explorer_figure(zoo, "toy0", "toy1", "affine",
                                         n_pairs=len(zoo.train_labels))
    assert png == figure_png(first_state)
    assert bundle["text/plain"].startswith("map explorer: an interactive widget")
    assert "VBox" not in bundle["text/plain"] and "children" not in bundle["text/plain"]
