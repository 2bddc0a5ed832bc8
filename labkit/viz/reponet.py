"""Figures for notebook 01 (Regular Polytope Networks): the polytopes, feature panels with the
fixed vertices, snapshots over epochs (static strips and kernel-free sliders), neural-collapse
curves, and the static counterparts of the widgets (`replay_figure`, `train_panel_figure`).
Runs are `labkit.methods.reponet_experiments.Result`s."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch

from labkit.methods import reponet as rp
from labkit.viz.features import (
    class_color,
    class_rgb,
    display_basis,
    fixed_ranges,
    frame_traces,
    moving_traces,
    sample_indices,
    scaled_rays,
    scatter_features,
    shown_points,
    still_traces,
)

if TYPE_CHECKING:
    from labkit.methods.reponet_experiments import Result


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
        traces.append(go.Scatter3d(x=[0, p[0]], y=[0, p[1]], z=[0, p[2]], mode="lines",
                                   line=dict(color=class_rgb(k), width=5), showlegend=False, hoverinfo="skip"))
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
    basis = display_basis(features)
    if basis is None:
        return features, directions
    shown = (directions.double() @ basis).float() if directions is not None else None
    return (features.double() @ basis).float(), shown


def feature_panels(results: Sequence[Result], ncols: int = 3, size: float = 3.4,
                   normalize: bool = False, max_points: int = 600):
    """Side-by-side test-feature scatters of runs, class directions drawn as rays (PCA if d > 3)."""
    n = len(results)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    dims = {min(r.test_features.shape[1], 3) if r.test_features.shape[1] <= 3 else 2 for r in results}
    fig = plt.figure(figsize=(size * ncols, size * nrows))
    for i, r in enumerate(results):
        feats, labels = r.test_features, r.test_labels
        keep = torch.arange(len(labels))[: max_points] if len(labels) <= max_points else \
            torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))[:max_points]
        feats, labels = feats[keep], labels[keep]
        feats, directions = _to_display(feats, r.directions)
        ax = fig.add_subplot(nrows, ncols, i + 1, projection="3d" if 3 in dims and feats.shape[1] == 3 else None)
        title = f"{r.settings.label}: {100 * r.metrics['accuracy']:.1f}%"
        if r.test_features.shape[1] > 3:
            title += " (PCA)"
        scatter_features(feats, labels, directions=directions, ax=ax, title=title,
                         normalize=normalize and r.test_features.shape[1] <= 3, legend=False)
    fig.tight_layout()
    return fig


def replay_figure(result: Result, index: int, ax=None):
    """The probe features of `result` at snapshot `index` with its class directions (PCA to
    2-D if d > 3): the static counterpart of `labkit.widgets.reponet.replay`. Returns the axes."""
    history = result.history
    feats, directions = _to_display(history.snapshots[index], result.directions)
    if ax is None:
        fig = plt.figure(figsize=(4.2, 4.2))
        ax = fig.add_subplot(projection="3d" if feats.shape[1] == 3 else None)
    return scatter_features(feats, result.probe_labels, directions=directions, ax=ax, legend=False,
                            title=f"{result.settings.label}, epoch {history.snapshot_epochs[index]}")


def snapshot_strip(result: Result, indices: Sequence[int] | None = None, size: float = 3.0):
    """The recorded probe features of one run at a few epochs (static fallback of the slider)."""
    history = result.history
    if not history.snapshots:
        raise ValueError("this run recorded no snapshots")
    if indices is None:
        n = len(history.snapshots)
        indices = sorted({0, n // 3, (2 * n) // 3, n - 1})
    dim = history.snapshots[0].shape[1]
    fig = plt.figure(figsize=(size * len(indices), size))
    for i, index in enumerate(indices):
        ax = fig.add_subplot(1, len(indices), i + 1, projection="3d" if dim == 3 else None)
        replay_figure(result, index, ax=ax)
    fig.tight_layout()
    return fig


COLLAPSE_KEYS = (("nc1", "NC1: tr(Σ_W Σ_B⁺)/K"), ("nc2", "NC2: distance to simplex ETF"),
                 ("nc3", "NC3: classifier vs means"), ("nc4", "NC4: mismatch with nearest mean"))


def collapse_curves(results: Sequence[Result], size: float = 3.2):
    """Neural-collapse measures over epochs (on the training probe), one line per run."""
    fig, axes = plt.subplots(1, len(COLLAPSE_KEYS), figsize=(size * len(COLLAPSE_KEYS), size * 0.85))
    for r in results:
        epochs = [row["epoch"] for row in r.history.epochs if "nc1" in row]
        style = "-" if r.settings.fixed else "--"
        for ax, (key, _) in zip(axes, COLLAPSE_KEYS, strict=True):
            ax.plot(epochs, r.history.metric(key), style, marker="o", ms=3, label=r.settings.label)
    for ax, (key, title) in zip(axes, COLLAPSE_KEYS, strict=True):
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch")
        if key == "nc1":
            ax.set_yscale("log")
    axes[0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def alignment_bars(results: Sequence[Result], size: float = 3.2):
    """Per run: test accuracy, and each class mean's angle to its class direction (degrees)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(size * 3, size))
    names = [r.settings.label for r in results]
    accuracies = [100 * r.metrics["accuracy"] for r in results]
    left.barh(names, accuracies, color=["tab:red" if r.settings.fixed else "tab:grey" for r in results])
    left.set_xlim(max(0, min(accuracies) - 5), 100)
    left.set_xlabel("test accuracy (%)")
    for i, r in enumerate(results):
        angles = r.angle_to_direction.numpy()
        right.scatter(angles, np.full(len(angles), i), color=[class_color(k) for k in range(len(angles))], s=14)
    right.axvline(10, color="k", lw=0.8, ls=":")
    right.set_yticks(range(len(results)), names)
    right.set_xlabel("angle of class mean to its direction (°)")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- kernel-free replays

def _replay_panel(result: Result, normalize: bool, polytope: bool,
                  max_points: int | None) -> dict[str, Any]:
    """One run's part of a replay: the shown points per frame, labels, rays and still traces."""
    import plotly.graph_objects as go

    snapshots = result.history.snapshots
    labels = result.probe_labels.numpy().astype(int)
    keep = sample_indices(len(labels), max_points)
    basis = display_basis(snapshots[-1])
    if polytope and (basis is not None or snapshots[-1].shape[1] != 3 or not result.settings.fixed):
        raise ValueError(f"{result.settings.label}: the polytope view needs a fixed head with "
                         "3-D features")
    normalize = normalize or polytope
    points = [shown_points(s, basis, normalize)[keep] for s in snapshots]
    reach = 1.0 if normalize else float(np.percentile(np.linalg.norm(points[-1], axis=1), 98))
    rays = scaled_rays(result.directions, reach, basis)
    extras = []
    if polytope:
        # the polytope's edges and vertices (spare vertices too) on the unit sphere
        v = torch.nn.functional.normalize(result.vertices.double(), dim=1).numpy()
        edges: dict[str, list[float | None]] = {"x": [], "y": [], "z": []}
        for a, b in _edges(v):
            for axis, column in zip("xyz", v[[a, b]].T, strict=True):
                edges[axis] += [round(float(column[0]), 4), round(float(column[1]), 4), None]
        extras = [go.Scatter3d(mode="lines", line=dict(color="grey", width=2), showlegend=False,
                               hoverinfo="skip", **edges),
                  go.Scatter3d(mode="markers", marker=dict(size=4, color="crimson"),
                               showlegend=False, hovertext=[f"w{k}" for k in range(len(v))],
                               hoverinfo="text", **dict(zip("xyz", v.round(4).T, strict=True)))]
    return {"points": points, "labels": labels[keep], "rays": rays, "extras": extras,
            "dim": points[0].shape[1], "pca": basis is not None}


def replay_slider(results: Sequence[Result], *, normalize: bool = False,
                  polytope: bool = False, max_points: int | None = 300,
                  title: str = "probe features"):
    """Several runs' recorded probe features side by side (one subplot per run) with one epoch
    slider over them: the kernel-free counterpart of `labkit.widgets.reponet.replay`.

    Every run must have recorded the same epochs. Each run's class directions (the fixed
    vertices, or a learned head's final rows) are drawn as rays on every frame; d > 3 is shown
    by PCA to 2-D through one map for all frames; each subplot keeps its axes fixed across
    frames. `normalize` shows f / ||f||; `polytope` (3-D fixed heads) also draws each polytope's
    edges and vertices and implies `normalize`, so the features are seen gathering on w_k.
    """
    from plotly.subplots import make_subplots

    from labkit.viz.playable import Frame, add_slider

    if not results:
        raise ValueError("no runs to replay")
    epochs = list(results[0].history.snapshot_epochs)
    for r in results:
        if not r.history.snapshots:
            raise ValueError(f"{r.settings.label} recorded no snapshots")
        if list(r.history.snapshot_epochs) != epochs:
            raise ValueError(f"{r.settings.label} recorded epochs {r.history.snapshot_epochs}, "
                             f"{results[0].settings.label} {epochs}: replay them one at a time")
    panels = [_replay_panel(r, normalize, polytope, max_points) for r in results]
    legend_panel = max(range(len(panels)), key=lambda i: len(np.unique(panels[i]["labels"])))
    fig = make_subplots(rows=1, cols=len(panels), horizontal_spacing=0.03,
                        specs=[[{"type": "scene" if p["dim"] == 3 else "xy"} for p in panels]],
                        subplot_titles=[r.settings.label + (" (PCA)" if p["pca"] else "")
                                        for r, p in zip(results, panels, strict=True)])
    for col, panel in enumerate(panels, start=1):
        traces = panel["extras"] + frame_traces(panel["points"][-1], panel["labels"],
                                                rays=panel["rays"], legend=col - 1 == legend_panel)
        for trace in traces:
            fig.add_trace(trace, row=1, col=col)
        ranges = fixed_ranges(panel["points"] + [panel["rays"]])
        if panel["dim"] == 3:
            span = max(max(abs(lo), abs(hi)) for lo, hi in ranges)
            fig.update_scenes(aspectmode="cube", row=1, col=col,
                              **{f"{axis}axis": dict(range=[-span, span], title="") for axis in "xyz"})
        else:
            anchor = "x" + fig.get_subplot(1, col).xaxis.plotly_name[len("xaxis"):]
            fig.update_xaxes(range=ranges[0], autorange=False, row=1, col=col)
            fig.update_yaxes(range=ranges[1], autorange=False, scaleanchor=anchor, scaleratio=1,
                             row=1, col=col)
    heading = f"{title} on the polytopes (f/‖f‖)" if polytope else title
    frames = []
    for index, epoch in enumerate(epochs):
        traces = []
        for panel in panels:
            traces += still_traces(len(panel["extras"]) + len(panel["rays"]), panel["dim"])
            traces += moving_traces(panel["points"][index], panel["labels"])
        frames.append(Frame(str(epoch), traces, {"title": {"text": f"{heading}, epoch {epoch}"}}))
    fig.update_layout(width=330 * len(panels) + 90, height=480,
                      margin=dict(l=10, r=10, t=70, b=10), modebar=dict(orientation="v"),
                      legend=dict(itemsizing="constant", font=dict(size=10), tracegroupgap=0))
    return add_slider(fig, frames, prefix="epoch", active=len(frames) - 1)


def polytope_replay_slider(results: Sequence[Result], **options: Any):
    """`replay_slider(results, polytope=True)`: 3-D fixed-head runs, the features' directions
    gathering on their vertices over the recorded epochs, edges and vertices drawn."""
    return replay_slider(results, polytope=True, **options)


# ----------------------------------------------------------------------------- the train panel

def train_panel_figure(kind: str, num_classes: int, feat_dim: int | None = None,
                       size: float = 3.6):
    """The train panel's first state (`labkit.widgets.reponet.TrainPanel`), before any
    training: an empty feature plot with the chosen head's class directions w_k drawn as rays
    (fixed heads in d <= 3; a learned head's rows move as it trains, and d > 3 is shown by PCA,
    so neither gets rays). Returns the figure."""
    fixed = kind in rp.KINDS
    w = rp.polytope_vertices(kind, num_classes, feat_dim, dtype=torch.float64) if fixed else None
    d = w.shape[1] if w is not None else (feat_dim or 2)
    drawn = w is not None and d <= 3
    fig = plt.figure(figsize=(size, size))
    ax = fig.add_subplot(projection="3d" if drawn and d == 3 else None)
    if drawn:
        v = w.numpy()
        if d == 3 and kind != "hadamard":
            for a, b in _edges(v):
                ax.plot(*v[[a, b]].T, color="grey", lw=0.8)
        for k, p in enumerate(v[:num_classes]):
            ax.plot(*np.stack([np.zeros(d), p]).T, color=class_color(k), lw=2)
        ax.scatter(*v.T, color="crimson", s=18)
        if d == 3:
            ax.set_box_aspect((1, 1, 1))
        else:
            ax.set_aspect("equal")
    else:
        reason = "a learned head: no fixed rays" if not fixed else f"d = {d}: shown by PCA, no rays"
        ax.text(0.5, 0.5, reason, ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    ax.set_title(f"{kind}, K={num_classes}, d={d}\nthe probe features appear here after epoch 1",
                 fontsize=9)
    fig.tight_layout()
    return fig
