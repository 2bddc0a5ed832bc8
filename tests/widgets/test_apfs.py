"""APFS widgets re-draw from recorded results when their controls change."""

from __future__ import annotations

import base64

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.methods import apfs_experiments as X  # noqa: E402
from labkit.methods.apfs import GeometryResult, GeometrySettings  # noqa: E402
from labkit.viz import apfs as V  # noqa: E402
from labkit.widgets import apfs as W  # noqa: E402


def fake_geometry(rounds=3, per_class=5, classes=3) -> GeometryResult:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return GeometryResult(
        GeometrySettings(rounds=rounds),
        [torch.randn(len(labels), 2, generator=g) for _ in range(rounds + 1)], labels,
        np.stack([[c * per_class + k for c in range(classes)] for k in range(rounds)]),
        [{"before": (0.2, 0.5), "after": (0.6, 0.7)}] * rounds, [1.0] * rounds, [])


def _sweeps() -> dict[str, list[X.Result]]:
    """Typed APFS results over λ and T with known recall (no training)."""
    return {p: [X.Result(X.Settings(**{p: v}), {"recall@1": 0.5 + v / 100}, [], 0.0, [1.0, 0.5])
                for v in values]
            for p, values in (("strength", (0.0, 0.1)), ("lifetime", (1, 10, 30)))}


def test_round_explorer_follows_the_slider():
    explorer = W.RoundExplorer(fake_geometry())
    assert explorer.slider.max == 2
    explorer.slider.value = 2
    fig = explorer.figure(explorer.slider.value)
    assert "round 2" in fig.axes[0].get_title()
    plt.close("all")


def test_sweep_explorer_switches_parameter():
    explorer = W.SweepExplorer(_sweeps())
    explorer.parameter.value = "lifetime"
    assert list(explorer.value.options) == [1, 10, 30]
    explorer.value.value = 30
    fig = explorer.figure("lifetime", 30)
    assert fig.axes[0].get_xlabel() == "T (lifetime)"
    with pytest.raises(ValueError):
        W.SweepExplorer({})
    plt.close("all")


def _png_of(figure) -> bytes:
    from labkit.widgets.picture import figure_png

    return figure_png(figure)


def test_round_explorer_shows_a_picture_of_round_zero_not_its_repr():
    geometry = fake_geometry()
    explorer = W.RoundExplorer(geometry)
    bundle = explorer.widget._repr_mimebundle_()
    assert "image/png" in bundle
    assert "VBox" not in bundle["text/plain"] and "RoundExplorer" in bundle["text/plain"]
    first = V.round_figure(geometry, 0, dpi=W.PICTURE_DPI)  # the static counterpart
    assert base64.b64decode(bundle["image/png"]) == _png_of(first)
    last = V.round_figure(geometry, 2, dpi=W.PICTURE_DPI)
    assert base64.b64decode(bundle["image/png"]) != _png_of(last)


def test_sweep_explorer_shows_a_picture_of_its_first_value_not_its_repr():
    sweeps = _sweeps()
    explorer = W.SweepExplorer(sweeps)
    bundle = explorer.widget._repr_mimebundle_()
    assert "image/png" in bundle
    assert "VBox" not in bundle["text/plain"] and "SweepExplorer" in bundle["text/plain"]
    first = V.sweep_figure(sweeps, "strength", 0.0, dpi=W.PICTURE_DPI)
    assert base64.b64decode(bundle["image/png"]) == _png_of(first)
    assert plt.get_fignums() == []  # the picture's figure is closed, not left for the notebook
