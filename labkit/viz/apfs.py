"""Figures for APFS: feasible sets in the plane, constraint satisfaction, ablation, sweeps."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle

VARIANT_COLORS = {"baseline": "#8c8c8c", "apfs": "#1f77b4", "apfs+mining": "#d62728"}


def _colors(num: int) -> list:
    cmap = plt.get_cmap("tab10")
    return [cmap(i % 10) for i in range(num)]


def draw_feasible_set(ax: Axes, embeddings: torch.Tensor, labels: torch.Tensor,
                      rep_index: Sequence[int], alpha: float, beta: float,
                      title: str | None = None, class_names: Sequence[str] | None = None) -> Axes:
    """2-D embeddings (N, 2), the representatives (stars) and their margin balls.

    Solid circle: radius alpha (its class's samples belong inside); dashed: radius beta (other
    classes' samples belong outside). `rep_index[c]` is class c's representative (row index).
    """
    if embeddings.ndim != 2 or embeddings.shape[1] != 2:
        raise ValueError(f"draw_feasible_set needs 2-D embeddings (N, 2), got "
                         f"{tuple(embeddings.shape)}")
    e = embeddings.detach().cpu().numpy()
    y = labels.cpu().numpy()
    colors = _colors(len(rep_index))
    for c, r in enumerate(rep_index):
        color = colors[c]
        pts = e[y == c]
        name = class_names[c] if class_names is not None else str(c)
        ax.scatter(pts[:, 0], pts[:, 1], s=6, color=color, alpha=0.5, linewidths=0, label=name)
        cx, cy = e[r]
        ax.add_patch(Circle((cx, cy), alpha, fill=False, color=color, lw=1.5))
        ax.add_patch(Circle((cx, cy), beta, fill=False, color=color, lw=1.0, ls="--"))
        ax.scatter([cx], [cy], marker="*", s=220, color=color, edgecolors="black", linewidths=1,
                   zorder=5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.autoscale_view()
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def plot_round(geometry: Mapping[str, Any], round_index: int, fig: Any = None) -> Figure:
    """Before / after panels of one round of `apfs_experiments.geometry_run` (a Figure or
    SubFigure may be passed in to draw on)."""
    reps = geometry["representatives"]
    if not 0 <= round_index < len(reps):
        raise ValueError(f"round_index must be in 0..{len(reps) - 1}, got {round_index}")
    cfg = geometry["config"]
    fig = fig if fig is not None else plt.figure(figsize=(10, 4.6))
    fig.clear()
    axes = fig.subplots(1, 2)
    sat = geometry["satisfaction"][round_index]
    for ax, when, snap in zip(axes, ("before", "after"),
                              (geometry["snapshots"][round_index],
                               geometry["snapshots"][round_index + 1]), strict=True):
        intra, inter = sat[when]
        draw_feasible_set(ax, snap, geometry["labels"], reps[round_index], cfg["alpha"],
                          cfg["beta"], class_names=geometry.get("classes"),
                          title=f"round {round_index} {when}: within alpha {100 * intra:.0f}%, "
                                f"beyond beta {100 * inter:.0f}%")
    axes[0].legend(loc="best", fontsize=7, markerscale=2, title="class", title_fontsize=7)
    fig.suptitle(f"Relaxed feasible set Theta_{round_index}: representatives (stars), "
                 f"alpha={cfg['alpha']} (solid), beta={cfg['beta']} (dashed)", fontsize=10)
    if hasattr(fig, "tight_layout"):  # a SubFigure takes its parent's layout
        fig.tight_layout()
    return fig


def plot_satisfaction(geometry: Mapping[str, Any], ax: Axes | None = None) -> Axes:
    """Fraction of Theta_k's constraints that hold at the start and the end of each round k."""
    ax = ax if ax is not None else plt.subplots(figsize=(6, 3.2))[1]
    sat = geometry["satisfaction"]
    for j, (name, style) in enumerate((("intra (<= alpha)", "-"), ("inter (>= beta)", "--"))):
        xs, ys = [], []
        for k, row in enumerate(sat):
            xs += [k, k + 1]
            ys += [row["before"][j], row["after"][j]]
        ax.plot(xs, ys, style, marker="o", ms=3, label=name)
    ax.set_xlabel("round k (new representatives at each integer)")
    ax.set_ylabel("constraints of Theta_k satisfied")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return ax


def _grouped(rows: Sequence[Mapping[str, Any]], metric: str):
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    variants = list(dict.fromkeys(r["variant"] for r in rows))
    values = {(lo, v): [float(r[metric]) for r in rows if r["loss"] == lo and r["variant"] == v]
              for lo in losses for v in variants}
    return losses, variants, values


def plot_ablation(rows: Sequence[Mapping[str, Any]],
                  metrics: Sequence[str] = ("recall@1", "nmi")) -> Figure:
    """Grouped bars (mean over seeds, error bar = std, dots = seeds) per loss and variant."""
    if not rows:
        raise ValueError("plot_ablation needs at least one result row")
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        losses, variants, values = _grouped(rows, metric)
        width = 0.8 / len(variants)
        lows = []
        for j, v in enumerate(variants):
            xs = np.arange(len(losses)) + (j - (len(variants) - 1) / 2) * width
            means = [np.mean(values[(lo, v)]) if values[(lo, v)] else np.nan for lo in losses]
            stds = [np.std(values[(lo, v)], ddof=1) if len(values[(lo, v)]) > 1 else 0
                    for lo in losses]
            ax.bar(xs, means, width, yerr=stds, capsize=3, label=v,
                   color=VARIANT_COLORS.get(v), alpha=0.85)
            for x, lo in zip(xs, losses, strict=True):
                pts = values[(lo, v)]
                ax.scatter([x] * len(pts), pts, s=8, color="black", zorder=3)
                lows += pts
        ax.set_xticks(np.arange(len(losses)), [lo.replace("_", "-") for lo in losses])
        ax.set_ylabel(metric)
        if lows:
            ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.0, max(lows) + 0.05))
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Zero-shot retrieval on unseen classes (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_recall_curves(rows: Sequence[Mapping[str, Any]], ks: Sequence[int] = (1, 2, 4, 8),
                       ) -> Figure:
    """Recall@K against K, one panel per loss, one line per variant (mean over seeds)."""
    losses = list(dict.fromkeys(r["loss"] for r in rows))
    fig, axes = plt.subplots(1, len(losses), figsize=(4 * len(losses), 3.2), squeeze=False,
                             sharey=True)
    for ax, loss in zip(axes[0], losses, strict=True):
        for v in dict.fromkeys(r["variant"] for r in rows):
            group = [r for r in rows if r["loss"] == loss and r["variant"] == v]
            if not group:
                continue
            means = [np.mean([r[f"recall@{k}"] for r in group]) for k in ks]
            ax.plot(ks, means, marker="o", label=v, color=VARIANT_COLORS.get(v))
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(ks), [str(k) for k in ks])
        ax.set_title(loss.replace("_", "-"), fontsize=10)
        ax.set_xlabel("K")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("recall@K")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_sweep(rows: Sequence[Mapping[str, Any]], metric: str = "recall@1",
               highlight: Any = None, fig: Figure | None = None) -> Figure:
    """Left: `metric` against the swept value; right: ||theta - theta_anchor|| at each round end.

    `highlight` picks one swept value to draw bold (the widget's slider position).
    """
    if not rows:
        raise ValueError("plot_sweep needs at least one result row")
    parameter = rows[0]["parameter"]
    values = sorted(dict.fromkeys(r["value"] for r in rows))
    fig = fig if fig is not None else plt.figure(figsize=(10, 3.4))
    fig.clear()
    left, right = fig.subplots(1, 2)
    positions = np.arange(len(values))
    means = [np.mean([r[metric] for r in rows if r["value"] == v]) for v in values]
    left.plot(positions, means, marker="o", color="#1f77b4")
    for r in rows:
        left.scatter(values.index(r["value"]), r[metric], s=10, color="black", zorder=3)
    if highlight in values:
        i = values.index(highlight)
        left.scatter([i], [means[i]], s=120, facecolors="none", edgecolors="#d62728", lw=2)
    symbol = "lambda" if parameter == "strength" else "T (lifetime)"
    left.set_xticks(positions, [f"{v:g}" for v in values])
    left.set_xlabel(symbol)
    left.set_ylabel(f"{metric} (unseen classes)")
    left.grid(alpha=0.3)
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(values)))
    for color, v in zip(colors, values, strict=True):
        dist = [r["round_distances"] for r in rows if r["value"] == v][0]
        bold = v == highlight
        right.plot(np.arange(1, len(dist) + 1), dist, color=color, lw=2.5 if bold else 1,
                   alpha=1.0 if bold or highlight is None else 0.5, label=f"{symbol}={v:g}")
    right.set_xlabel("round")
    right.set_ylabel("||theta - theta_anchor|| at round end")
    right.set_yscale("log")
    right.legend(fontsize=7)
    right.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def plot_step_cost(cost: Mapping[str, float], ax: Axes | None = None) -> Axes:
    """Bars of ms per step from `apfs_experiments.step_cost` (measured side by side)."""
    ax = ax if ax is not None else plt.subplots(figsize=(4.5, 3))[1]
    names = [k[:-3] for k in cost if k.endswith("_ms")]
    ax.bar(names, [cost[f"{n}_ms"] for n in names],
           color=[VARIANT_COLORS.get(n, "gray") for n in names])
    ax.set_ylabel("ms per training step (median)")
    ax.grid(axis="y", alpha=0.3)
    return ax
