"""Figures of an experiment `Summary` (`labkit.core.experiment`), shared by the runners whose
groups are (loss, variant): grouped bars with the seeds as dots, and recall@K curves."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from labkit.core.experiment import Summary


def _two_fields(summary: Summary) -> tuple[list, list]:
    """The values of the summary's two group fields (e.g. losses, variants), in order."""
    if len(summary.by) != 2 or not summary.stats:
        raise ValueError(f"a figure of groups needs two group fields and results, got "
                         f"{summary.by} with {len(summary.stats)} groups")
    first = list(dict.fromkeys(key[0] for key in summary.stats))
    second = list(dict.fromkeys(key[1] for key in summary.stats))
    return first, second


def plot_grouped_bars(summary: Summary, metrics: Sequence[str] = ("recall@1",), *,
                      scale: float = 100.0, zoom: bool = True,
                      colors: Mapping[str, str] | None = None) -> Figure:
    """One panel per metric: bars per (first field, second field) group, mean ± std over seeds,
    each seed a dot. zoom: the y axis starts just below the lowest seed, not at 0, so gaps of a
    point show (the axis label says so)."""
    first, second = _two_fields(summary)
    field_a, field_b = summary.by
    fig, axes = plt.subplots(1, len(metrics), figsize=(1.4 * len(first) * len(metrics) + 2, 3.4),
                             squeeze=False)
    width = 0.8 / len(second)
    for ax, metric in zip(axes[0], metrics, strict=True):
        lowest = math.inf
        for j, b in enumerate(second):
            xs = np.arange(len(first)) + (j - (len(second) - 1) / 2) * width
            stats = [summary.stats.get((a, b), {}).get(metric) for a in first]
            means = [scale * s.mean if s else np.nan for s in stats]
            stds = [scale * s.std if s else 0.0 for s in stats]
            ax.bar(xs, means, width, yerr=stds, capsize=2, label=str(b),
                   color=(colors or {}).get(b), alpha=0.85)
            for x, a in zip(xs, first, strict=True):
                seeds = [scale * r[metric] for r in summary.rows
                         if r[field_a] == a and r[field_b] == b and metric in r]
                ax.scatter([x] * len(seeds), seeds, s=8, color="black", zorder=3)
                lowest = min([lowest, *seeds])
        ax.set_xticks(np.arange(len(first)), [str(a).replace("_", "-") for a in first],
                      fontsize=8)
        label = f"{metric}" + (" (%)" if scale == 100 else "")
        if zoom and math.isfinite(lowest):
            ax.set_ylim(bottom=max(0.0, math.floor(lowest) - 2.0 * scale / 100))
            label += ", axis not from 0"
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8, ncols=len(second), loc="lower center",
                      bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def plot_recall_curves(summary: Summary, ks: Sequence[int] = (1, 2, 4, 8), *,
                       colors: Mapping[str, str] | None = None) -> Figure:
    """recall@K against K (mean over seeds, %), one panel per value of the first group field,
    one line per value of the second."""
    first, second = _two_fields(summary)
    fig, axes = plt.subplots(1, len(first), figsize=(4 * len(first), 3.2), squeeze=False,
                             sharey=True)
    for ax, a in zip(axes[0], first, strict=True):
        for b in second:
            stats = summary.stats.get((a, b))
            if not stats:
                continue
            ys = [100 * stats[f"recall@{k}"].mean for k in ks]
            ax.plot(list(ks), ys, "--" if str(b).lower().startswith(("gap", "baseline")) else "-",
                    marker="o", label=str(b), color=(colors or {}).get(b))
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_title(str(a).replace("_", "-"), fontsize=10)
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall@K (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
