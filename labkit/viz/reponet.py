"""Figures for notebook 01 (Regular Polytope Networks): the polytopes, feature panels with the
fixed vertices, snapshots over epochs and neural-collapse curves."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.methods import reponet as rp
from labkit.viz.features import class_color, scatter_features


def distinct_angles(vertices: torch.Tensor, decimals: int = 2) -> dict[float, int]:
    """{angle in degrees: number of vertex pairs} over all unordered pairs of rows (V, d)."""
    unit = torch.nn.functional.normalize(vertices.double(), dim=1)
    cos = (unit @ unit.T).clamp(-1, 1)
    i, j = torch.triu_indices(len(unit), len(unit), 1)
    angles = torch.rad2deg(torch.acos(cos[i, j])).numpy().round(decimals)
    values, counts = np.unique(angles, return_counts=True)
    return {float(v): int(c) for v, c in zip(values, counts, strict=True)}


def _edges(vertices: np.ndarray) -> list[tuple[int, int]]:
    # the polytope's edges join nearest neighbours (true for simplex, cube and orthoplex)
    cos = vertices @ vertices.T
    np.fill_diagonal(cos, -2)
    top = cos.max()
    return [(a, b) for a in range(len(vertices)) for b in range(a + 1, len(vertices))
            if cos[a, b] > top - 1e-9]


def polytope_figure(kind: str, num_classes: int):
    """An interactive plotly 3-D view of a 3-D polytope: vertices w_k, edges, rays from 0;
    hovering a vertex shows its angles to the others."""
    import plotly.graph_objects as go

    w = rp.polytope_vertices(kind, num_classes, dtype=torch.float64)
    if w.shape[1] != 3:
        raise ValueError(f"{kind} with {num_classes} classes is {w.shape[1]}-D; pick K giving d = 3")
    v = w.numpy()
    angles = np.degrees(np.arccos(np.clip(v @ v.T, -1, 1)))
    traces = []
    for a, b in _edges(v):
        traces.append(go.Scatter3d(x=v[[a, b], 0], y=v[[a, b], 1], z=v[[a, b], 2], mode="lines",
                                   line=dict(color="grey", width=3), showlegend=False, hoverinfo="skip"))
    for k, p in enumerate(v):
        color = "rgb({},{},{})".format(*(int(255 * c) for c in class_color(k)))
        traces.append(go.Scatter3d(x=[0, p[0]], y=[0, p[1]], z=[0, p[2]], mode="lines",
                                   line=dict(color=color, width=5), showlegend=False, hoverinfo="skip"))
    hover = [f"w{k}<br>" + "<br>".join(f"∠(w{k}, w{j}) = {angles[k, j]:.1f}°"
                                         for j in range(len(v)) if j != k) for k in range(len(v))]
    traces.append(go.Scatter3d(x=v[:, 0], y=v[:, 1], z=v[:, 2], mode="markers+text",
                               text=[f"w{k}" for k in range(len(v))], hovertext=hover, hoverinfo="text",
                               marker=dict(size=6, color="crimson"), showlegend=False))
    phi = math.degrees(rp.min_vertex_angle(w))
    fig = go.Figure(data=traces)
    fig.update_layout(title=f"{kind}, K={num_classes}: min angle φ = {phi:.1f}°", width=380, height=360,
                      margin=dict(l=0, r=0, t=30, b=0), scene=dict(aspectmode="cube"),
                      modebar=dict(orientation="v"))  # a top toolbar would cover the title
    return fig


def polytope_panels(specs: Sequence[tuple[str, int]] = (("simplex", 4), ("orthoplex", 6), ("cube", 8))):
    """Static matplotlib view of the 3-D polytopes (the fallback of `polytope_figure`)."""
    fig = plt.figure(figsize=(3.6 * len(specs), 3.6))
    for i, (kind, k) in enumerate(specs):
        v = rp.polytope_vertices(kind, k, dtype=torch.float64).numpy()
        ax = fig.add_subplot(1, len(specs), i + 1, projection="3d")
        for a, b in _edges(v):
            ax.plot(*v[[a, b]].T, color="grey", lw=1)
        for j, p in enumerate(v):
            ax.plot(*np.stack([np.zeros(3), p]).T, color=class_color(j), lw=2)
        ax.scatter(*v.T, color="crimson", s=25)
        phi = math.degrees(rp.min_vertex_angle(torch.from_numpy(v)))
        ax.set_title(f"{kind} (K={k}, d=3): φ={phi:.1f}°", fontsize=10)
        ax.set_box_aspect((1, 1, 1))
    fig.tight_layout()
    return fig


def _to_display(features: torch.Tensor, directions: torch.Tensor | None):
    """Features (N, d) and directions (K, d) in <= 3-D. When d > 3: a linear map onto the top two
    principal axes of the features, applied without centring, so the origin stays at the origin
    and the rays w_k keep their meaning."""
    if features.shape[1] <= 3:
        return features, directions
    x = features.double()
    _, _, v = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    basis = v[:2].T
    shown = (directions.double() @ basis).float() if directions is not None else None
    return (x @ basis).float(), shown


def feature_panels(results: Sequence[dict[str, Any]], ncols: int = 3, size: float = 3.4,
                   normalize: bool = False, max_points: int = 600):
    """Side-by-side test-feature scatters of runs, class directions drawn as rays (PCA if d > 3)."""
    n = len(results)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    dims = {min(r["test_features"].shape[1], 3) if r["test_features"].shape[1] <= 3 else 2 for r in results}
    fig = plt.figure(figsize=(size * ncols, size * nrows))
    for i, r in enumerate(results):
        feats, labels = r["test_features"], r["test_labels"]
        keep = torch.arange(len(labels))[: max_points] if len(labels) <= max_points else \
            torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:max_points]
        feats, labels = feats[keep], labels[keep]
        directions = r["directions"]
        feats, directions = _to_display(feats, directions)
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d" if 3 in dims and feats.shape[1] == 3 else None)
        title = f"{r['label']}: {100 * r['accuracy']:.1f}%"
        if r["test_features"].shape[1] > 3:
            title += " (PCA)"
        scatter_features(feats, labels, directions=directions, ax=ax, title=title,
                         normalize=normalize and r["test_features"].shape[1] <= 3, legend=False)
    fig.tight_layout()
    return fig


def snapshot_strip(result: dict[str, Any], indices: Sequence[int] | None = None, size: float = 3.0):
    """The recorded probe features of one run at a few epochs (static fallback of the slider)."""
    history = result["history"]
    if not history.snapshots:
        raise ValueError("this run recorded no snapshots")
    if indices is None:
        n = len(history.snapshots)
        indices = sorted({0, n // 3, (2 * n) // 3, n - 1})
    dim = history.snapshots[0].shape[1]
    fig = plt.figure(figsize=(size * len(indices), size))
    for i, index in enumerate(indices):
        feats, directions = _to_display(history.snapshots[index], result["directions"])
        ax = fig.add_subplot(1, len(indices), i + 1, projection="3d" if dim == 3 else None)
        scatter_features(feats, result["probe_labels"], directions=directions, ax=ax,
                         title=f"{result['label']}, epoch {history.snapshot_epochs[index]}",
                         legend=False)
    fig.tight_layout()
    return fig


COLLAPSE_KEYS = (("nc1", "NC1: tr(Σ_W Σ_B⁺)/K"), ("nc2", "NC2: distance to simplex ETF"),
                 ("nc3", "NC3: classifier vs means"), ("nc4", "NC4: mismatch with nearest mean"))


def collapse_curves(results: Sequence[dict[str, Any]], size: float = 3.2):
    """Neural-collapse measures over epochs (on the training probe), one line per run."""
    fig, axes = plt.subplots(1, len(COLLAPSE_KEYS), figsize=(size * len(COLLAPSE_KEYS), size * 0.85))
    for r in results:
        epochs = [row["epoch"] for row in r["history"].epochs if "nc1" in row]
        style = "-" if r["fixed"] else "--"
        for ax, (key, _) in zip(axes, COLLAPSE_KEYS, strict=True):
            ax.plot(epochs, r["history"].metric(key), style, marker="o", ms=3, label=r["label"])
    for ax, (key, title) in zip(axes, COLLAPSE_KEYS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if key == "nc1":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def alignment_bars(results: Sequence[dict[str, Any]], size: float = 3.2):
    """Per run: test accuracy, and each class mean's angle to its class direction (degrees)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(size * 3, size))
    names = [r["label"] for r in results]
    left.barh(names, [100 * r["accuracy"] for r in results],
              color=["tab:red" if r["fixed"] else "tab:grey" for r in results])
    low = min(100 * r["accuracy"] for r in results)
    left.set_xlim(max(0, low - 5), 100)
    left.set_xlabel("test accuracy (%)")
    for i, r in enumerate(results):
        angles = r["angle_to_direction"].numpy()
        right.scatter(angles, np.full(len(angles), i), color=[class_color(k) for k in range(len(angles))], s=14)
    right.axvline(10, color="k", lw=0.8, ls=":")
    right.set_yticks(range(len(results)), names)
    right.set_xlabel("angle of class mean to its direction (°)")
    fig.tight_layout()
    return fig
