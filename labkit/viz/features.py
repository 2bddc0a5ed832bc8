"""Feature scatter plots: matplotlib (static, for stored notebooks) and plotly (interactive)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Set3").colors


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def class_color(k: int) -> tuple[float, float, float]:
    return PALETTE[k % len(PALETTE)]


def _prepare(features, labels, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    points, labels = _numpy(features).astype(np.float64), _numpy(labels).astype(int)
    if points.ndim != 2 or points.shape[1] not in (2, 3):
        raise ValueError(f"features must be (N, 2) or (N, 3), got {points.shape}; project() first")
    if len(points) != len(labels):
        raise ValueError(f"{len(points)} features but {len(labels)} labels")
    if normalize:
        points = points / np.linalg.norm(points, axis=1, keepdims=True).clip(1e-12)
    return points, labels


def scatter_features(features, labels, *, class_names: Sequence[str] | None = None,
                     directions=None, ax=None, title: str | None = None, normalize: bool = False,
                     point_size: float = 4.0, legend: bool = True):
    """Scatter (N, 2|3) features coloured by class; `directions` (K, 2|3) drawn as rays from the origin.

    Rays are scaled to the 98th percentile of the feature norms so they sit among the points.
    Returns the matplotlib Axes (3-D axes for 3 columns).
    """
    points, labels = _prepare(features, labels, normalize)
    dim = points.shape[1]
    if ax is None:
        fig = plt.figure(figsize=(4.2, 4.2))
        ax = fig.add_subplot(projection="3d" if dim == 3 else None)
    for k in np.unique(labels):
        sel = labels == k
        name = class_names[k] if class_names is not None else str(k)
        ax.scatter(*points[sel].T, s=point_size, color=class_color(int(k)), label=name, alpha=0.7,
                   linewidths=0)
    if directions is not None:
        rays = _numpy(directions).astype(np.float64)
        if rays.shape[1] != dim:
            raise ValueError(f"directions have dim {rays.shape[1]}, features {dim}")
        reach = np.percentile(np.linalg.norm(points, axis=1), 98) if not normalize else 1.0
        rays = rays / np.linalg.norm(rays, axis=1, keepdims=True).clip(1e-12) * reach
        for k, ray in enumerate(rays):
            ax.plot(*np.stack([np.zeros(dim), ray]).T, color=class_color(k) if k < 10 else "k",
                    lw=1.5, alpha=0.9)
            ax.scatter(*ray[:, None], color="k", s=18, marker="x")
    if dim == 2:
        ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title, fontsize=10)
    if legend and len(np.unique(labels)) <= 12:
        ax.legend(fontsize=6, markerscale=2, loc="best", ncol=2, frameon=False)
    return ax


def plotly_features(features, labels, *, class_names: Sequence[str] | None = None, directions=None,
                    title: str | None = None, normalize: bool = False, widget: bool = False):
    """The same picture with plotly (rotatable in 3-D); `widget=True` returns a FigureWidget."""
    import plotly.graph_objects as go

    points, labels = _prepare(features, labels, normalize)
    dim = points.shape[1]
    traces = []
    for k in np.unique(labels):
        sel = labels == k
        name = class_names[k] if class_names is not None else str(k)
        color = "rgb({},{},{})".format(*(int(255 * c) for c in class_color(int(k))))
        coords = dict(zip("xyz", points[sel].T, strict=False))
        marker = dict(size=2 if dim == 3 else 4, color=color)
        trace = go.Scatter3d if dim == 3 else go.Scatter
        traces.append(trace(mode="markers", name=name, marker=marker, **coords))
    if directions is not None:
        rays = _numpy(directions).astype(np.float64)
        if rays.ndim != 2 or rays.shape[1] != dim:
            raise ValueError(f"directions must be (K, {dim}) like the features, got {rays.shape}")
        reach = np.percentile(np.linalg.norm(points, axis=1), 98) if not normalize else 1.0
        rays = rays / np.linalg.norm(rays, axis=1, keepdims=True).clip(1e-12) * reach
        for k, ray in enumerate(rays):
            coords = {a: [0.0, float(v)] for a, v in zip("xyz", ray, strict=False)}
            trace = go.Scatter3d if dim == 3 else go.Scatter
            traces.append(trace(mode="lines+markers", name=f"w{k}", showlegend=False,
                                line=dict(color="black", width=3), marker=dict(size=3), **coords))
    figure_class = go.FigureWidget if widget else go.Figure
    fig = figure_class(data=traces)
    fig.update_layout(title=title, width=520, height=480, margin=dict(l=0, r=0, t=30, b=0),
                      modebar=dict(orientation="v"))  # a top toolbar would cover the title
    if dim == 2:
        fig.update_yaxes(scaleanchor="x", scaleratio=1)
    return fig


def project(features: torch.Tensor, method: str = "pca", dim: int = 2, seed: int = 0) -> torch.Tensor:
    """Project (N, D) features to (N, dim) with PCA (exact, fast) or UMAP (imported lazily)."""
    x = torch.as_tensor(features).double()
    if x.ndim != 2 or dim < 1:
        raise ValueError(f"need (N, D) features and dim >= 1, got {tuple(x.shape)}, dim={dim}")
    if x.shape[1] <= dim:
        return x.float()
    if method == "pca":
        centred = x - x.mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        return (centred @ v[:dim].T).float()
    if method == "umap":
        import umap  # slow import (numba): only when asked

        reducer = umap.UMAP(n_components=dim, random_state=seed, init="random",
                            n_neighbors=min(15, len(x) - 1))
        return torch.from_numpy(reducer.fit_transform(x.numpy())).float()
    raise ValueError(f"unknown projection {method!r}; use 'pca' or 'umap'")


def feature_grid(panels: Sequence[tuple[str, object, object, object]], ncols: int = 3,
                 size: float = 3.4, normalize: bool = False):
    """Side-by-side scatters: panels are (title, features, labels, directions or None)."""
    n = len(panels)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    dims = {(_numpy(p[1]).shape[1]) for p in panels}
    fig = plt.figure(figsize=(size * ncols, size * nrows))
    for i, (title, feats, labels, directions) in enumerate(panels):
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d" if 3 in dims else None)
        scatter_features(feats, labels, directions=directions, ax=ax, title=title,
                         normalize=normalize, legend=i == 0)
    fig.tight_layout()
    return fig
