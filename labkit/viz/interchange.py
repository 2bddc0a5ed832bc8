"""Figures for the interchangeable-embeddings lab (notebook 03; the method is described in
docs/methods/interchange.md).

The `plot_*` functions draw what they are given (matrices, curves, and the typed results of
`labkit.methods.interchange_analysis`) onto a matplotlib Axes and return it, so the notebook
cells stay one line long and the tests can check what was drawn.

The map explorer's views live here too: `map_figure` draws one state of the explorer
(`interchange_analysis.explore_map`; the live widget `labkit.widgets.interchange.MapExplorer`
redraws it on every control change), and `map_slider` precomputes a small grid of map kinds
(`map_grid`: ridge alphas, ranks, fitting-set sizes) as a plotly figure that plays without a
kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.colors import to_hex

from labkit.methods.interchange_analysis import (
    MapView,
    OpenSetResults,
    Similarity,
    explore_map,
)
from labkit.methods.interchange_experiments import Zoo
from labkit.viz.playable import Frame, add_slider, compact

__all__ = [
    "plot_matrix",
    "plot_curves",
    "plot_similarity_vs_retention",
    "plot_similarity_heatmap",
    "plot_roc",
    "plot_open_set_roc",
    "plot_mapped_scatter",
    "GridPoint",
    "map_figure",
    "map_grid",
    "map_slider",
]


def _axes(ax: Axes | None, size: tuple[float, float] = (5, 4)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def plot_matrix(matrix: np.ndarray | torch.Tensor, names: Sequence[str], *, ax: Axes | None = None,
                title: str | None = None, vmin: float = 0.0, vmax: float = 1.0,
                fmt: str = "{:.2f}", cmap: str = "viridis", xlabel: str = "target B",
                ylabel: str = "source A") -> Axes:
    """An annotated source x target heatmap (rows: source A, columns: target B); NaN cells blank."""
    m = np.asarray(matrix, dtype=float)
    if m.ndim != 2 or m.shape[0] != len(names) or m.shape[1] != len(names):
        raise ValueError(f"matrix {m.shape} does not match {len(names)} names")
    ax = _axes(ax, (1.0 + 0.6 * len(names), 0.6 + 0.55 * len(names)))
    image = ax.imshow(np.ma.masked_invalid(m), vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    mid = (vmin + vmax) / 2
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                ax.text(j, i, fmt.format(m[i, j]), ha="center", va="center", fontsize=7,
                        color="black" if m[i, j] > mid else "white")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_curves(xs: Sequence[float], curves: Mapping[str, Sequence[float]], *,
                ax: Axes | None = None, xlabel: str = "", ylabel: str = "median retention",
                title: str | None = None, logx: bool = False,
                hline: float | None = None, hline_label: str | None = None) -> Axes:
    """One line per entry of `curves` (same length as `xs`), e.g. retention vs fitting pairs."""
    ax = _axes(ax)
    for label, ys in curves.items():
        if len(ys) != len(xs):
            raise ValueError(f"curve {label!r} has {len(ys)} points but there are {len(xs)} x values")
        ax.plot(xs, ys, marker="o", ms=4, label=label)
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1, label=hline_label)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return ax


_INDEX_LABELS = {"cka": "linear CKA", "cka_debiased": "linear CKA (debiased)",
                 "mean_cca": "mean CCA", "svcca": "SVCCA", "procrustes": "Procrustes distance"}


def _present_indices(similarity: Similarity, indices: Sequence[str] | None) -> list[str]:
    if not similarity.rows:
        raise ValueError("no rows to plot")
    present = similarity.rows[0].index
    return list(indices) if indices is not None else [k for k in _INDEX_LABELS if k in present]


def plot_similarity_vs_retention(similarity: Similarity,
                                 indices: Sequence[str] | None = None) -> plt.Figure:
    """One scatter per similarity index: index value (x) vs retention (y), one dot per model
    pair (squares: two seeds of one architecture), Spearman rho in each panel's title.

    `indices` defaults to every known index the rows carry. Where rows carry the index's
    shuffled-pairs value (B's rows permuted), the panel shades that baseline's range over pairs
    and marks its median: what the index gives with the pairing broken.
    """
    indices = _present_indices(similarity, indices)
    rows = similarity.rows
    fig, axes = plt.subplots(1, len(indices), figsize=(3.2 * len(indices), 3.0), squeeze=False)
    same = np.array([r.same_arch for r in rows])
    y = np.array([r.retention for r in rows], dtype=float)
    for ax, key in zip(axes[0], indices, strict=True):
        if key in rows[0].shuffled:
            baseline = np.array([r.shuffled[key] for r in rows], dtype=float)
            ax.axvspan(baseline.min(), baseline.max(), color="grey", alpha=0.2, lw=0)
            ax.axvline(np.median(baseline), color="grey", ls="--", lw=1, label="shuffled pairs")
        x = np.array([r.index[key] for r in rows], dtype=float)
        ax.scatter(x[~same], y[~same], s=14, label="different arch")
        if same.any():
            ax.scatter(x[same], y[same], s=18, marker="s", label="same arch, other seed")
        title = _INDEX_LABELS.get(key, key)
        if key in similarity.spearman:
            title += f"\nSpearman rho = {similarity.spearman[key]:+.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(_INDEX_LABELS.get(key, key), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("retention")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _as_similarity(key: str, values: np.ndarray) -> np.ndarray:
    """Values on a 'higher is more similar' scale in [0, 1] for colouring: the Procrustes
    distance d in [0, sqrt(2)] becomes 1 - d / sqrt(2)."""
    return 1 - values / np.sqrt(2) if key == "procrustes" else values


def plot_similarity_heatmap(similarity: Similarity, indices: Sequence[str] | None = None,
                            *, ax: Axes | None = None, title: str | None = None) -> Axes:
    """Model pairs (rows) x similarity indices (columns), each cell annotated with the index's
    value; a last row, set apart, holds each index's shuffled-pairs baseline
    (`Similarity.baseline`). Colour is similarity on one 0-1 scale (the Procrustes distance d
    drawn as 1 - d / sqrt(2)), so a column close in colour to its baseline row says little
    beyond chance."""
    indices = _present_indices(similarity, indices)
    rows = similarity.rows
    missing = [key for key in indices if key not in rows[0].shuffled]
    if missing:
        raise ValueError(f"rows lack the shuffled-pairs baseline of {missing} (as "
                         "similarity_rows gives)")
    baseline = similarity.baseline()
    values = np.array([[r.index[key] for key in indices] for r in rows]
                      + [[baseline[key] for key in indices]], dtype=float)
    colour = np.stack([_as_similarity(key, values[:, k]) for k, key in enumerate(indices)], 1)
    ax = _axes(ax, (2.6 + 1.05 * len(indices), 1.2 + 0.24 * len(values)))
    image = ax.imshow(colour, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(indices)), [_INDEX_LABELS.get(k, k) for k in indices], rotation=30,
                  ha="right", fontsize=8)
    ax.set_yticks(range(len(values)), [r.pair for r in rows] + ["shuffled pairs (median)"],
                  fontsize=7)
    ax.axhline(len(rows) - 0.5, color="white", lw=3)
    for i in range(values.shape[0]):
        for k in range(values.shape[1]):
            ax.text(k, i, f"{values[i, k]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if colour[i, k] > 0.5 else "white")
    if title:
        ax.set_title(title, fontsize=10)
    ax.figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="similarity")
    return ax


def plot_roc(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], *, ax: Axes | None = None,
             title: str | None = None, min_far: float = 1e-4) -> Axes:
    """ROC curves (TAR vs FAR on a log axis) for several score sets, e.g. native vs mapped."""
    ax = _axes(ax)
    for label, (far, tar) in curves.items():
        far, tar = np.asarray(far), np.asarray(tar)
        keep = far >= min_far
        ax.plot(far[keep], tar[keep], label=label)
    ax.set_xscale("log")
    ax.set_xlim(min_far, 1)
    ax.set_xlabel("false accept rate (FAR)")
    ax.set_ylabel("true accept rate (TAR)")
    for far_mark in (1e-3, 1e-2):
        ax.axvline(far_mark, color="grey", lw=0.7, ls=":")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return ax


def plot_open_set_roc(results: OpenSetResults, *, ax: Axes | None = None,
                      title: str | None = None) -> Axes:
    """E4's ROC for the pair of the shuffled control, A -> B: B native, A native, A mapped into
    B, and the shuffled-map control (title default: the number of unseen images)."""
    src, dst = results.shuffled_control.source, results.shuffled_control.target
    keys = {f"{dst} native": f"{dst} native", f"{src} native": f"{src} native",
            f"{src} → {dst} mapped": f"{src} -> {dst} mapped",
            f"{src} → {dst} shuffled-map control": f"{src} -> {dst} shuffled control"}
    return plot_roc({label: (results.grid, results.curves[key]) for label, key in keys.items()},
                    ax=ax, title=title or f"unseen classes, {results.n_unseen} images")


def _pca_plane(target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and top-2 principal directions (d, 2) of `target` (N, d), in float64."""
    target = torch.as_tensor(target, dtype=torch.float64)
    mean = target.mean(0)
    _, _, vh = torch.linalg.svd(target - mean, full_matrices=False)
    return mean, vh[:2].T


def _spread_index(n: int, max_points: int) -> np.ndarray:
    """Up to `max_points` indices spread evenly over 0..n-1 (the test sets are class-balanced
    in order, so an even spread keeps every class)."""
    if max_points < 1:
        raise ValueError(f"max_points must be >= 1, got {max_points}")
    return np.linspace(0, n - 1, min(max_points, n)).astype(int)


def plot_mapped_scatter(target: torch.Tensor, mapped: torch.Tensor, labels: torch.Tensor, *,
                        ax: Axes | None = None, title: str | None = None,
                        max_points: int = 600) -> Axes:
    """B's own test embeddings (dots) and A's mapped ones (crosses) in the top-2 PCA plane of B's.

    Both sets are projected with the same basis, so a good map puts each cross on its dot cloud.
    """
    target, mapped = torch.as_tensor(target, dtype=torch.float64), torch.as_tensor(mapped, dtype=torch.float64)
    if target.shape != mapped.shape:
        raise ValueError(f"target {tuple(target.shape)} and mapped {tuple(mapped.shape)} differ")
    ax = _axes(ax)
    mean, basis = _pca_plane(target)
    t2, m2 = ((target - mean) @ basis).numpy(), ((mapped - mean) @ basis).numpy()
    keep = _spread_index(len(t2), max_points)
    labels = np.asarray(labels)[keep]
    cmap = plt.get_cmap("tab10")
    ax.scatter(t2[keep, 0], t2[keep, 1], c=cmap(labels % 10), s=10, alpha=0.35, label="B's embedding")
    ax.scatter(m2[keep, 0], m2[keep, 1], c=cmap(labels % 10), s=12, marker="x", lw=0.8,
               label="A mapped into B")
    ax.set_xlabel("PC 1 of B")
    ax.set_ylabel("PC 2 of B")
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="best")
    return ax


# ----------------------------------------------------------------------------- the map explorer

def _accuracy_bars(src: str, dst: str, view: MapView) -> dict[str, float]:
    """The explorer's three bars: A's own accuracy, B's own, and A mapped through B's head."""
    return {f"A\n{src}": view.source_accuracy, f"B\n{dst}": view.target_accuracy,
            "A mapped,\nB's head": view.accuracy}


_BAR_COLOURS = ("tab:blue", "tab:orange", "tab:green")


def _view_line(view: MapView) -> str:
    return (f"retention {view.retention:.3f}  R² {view.r2:.2f}  "
            f"CKA {view.cka:.2f} (debiased {view.cka_debiased:.2f})")


def map_figure(zoo: Zoo, src: str, dst: str, method: str = "affine", **options: Any
               ) -> tuple[plt.Figure, MapView]:
    """The static counterpart of `MapExplorer`: one state of the explorer. Left: B's test
    embeddings and A's mapped ones in B's top-2 PCA plane. Right: accuracies of A, B and A
    mapped through B's head. `method` and `options` as `interchange_analysis.explore_map`.
    Returns (figure, the state's `MapView`)."""
    view = explore_map(zoo, src, dst, method, **options)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 2]},
                                      dpi=80)
    a, b = zoo.member(src), zoo.member(dst)
    plot_mapped_scatter(b.test_emb, view.emb_map(a.test_emb.double()), zoo.test_labels, ax=left,
                        title=f"{src} -> {dst} ({method})", max_points=300)
    bars = _accuracy_bars(src, dst, view)
    right.bar(range(3), list(bars.values()), color=list(_BAR_COLOURS))
    right.set_xticks(range(3), list(bars), fontsize=8)
    right.set_ylim(0, 1.05)
    right.set_ylabel("test accuracy")
    right.set_title(_view_line(view), fontsize=9)
    for i, value in enumerate(bars.values()):
        right.text(i, value + 0.01, f"{value:.3f}", ha="center", fontsize=8)
    fig.tight_layout()
    return fig, view


class GridPoint(NamedTuple):
    """One precomputed explorer state: its slider label, the map kind and `explore_map`
    options (rank, alpha, n_pairs)."""

    label: str
    method: str
    options: Mapping[str, Any] = {}


def map_grid(zoo: Zoo, src: str, dst: str, *, pair_counts: Sequence[int] = (20, 100),
             alphas: Sequence[float] = (1.0, 1e3, 1e5),
             ranks: Sequence[int] = (1, 2, 4, 8)) -> list[GridPoint]:
    """The explorer's map kinds for the pair `src` -> `dst`, with a few values of the knob each
    reads: affine on all training images, then on `pair_counts` of them; ridge at each alpha;
    Procrustes; reduced rank at each rank; the closed form from the heads; the identity.

    Points the pair cannot take are left out (Procrustes and the identity need d_A = d_B, a rank
    at most min(d_A, d_B), a pair count below the number of training images), so every point
    returned can be built. The first point is the live widget's first state."""
    a, b = zoo.member(src), zoo.member(dst)
    n_train = len(zoo.train_labels)
    same_dim = a.dim == b.dim
    points = [GridPoint("affine, all pairs", "affine")]
    points += [GridPoint(f"affine, N={n}", "affine", {"n_pairs": n})
               for n in pair_counts if 1 <= n < n_train]
    points += [GridPoint(f"ridge alpha={alpha:g}", "ridge", {"alpha": float(alpha)})
               for alpha in alphas]
    if same_dim:
        points.append(GridPoint("Procrustes", "procrustes"))
    points += [GridPoint(f"rank {k}", "reduced_rank", {"rank": k})
               for k in ranks if 1 <= k <= min(a.dim, b.dim)]
    points.append(GridPoint("closed form (heads)", "heads (closed form)"))
    if same_dim:
        points.append(GridPoint("identity", "identity"))
    return points


def _plotly_class_colours(count: int) -> list[list[Any]]:
    """A colour scale that gives integer label k (0..count-1) the tab10 colour k % 10."""
    colours = [to_hex(plt.get_cmap("tab10")(k % 10)) for k in range(count)]
    if count == 1:
        return [[0.0, colours[0]], [1.0, colours[0]]]
    return [[k / (count - 1), colour] for k, colour in enumerate(colours)]


def _padded_range(values: np.ndarray, pad: float = 0.08) -> list[float]:
    low, high = float(np.min(values)), float(np.max(values))
    margin = pad * (high - low or 1.0)
    return [low - margin, high + margin]


def map_slider(zoo: Zoo, src: str, dst: str, grid: Sequence[GridPoint] | None = None, *,
               max_points: int = 200) -> Any:
    """The map explorer without a kernel: a plotly figure with one slider step per grid point
    (default `map_grid(zoo, src, dst)`), each showing what the widget shows for that state.

    Left: B's test embeddings (dots, fixed) and A's mapped ones (crosses) in B's top-2 PCA plane,
    `max_points` of them, coloured by digit. Right: acc(A), acc(B) and acc(A -> B) bars. Each
    step's title carries its retention, R^2 and CKA. The axes keep one range over all steps
    (B's cloud and every step's crosses), so a poor map visibly leaves B's cloud.
    """
    import plotly.graph_objects as go

    grid = list(map_grid(zoo, src, dst) if grid is None else grid)
    if len(grid) < 2:
        raise ValueError(f"the slider needs at least two grid points, got {len(grid)}")
    a, b = zoo.member(src), zoo.member(dst)
    mean, basis = _pca_plane(b.test_emb)
    keep = _spread_index(len(b.test_emb), max_points)
    labels = np.asarray(zoo.test_labels)[keep]
    target_plane = compact(((b.test_emb.double() - mean) @ basis)[keep])
    states = []
    for point in grid:
        view = explore_map(zoo, src, dst, point.method, **dict(point.options))
        mapped_plane = compact(((view.emb_map(a.test_emb.double()) - mean) @ basis)[keep])
        states.append((point, mapped_plane, view))

    marker = dict(color=labels, colorscale=_plotly_class_colours(int(labels.max()) + 1),
                  cmin=0, cmax=int(labels.max()))

    def traces(mapped_plane: np.ndarray, view: MapView) -> list[Any]:
        bars = _accuracy_bars(src, dst, view)
        heights = compact(list(bars.values()))
        return [
            go.Scatter(x=target_plane[:, 0], y=target_plane[:, 1], mode="markers",
                       name="B's embedding", xaxis="x", yaxis="y", hoverinfo="skip",
                       marker=dict(marker, size=6, opacity=0.35)),
            go.Scatter(x=mapped_plane[:, 0], y=mapped_plane[:, 1], mode="markers",
                       name="A mapped into B", xaxis="x", yaxis="y", hoverinfo="skip",
                       marker=dict(marker, size=6, symbol="x", line=dict(width=0))),
            go.Bar(x=[name.replace("\n", " ") for name in bars], y=heights, xaxis="x2",
                   yaxis="y2", marker_color=[to_hex(c) for c in _BAR_COLOURS],
                   text=[f"{v:.3f}" for v in bars.values()], textposition="outside",
                   showlegend=False),
        ]

    frames = [Frame(point.label, traces(mapped_plane, view),
                    {"title": {"text": f"{src} → {dst}, {point.label}: {_view_line(view)}"}})
              for point, mapped_plane, view in states]
    fig = go.Figure(data=list(frames[0].traces))
    every_point = np.concatenate([target_plane] + [plane for _, plane, _ in states])
    fig.update_layout(
        width=900, height=430, margin=dict(l=50, r=20, t=60, b=40),
        xaxis=dict(domain=[0.0, 0.56], range=_padded_range(every_point[:, 0]), title="PC 1 of B"),
        yaxis=dict(range=_padded_range(every_point[:, 1]), title="PC 2 of B"),
        xaxis2=dict(domain=[0.66, 1.0], anchor="y2"),
        yaxis2=dict(anchor="x2", range=[0, 1.12], title="test accuracy"),
        legend=dict(x=0.0, y=1.0, bgcolor="rgba(255,255,255,0.6)"),
        title=dict(font=dict(size=13)))
    return add_slider(fig, frames, prefix="map", active=0)
