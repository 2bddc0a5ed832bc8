"""Figures for Generalized Sum Pooling: transport weights over images, prototype maps, recalls.

All functions take plain tensors/arrays (computed by ``labkit.methods.gsp``) and return
matplotlib objects, except ``weight_map_slider``, a plotly figure that plays without a kernel;
nothing here trains or solves. The method is described in docs/methods/gsp.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from labkit.methods import gsp
from labkit.viz.images import png_data_uri, to_display, upsample


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _show_image(ax, image) -> None:
    ax.imshow(to_display(torch.as_tensor(_np(image))), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def overlay_weights(ax, image, weights, vmax: float | None = None, alpha: float = 0.55,
                    title: str | None = None):
    """Draw image (C, H, W) with a (h, w) weight map upsampled on top; returns the heat artist."""
    img = _np(image)
    _show_image(ax, img)
    heat = upsample(torch.as_tensor(_np(weights)), img.shape[1:])
    vmax = float(heat.max()) if vmax is None else vmax
    art = ax.imshow(heat, cmap="inferno", alpha=alpha, vmin=0.0, vmax=max(vmax, 1e-12))
    if title:
        ax.set_title(title, fontsize=9)
    return art


def plot_weight_grid(image, weights: Mapping[tuple[float, float], torch.Tensor],
                     figsize_per: float = 1.9):
    """Feature weights w_i over one image for a grid of (μ, γ) settings.

    weights: {(mu, gamma): (h, w) map}. Rows are γ, columns μ; each panel's colour scale runs
    from 0 to 1/μ, the largest weight a feature can get.
    """
    if not weights:
        raise ValueError("weights is empty: pass {(mu, gamma): (h, w) weight map}")
    mus = sorted({k[0] for k in weights}, reverse=True)
    gammas = sorted({k[1] for k in weights})
    fig, axes = plt.subplots(len(gammas), len(mus) + 1, squeeze=False,
                             figsize=(figsize_per * (len(mus) + 1), figsize_per * len(gammas)))
    for r, g in enumerate(gammas):
        _show_image(axes[r, 0], image)
        axes[r, 0].set_ylabel(f"γ = {g:g}", fontsize=9)
        if r == 0:
            axes[r, 0].set_title("input", fontsize=9)
        for c, m in enumerate(mus):
            ax = axes[r, c + 1]
            if (m, g) in weights:
                overlay_weights(ax, image, weights[(m, g)], vmax=1.0 / m,
                                title=f"μ = {m:g}" if r == 0 else None)
            else:
                ax.axis("off")
    fig.suptitle("GSP feature weights w_i (0 = dropped, 1/μ = fully kept)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_prototype_maps(image, prototype_maps: torch.Tensor, top: int = 8,
                        figsize_per: float = 1.7):
    """The ``top`` prototypes that receive most mass, each with its map n π_k· over the image."""
    maps = torch.as_tensor(_np(prototype_maps))
    if maps.dim() != 3:
        raise ValueError(f"prototype_maps must be (K, h, w), got shape {tuple(maps.shape)}")
    mass = maps.flatten(1).sum(1)
    order = torch.argsort(mass, descending=True)[: min(top, maps.shape[0])]
    share = mass / mass.sum()
    fig, axes = plt.subplots(1, len(order) + 1, squeeze=False,
                             figsize=(figsize_per * (len(order) + 1), figsize_per + 0.3))
    _show_image(axes[0, 0], image)
    axes[0, 0].set_title("input", fontsize=9)
    vmax = float(maps[order].max())
    for j, k in enumerate(order.tolist()):
        overlay_weights(axes[0, j + 1], image, maps[k], vmax=vmax,
                        title=f"ω{k}: {100 * share[k]:.0f}%")
    fig.suptitle("per-prototype transport maps n·π_k (share of transported mass)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_weight_overlays(images: torch.Tensor, weights: torch.Tensor, mu: float,
                         titles: Sequence[str] | None = None, ncols: int = 8,
                         figsize_per: float = 1.5):
    """GSP weights over a batch of images (N, C, H, W) with maps (N, h, w), scale 0 .. 1/μ."""
    if len(images) != len(weights):
        raise ValueError(f"got {len(images)} images but {len(weights)} weight maps")
    n = len(images)
    ncols = min(ncols, n)
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(figsize_per * ncols, figsize_per * nrows + 0.4))
    for j, ax in enumerate(axes.flat):
        if j >= n:
            ax.axis("off")
            continue
        overlay_weights(ax, images[j], weights[j], vmax=1.0 / mu,
                        title=None if titles is None else titles[j])
    fig.tight_layout()
    return fig


def plot_toy_transport(features: torch.Tensor, prototypes: torch.Tensor,
                       weights: Mapping[float, torch.Tensor], figsize_per: float = 2.6):
    """The mechanism in 2-D: local features (dots, area ∝ weight) and prototypes (stars).

    features (n, 2), prototypes (K, 2), weights {mu: (n,)}.
    """
    f, w = _np(features), _np(prototypes)
    if f.ndim != 2 or f.shape[1] != 2 or w.ndim != 2 or w.shape[1] != 2:
        raise ValueError("features and prototypes must be 2-D point sets (n, 2) and (K, 2)")
    mus = sorted(weights, reverse=True)
    fig, axes = plt.subplots(1, len(mus), squeeze=False,
                             figsize=(figsize_per * len(mus), figsize_per))
    for ax, m in zip(axes[0], mus, strict=True):
        wt = _np(weights[m])
        ax.scatter(f[:, 0], f[:, 1], s=8 + 60 * wt, c=wt, cmap="viridis", vmin=0, vmax=1 / m,
                   edgecolors="k", linewidths=0.3)
        ax.scatter(w[:, 0], w[:, 1], marker="*", s=160, c="red", edgecolors="k")
        ax.set_title(f"μ = {m:g}", fontsize=9)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("features (size ∝ weight) and prototypes (★)", fontsize=10)
    fig.tight_layout()
    return fig


def weight_map_slider(image, weights: Mapping[tuple[float, float], torch.Tensor],
                      active: tuple[float, float] | None = None, opacity: float = 0.6) -> Any:
    """Kernel-free slider over GSP weight maps w_i of one image, one step per (μ, γ).

    image (C, H, W) in [0, 1]; weights {(mu, gamma): (h, w) map w_i}, all of one shape. The
    steps run through γ in increasing order and, for each γ, μ from large to small, so that
    neighbouring steps show what μ does at one temperature. Each map is drawn at its own
    resolution over the image, colour scale 0 (dropped) .. 1/μ (fully kept). active: the
    (μ, γ) the figure opens at (default: the first step). Returns a plotly figure.
    """
    import plotly.graph_objects as go

    from labkit.viz.playable import Frame, add_slider, compact

    if not weights:
        raise ValueError("weights is empty: pass {(mu, gamma): (h, w) weight map}")
    maps = {key: _np(value) for key, value in weights.items()}
    shapes = {m.shape for m in maps.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"weight maps must all be (h, w) of one shape, got {sorted(shapes)}")
    for mu, _ in maps:
        if not 0.0 < mu <= 1.0:
            raise ValueError(f"mu must lie in (0, 1], got {mu}")
    img = _np(image)
    if img.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got shape {img.shape}")
    settings = sorted(maps, key=lambda key: (key[1], -key[0]))
    if active is not None and active not in maps:
        raise ValueError(f"active {active} is not one of the (mu, gamma) settings {settings}")
    (h, w), (height, width) = next(iter(shapes)), img.shape[1:]
    # pixel centres of the image are 0 .. W-1, so a map cell of dx pixels is centred at
    # (dx - 1) / 2 + j dx and the map covers the image exactly
    dx, dy = width / w, height / h
    picture = go.Image(source=png_data_uri(torch.as_tensor(img)), x0=0, dx=1, y0=0, dy=1, hoverinfo="skip")
    frames = []
    for mu, gamma in settings:
        heat = compact(maps[(mu, gamma)])
        kept = 100.0 * float((heat > 0.5).mean())
        trace = go.Heatmap(z=heat, x0=(dx - 1) / 2, dx=dx, y0=(dy - 1) / 2, dy=dy, zmin=0.0,
                           zmax=1.0 / mu, colorscale="Inferno", opacity=opacity,
                           colorbar=dict(title=dict(text="w_i"), thickness=12),
                           hovertemplate="w = %{z:.2f}<extra></extra>")
        title = (f"GSP weights w_i at μ = {mu:g}, γ = {gamma:g}<br>"
                 f"<sub>{kept:.0f}% of cells kept (w > 0.5); scale 0 (dropped) .. 1/μ</sub>")
        frames.append(Frame(f"μ={mu:g} γ={gamma:g}", [picture, trace],
                            {"title": {"text": title}}))
    start = 0 if active is None else settings.index(active)
    fig = go.Figure(data=list(frames[start].traces))
    fig.update_layout(width=440, height=520, margin=dict(l=10, r=10, t=70, b=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False))
    return add_slider(fig, frames, prefix="setting", active=start)


def transport_figure(costs: torch.Tensor, image: torch.Tensor, shape: tuple[int, int],
                     mu: float, gamma: float, top: int = 4) -> Figure:
    """One (μ, γ) of the transport explorer: the input (C, H, W), its weights w (h, w) and the
    `top` prototypes that receive most mass, from the image's costs (K, n = h·w)."""
    weights, maps = gsp.weight_map(costs, mu, gamma, shape)
    mass = maps.flatten(1).sum(1)
    order = torch.argsort(mass, descending=True)[: top].tolist()
    fig, axes = plt.subplots(1, 2 + len(order), figsize=(1.9 * (2 + len(order)), 2.3))
    overlay_weights(axes[0], image, torch.zeros(shape), alpha=0.0, title="input")
    overlay_weights(axes[1], image, weights, vmax=1.0 / mu,
                    title=f"weights (kept {100 * float((weights > 0.5).float().mean()):.0f}%)")
    vmax = float(maps[order].max()) if order else 1.0
    for ax, k in zip(axes[2:], order, strict=True):
        overlay_weights(ax, image, maps[k], vmax=vmax,
                        title=f"ω{k} {100 * float(mass[k] / mass.sum()):.0f}%")
    fig.suptitle(f"μ = {mu:.2f}, γ = {gamma:.2g}", fontsize=10)
    fig.tight_layout()
    return fig
