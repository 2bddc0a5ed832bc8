"""Tests of the interchangeable-embeddings figures: they draw what they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import interchange as viz  # noqa: E402


def teardown_function():
    plt.close("all")


def test_plot_matrix_annotates_finite_cells_only():
    m = np.array([[np.nan, 0.91], [0.5, np.nan]])
    ax = viz.plot_matrix(m, ["a", "b"], title="retention")
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.50", "0.91"]
    assert ax.get_title() == "retention"
    with pytest.raises(ValueError, match="names"):
        viz.plot_matrix(m, ["a"])


def test_plot_curves_draws_one_line_per_curve():
    ax = viz.plot_curves([10, 100, 1000], {"affine": [0.2, 0.8, 0.99], "ridge": [0.5, 0.9, 0.99]},
                         logx=True, hline=1.0)
    assert len(ax.get_lines()) == 3 and ax.get_xscale() == "log"
    assert np.allclose(ax.get_lines()[0].get_ydata(), [0.2, 0.8, 0.99])
    with pytest.raises(ValueError, match="points"):
        viz.plot_curves([1, 2], {"x": [1.0]})


def test_similarity_scatter_panels_and_correlation_titles():
    rows = [{"cka": 0.1 * i, "mean_cca": 0.5, "svcca": 0.6, "procrustes": 1 - 0.1 * i,
             "retention": 0.9 + 0.01 * i, "same_arch": i == 0} for i in range(5)]
    fig = viz.plot_similarity_vs_retention(rows, correlations={"cka": 1.0})
    axes = fig.axes
    assert len(axes) == 4 and "+1.00" in axes[0].get_title()
    offsets = np.concatenate([c.get_offsets() for c in axes[0].collections])
    assert sorted(offsets[:, 0].round(2)) == [0.0, 0.1, 0.2, 0.3, 0.4]


def test_plot_roc_and_scatter():
    far = np.array([0, 1e-3, 1e-2, 0.1, 1])
    ax = viz.plot_roc({"native": (far, np.array([0, 0.5, 0.8, 0.95, 1]))}, min_far=1e-4)
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 1
    target = torch.randn(50, 6)
    ax = viz.plot_mapped_scatter(target, target + 0.01, torch.arange(50) % 3)
    dots, crosses = ax.collections[:2]
    assert dots.get_offsets().shape == (50, 2)
    assert np.allclose(dots.get_offsets(), crosses.get_offsets(), atol=0.05)
    with pytest.raises(ValueError, match="differ"):
        viz.plot_mapped_scatter(target, target[:, :3], torch.arange(50))
