"""Figures of notebook 06 (`labkit.methods.cross_method`): pair-score matrices of a zoo and the
ensembles' interchangeability against how much their members' attention overlaps. The 2 x 2's
bars are `labkit.viz.report.plot_grouped_bars` of `cross_method.combination_summary`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from labkit.viz.interchange import plot_matrix

if TYPE_CHECKING:
    from labkit.methods.cross_method import PairScores

TITLES = {"identity": "retention, no map", "affine_few": "retention, affine on 20 pairs",
          "affine_all": "retention, affine on all", "cka": "linear CKA (test)"}
METHOD_COLORS = {"classical": "tab:blue", "fdl": "tab:orange"}


def plot_pair_matrices(rows: Sequence[PairScores], names: Sequence[str],
                       measures: Sequence[str] = ("identity", "affine_few", "cka")) -> Figure:
    """One source x target heatmap per measure of `PairScores` (rows: source A, columns:
    target B), members in the order of `names`."""
    from labkit.methods.cross_method import pair_matrix

    fig, axes = plt.subplots(1, len(measures), figsize=(4.4 * len(measures), 3.9), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        plot_matrix(pair_matrix(rows, names, measure), names, ax=ax,
                    title=TITLES.get(measure, measure), vmax=1.0)
    fig.tight_layout()
    return fig


def plot_ensemble_scores(scores: Mapping[str, Sequence[Mapping[str, Any]]],
                         overlap: str = "iou_cam",
                         measures: Sequence[str] = ("affine_all", "cka")) -> Figure:
    """Per measure, one dot per ensemble (a seed): x its members' attention overlap (`overlap`,
    lower is more diverse), y their mean pair score; {method: [ensemble_scores rows]}."""
    fig, axes = plt.subplots(1, len(measures), figsize=(4.2 * len(measures), 3.4), squeeze=False)
    for ax, measure in zip(axes[0], measures, strict=True):
        for method, rows in scores.items():
            ax.scatter([r[overlap] for r in rows], [r[measure] for r in rows], s=30,
                       label=method, color=METHOD_COLORS.get(method))
        ax.set_xlabel(f"{overlap} between members (lower: more diverse)")
        ax.set_ylabel(f"mean over member pairs: {TITLES.get(measure, measure)}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
