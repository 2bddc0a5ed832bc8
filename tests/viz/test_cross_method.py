"""Notebook 06's figures draw from typed pair scores and ensemble rows."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from labkit.methods.cross_method import PairScores, pair_matrix  # noqa: E402
from labkit.viz import cross_method as V  # noqa: E402

ROWS = [PairScores("a", "b", "x -> y", 0.1, 0.5, 0.9, 0.7),
        PairScores("b", "a", "y -> x", 0.2, 0.6, 0.95, 0.7)]


def test_pair_matrix_places_each_ordered_pair():
    m = pair_matrix(ROWS, ["a", "b"], "identity")
    assert np.isnan(m[0, 0]) and np.isnan(m[1, 1])
    assert (m[0, 1], m[1, 0]) == (0.1, 0.2)


def test_pair_matrices_one_panel_per_measure():
    fig = V.plot_pair_matrices(ROWS, ["a", "b"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [V.TITLES[m] for m in ("identity", "affine_few", "cka")]
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert sorted(texts) == ["0.10", "0.20"]
    plt.close(fig)


def test_ensemble_scores_one_dot_per_ensemble():
    rows = {"classical": [{"iou_cam": 0.4, "affine_all": 0.8, "cka": 0.5}],
            "fdl": [{"iou_cam": 0.2, "affine_all": 0.7, "cka": 0.4},
                    {"iou_cam": 0.25, "affine_all": 0.75, "cka": 0.45}]}
    fig = V.plot_ensemble_scores(rows)
    first = fig.axes[0]
    assert [len(c.get_offsets()) for c in first.collections] == [1, 2]
    assert tuple(first.collections[1].get_offsets()[0]) == (0.2, 0.7)
    plt.close(fig)
