"""Tests for labkit.viz.report: the bars, dots and curves of a summary are its numbers."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from labkit.methods import gsp_experiments as gx  # noqa: E402
from labkit.viz import report  # noqa: E402


def _summary():
    """Two variants x two seeds of GSP results with known recall (no training)."""
    results = []
    for variant, base in (("gap", 0.50), ("gsp", 0.60)):
        for seed in (0, 1):
            metrics = {f"recall@{k}": base + 0.02 * seed + 0.05 * i
                       for i, k in enumerate((1, 2, 4, 8))}
            results.append(gx.Result(gx.Settings(variant=variant, seed=seed), metrics, [],
                                     (1, 28, 28), {}))
    return gx.summary(results)


def test_grouped_bars_are_means_with_std_and_seed_dots():
    fig = report.plot_grouped_bars(_summary(), ("recall@1",))
    ax = fig.axes[0]
    assert [p.get_height() for p in ax.patches] == pytest.approx([51.0, 61.0])
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections
                           if isinstance(c, PathCollection)])
    assert sorted(dots) == pytest.approx([50.0, 52.0, 60.0, 62.0])
    assert ax.get_ylim()[0] == pytest.approx(48.0)  # zoomed: 2 points below the lowest seed
    assert "axis not from 0" in ax.get_ylabel()
    plt.close(fig)
    fig = report.plot_grouped_bars(_summary(), ("recall@1", "recall@2"), zoom=False)
    assert len(fig.axes) == 2 and fig.axes[0].get_ylim()[0] == 0.0
    plt.close(fig)


def test_recall_curves_are_the_mean_recall_at_k():
    fig = report.plot_recall_curves(_summary())
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["gap", "gsp"]
    np.testing.assert_allclose(lines[1].get_ydata(), [61.0, 66.0, 71.0, 76.0])
    assert lines[0].get_linestyle() == "--"  # the baseline dashed
    plt.close(fig)
    with pytest.raises(ValueError, match="two group fields"):
        report.plot_recall_curves(gx.summary([]))
