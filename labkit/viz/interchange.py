"""Figures for the interchangeable-embeddings lab (notebook 03).

Every function draws numbers it is given (matrices, curves, tables from
`labkit.methods.interchange_experiments`) onto a matplotlib Axes and returns it, so the notebook
cells stay one line long and the tests can check what was drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes

__all__ = [
    "plot_matrix",
    "plot_curves",
    "plot_similarity_vs_retention",
    "plot_roc",
    "plot_mapped_scatter",
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


_INDEX_LABELS = {"cka": "linear CKA", "mean_cca": "mean CCA", "svcca": "SVCCA",
                 "procrustes": "Procrustes distance"}


def plot_similarity_vs_retention(rows: Sequence[Mapping[str, float]],
                                 indices: Sequence[str] = ("cka", "mean_cca", "svcca", "procrustes"),
                                 *, target: str = "retention",
                                 correlations: Mapping[str, float] | None = None) -> plt.Figure:
    """One scatter per similarity index: index value (x) vs `target` (y), one dot per model pair.

    rows: dicts with the index keys and `target` (and optionally "same_arch" to colour pairs).
    `correlations`: Spearman rho per index, written into each panel's title.
    """
    if not rows:
        raise ValueError("no rows to plot")
    fig, axes = plt.subplots(1, len(indices), figsize=(3.2 * len(indices), 3.0), squeeze=False)
    same = np.array([bool(r.get("same_arch", False)) for r in rows])
    y = np.array([r[target] for r in rows], dtype=float)
    for ax, key in zip(axes[0], indices, strict=True):
        x = np.array([r[key] for r in rows], dtype=float)
        ax.scatter(x[~same], y[~same], s=14, label="different arch")
        if same.any():
            ax.scatter(x[same], y[same], s=18, marker="s", label="same arch, other seed")
        title = _INDEX_LABELS.get(key, key)
        if correlations is not None and key in correlations:
            title += f"\nSpearman rho = {correlations[key]:+.2f}"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(_INDEX_LABELS.get(key, key), fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel(target)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    return fig


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
    mean = target.mean(0)
    _, _, vh = torch.linalg.svd(target - mean, full_matrices=False)
    basis = vh[:2].T
    t2, m2 = ((target - mean) @ basis).numpy(), ((mapped - mean) @ basis).numpy()
    keep = np.linspace(0, len(t2) - 1, min(max_points, len(t2))).astype(int)
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
