"""Feature scatter plots: matplotlib (static, for stored notebooks), plotly (interactive) and
the kernel-free epoch replay (`replay_slider`, a plotly figure with one frame per recorded epoch)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch

PALETTE = plt.get_cmap("tab10").colors + plt.get_cmap("Set3").colors


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def class_color(k: int) -> tuple[float, float, float]:
    return PALETTE[k % len(PALETTE)]


def class_rgb(k: int) -> str:
    """`class_color(k)` as a plotly colour string."""
    return "rgb({},{},{})".format(*(int(255 * c) for c in class_color(k)))


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
        color = class_rgb(int(k))
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


# ----------------------------------------------------------------------------- kernel-free replay

def display_basis(features: torch.Tensor) -> torch.Tensor | None:
    """The top two principal axes (d, 2) of (N, d) features when d > 3, else None.

    Applied as `features @ basis` without centring, so the origin stays at the origin and rays
    w_k through the same map keep their meaning; one basis for every frame of a replay keeps
    the frames comparable (a fresh PCA per epoch could flip or turn the picture).
    """
    x = torch.as_tensor(features).double()
    if x.ndim != 2:
        raise ValueError(f"features must be (N, d), got {tuple(x.shape)}")
    if x.shape[1] <= 3:
        return None
    _, _, v = torch.linalg.svd(x - x.mean(0), full_matrices=False)
    return v[:2].T


def shown_points(features, basis: torch.Tensor | None = None, normalize: bool = False) -> np.ndarray:
    """(N, d) features as the (N, 2|3) points a replay draws: through `basis` (see
    `display_basis`) when given, then onto the unit circle or sphere when `normalize`."""
    x = torch.as_tensor(features).double()
    if basis is not None:
        x = x @ basis.double()
    if x.ndim != 2 or x.shape[1] not in (2, 3):
        raise ValueError(f"features must be (N, 2|3) or come with a basis, got {tuple(x.shape)}")
    if normalize:
        x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x.numpy()


def scaled_rays(directions, reach: float, basis: torch.Tensor | None = None) -> np.ndarray:
    """Class directions (K, d) as ray end points (K, 2|3) of length `reach` (after `basis`)."""
    rays = shown_points(directions, basis, normalize=True)
    return rays * reach


def fixed_ranges(arrays: Sequence[np.ndarray], pad: float = 0.06) -> list[list[float]]:
    """Per axis [low, high] covering every (N, dim) array and the origin, padded by `pad` of
    the span: one range for all frames, so what moves is the points, not the axes."""
    stacked = np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
                              for a in arrays])
    low = np.minimum(stacked.min(0), 0.0)
    high = np.maximum(stacked.max(0), 0.0)
    margin = pad * np.maximum(high - low, 1e-9)
    return [[float(lo), float(hi)] for lo, hi in zip(low - margin, high + margin, strict=True)]


def frame_traces(points: np.ndarray, labels: np.ndarray, *, rays: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, legend: bool = True) -> list[Any]:
    """The plotly traces of a replay's shown frame: one line per ray (K, dim) from the origin,
    then one marker trace per class present in `labels` (ascending class id, coloured as
    `class_color`), drawn over the rays so that an early epoch's small features stay visible."""
    import plotly.graph_objects as go

    dim = points.shape[1]
    trace_class = go.Scatter3d if dim == 3 else go.Scatter
    size = 2 if dim == 3 else 4
    traces = []
    for k, end in enumerate(rays if rays is not None else []):
        coords = {axis: [0.0, round(float(v), 4)] for axis, v in zip("xyz", end, strict=False)}
        traces.append(trace_class(mode="lines", showlegend=False, hoverinfo="skip",
                                  line=dict(color=class_rgb(k), width=3), **coords))
    for k, coords in zip(np.unique(labels), moving_traces(points, labels), strict=True):
        name = class_names[k] if class_names is not None else str(int(k))
        traces.append(coords.update(mode="markers", name=name, legendgroup=name, showlegend=legend,
                                    marker=dict(size=size, color=class_rgb(int(k))),
                                    hoverinfo="name"))
    return traces


def moving_traces(points: np.ndarray, labels: np.ndarray) -> list[Any]:
    """What a replay frame carries for its marker traces: only each class's coordinates (a
    frame's traces are merged into the figure's, so colours, names and axes stay as set)."""
    import plotly.graph_objects as go

    from labkit.viz.playable import compact

    trace_class = go.Scatter3d if points.shape[1] == 3 else go.Scatter
    return [trace_class(**dict(zip("xyz", compact(points[labels == k]).T, strict=False)))
            for k in np.unique(labels)]


def still_traces(count: int, dim: int) -> list[Any]:
    """`count` empty traces for a frame: the figure's traces at those places (rays, polytope
    edges) stay as they are on every frame."""
    import plotly.graph_objects as go

    trace_class = go.Scatter3d if dim == 3 else go.Scatter
    return [trace_class() for _ in range(count)]


def _recorded(history) -> tuple[list[torch.Tensor], list[int]]:
    if not history.snapshots:
        raise ValueError("this history has no snapshots: train with fit(..., probe=images)")
    if len(history.snapshots) != len(history.snapshot_epochs):
        raise ValueError(f"{len(history.snapshots)} snapshots but {len(history.snapshot_epochs)} "
                         "snapshot epochs")
    return list(history.snapshots), list(history.snapshot_epochs)


def sample_indices(count: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most `max_points` of `count` points, the same on every call."""
    if max_points is None or count <= max_points:
        return np.arange(count)
    chosen = torch.randperm(count, generator=torch.Generator().manual_seed(seed))[:max_points]
    return np.sort(chosen.numpy())


def replay_slider(history, labels, *, directions=None, class_names: Sequence[str] | None = None,
                  normalize: bool = False, max_points: int | None = 600,
                  title: str = "probe features"):
    """The recorded probe features of a run as a plotly figure with one frame per recorded
    epoch and a slider over them (plays with no kernel; the last epoch is shown first).

    history: `History` with snapshots (N, d) at `snapshot_epochs`; labels (N,) the probe's
    classes; directions (K, d) the class directions w_k, drawn as rays of fixed length on every
    frame (the final or fixed ones: the recording holds no head weights per epoch). d = 2 gives
    a 2-D scatter, d = 3 a rotatable 3-D one, d > 3 one PCA map for all frames (see
    `display_basis`). The axes are fixed across frames, so growth and motion show as such.
    """
    import plotly.graph_objects as go

    from labkit.viz.playable import Frame, add_slider

    snapshots, epochs = _recorded(history)
    labels = _numpy(labels).astype(int)
    if labels.shape != (snapshots[0].shape[0],):
        raise ValueError(f"{snapshots[0].shape[0]} probe features but labels of shape {labels.shape}")
    keep = sample_indices(len(labels), max_points)
    basis = display_basis(snapshots[-1])
    frames_points = [shown_points(s, basis, normalize)[keep] for s in snapshots]
    dim = frames_points[0].shape[1]
    rays = None
    if directions is not None:
        if _numpy(directions).ndim != 2 or _numpy(directions).shape[1] != snapshots[0].shape[1]:
            raise ValueError(f"directions must be (K, {snapshots[0].shape[1]}) like the features, "
                             f"got {tuple(_numpy(directions).shape)}")
        reach = 1.0 if normalize else float(np.percentile(
            np.linalg.norm(frames_points[-1], axis=1), 98))
        rays = scaled_rays(directions, reach, basis)
    suffix = " (PCA)" if basis is not None else ""
    still = still_traces(len(rays) if rays is not None else 0, dim)
    frames = [Frame(str(epoch), still + moving_traces(points, labels[keep]),
                    {"title": {"text": f"{title}{suffix}, epoch {epoch}"}})
              for epoch, points in zip(epochs, frames_points, strict=True)]
    ranges = fixed_ranges(frames_points + ([rays] if rays is not None else []))
    fig = go.Figure(data=frame_traces(frames_points[-1], labels[keep], rays=rays,
                                      class_names=class_names))
    fig.update_layout(width=560, height=560 if dim == 2 else 600,
                      margin=dict(l=10, r=10, t=50, b=10), modebar=dict(orientation="v"),
                      legend=dict(itemsizing="constant"))
    if dim == 3:
        span = max(max(abs(lo), abs(hi)) for lo, hi in ranges)
        fig.update_layout(scene=dict(aspectmode="cube", **{f"{axis}axis": dict(range=[-span, span])
                                                           for axis in "xyz"}))
    else:
        fig.update_xaxes(range=ranges[0], autorange=False)
        fig.update_yaxes(range=ranges[1], autorange=False, scaleanchor="x", scaleratio=1)
    return add_slider(fig, frames, prefix="epoch", active=len(frames) - 1)
