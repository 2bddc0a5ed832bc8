"""Figures for Feature Distance Loss ensembles: accuracy vs k, CAM grids, the lambda trade-off.

Functions take plain tensors / records computed by `labkit.methods.fdl` and
`labkit.methods.fdl_experiments` and return matplotlib Figures; nothing here trains.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure

from labkit.methods import fdl

COLORS = {"classical": "tab:gray", "fdl": "tab:red"}
LABELS = {"classical": "classical ensemble", "fdl": "FDL ensemble"}
TITLES = {"mean_member": "mean single member", "soft_vote": "soft vote", "hard_vote": "hard vote",
          "fusion": "feature-fusion head"}


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def overlay(image: torch.Tensor, heat: torch.Tensor, alpha: float = 0.4) -> np.ndarray:
    """Jet heat map over a (C, H, W) image in [0, 1], both at the same size -> (H, W, 3) in [0, 1].

    (The code's display: jet colour map, alpha 0.4 over the image.)
    """
    img, heat_np = _np(image), _np(heat)
    if img.ndim != 3 or heat_np.shape != img.shape[1:]:
        raise ValueError(f"image must be (C, H, W) and heat (H, W) of the same size; got "
                         f"{img.shape} and {heat_np.shape}")
    rgb = np.repeat(img, 3, axis=0) if img.shape[0] == 1 else img[:3]
    colored = plt.get_cmap("jet")(np.clip(heat_np, 0, 1))[..., :3]
    return np.clip((1 - alpha) * rgb.transpose(1, 2, 0) + alpha * colored, 0, 1)


def plot_accuracy_vs_k(rows: Sequence[Mapping[str, Any]],
                       combiners: Sequence[str] = ("mean_member", "soft_vote", "hard_vote", "fusion"),
                       title: str | None = None) -> Figure:
    """One panel per combiner: test accuracy vs k (log axis), mean +- std over seeds, both methods."""
    from labkit.methods.fdl_experiments import summarize

    if not rows:
        raise ValueError("no sweep rows to plot")
    fig, axes = plt.subplots(1, len(combiners), figsize=(3.2 * len(combiners), 3.1), sharey=True,
                             squeeze=False)
    seeds = sorted({r["seed"] for r in rows})
    for ax, combiner in zip(axes[0], combiners, strict=True):
        stats = summarize(rows, combiner)
        for method, per_k in stats.items():
            ks = sorted(per_k)
            mean = [per_k[k][0] for k in ks]
            std = [per_k[k][1] for k in ks]
            ax.errorbar(ks, mean, yerr=std, marker="o", ms=4, capsize=3, color=COLORS.get(method),
                        label=LABELS.get(method, method))
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["k"] for r in rows}))
        ax.set_xticklabels([str(k) for k in sorted({r["k"] for r in rows})])
        ax.set_title(TITLES.get(combiner, combiner), fontsize=10)
        ax.set_xlabel("training images per class (k)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle(title or f"accuracy vs k (mean ± std over {len(seeds)} seed(s))", fontsize=11)
    fig.tight_layout()
    return fig


def plot_overlap_vs_k(rows: Sequence[Mapping[str, Any]],
                      metrics: Sequence[str] = ("iou_map", "iou_cam")) -> Figure:
    """Mean pairwise IoU of the members' above-mean regions vs k, classical vs FDL."""
    from labkit.methods.fdl_experiments import summarize

    names = {"iou_map": "IoU of FDL maps (channel mean)", "iou_cam": "IoU of Grad-CAMs"}
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.0), squeeze=False)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method, per_k in summarize(rows, metric).items():
            ks = sorted(per_k)
            ax.errorbar(ks, [per_k[k][0] for k in ks], yerr=[per_k[k][1] for k in ks], marker="o",
                        ms=4, capsize=3, color=COLORS.get(method), label=LABELS.get(method, method))
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["k"] for r in rows}))
        ax.set_xticklabels([str(k) for k in sorted({r["k"] for r in rows})])
        ax.set_ylim(0, 1)
        ax.set_title(names.get(metric, metric), fontsize=10)
        ax.set_xlabel("k")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean pairwise IoU (1 = same region)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cam_grid(image: torch.Tensor, cams: Mapping[str, torch.Tensor],
                  preds: Mapping[str, torch.Tensor] | None = None, label: int | None = None,
                  class_names: Sequence[str] | None = None) -> Figure:
    """Rows = ensembles (e.g. classical / FDL), columns = members: Grad-CAM overlays of one image.

    image: (C, H, W); cams[name]: (M, H, W) in [0, 1]; preds[name]: (M,) predicted classes.
    The last column counts, per pixel, the members whose above-mean region covers it (black 0,
    white all M) and gives the row's mean pairwise IoU.
    """
    if not cams:
        raise ValueError("cams is empty: pass {row name: (M, H, W) Grad-CAMs}")
    members = max(c.shape[0] for c in cams.values())
    fig, axes = plt.subplots(len(cams), members + 1, figsize=(1.6 * (members + 1), 1.75 * len(cams)),
                             squeeze=False)
    names = class_names or [str(i) for i in range(1000)]
    for row, (name, cam) in enumerate(cams.items()):
        for m in range(members):
            ax = axes[row][m]
            ax.set_xticks([])
            ax.set_yticks([])
            if m >= cam.shape[0]:
                ax.axis("off")
                continue
            ax.imshow(overlay(image, cam[m]))
            title = f"member {m + 1}"
            if preds is not None:
                title += f": {names[int(preds[name][m])]}"
            ax.set_title(title, fontsize=8)
        if cam.shape[0] >= 2:
            iou = float(fdl.attention_iou(torch.as_tensor(cam)[:, None]).item())
        else:
            iou = float("nan")
        # how many members count each pixel as above-mean: 1 everywhere = perfectly split attention
        count = _np(fdl.above_mean_mask(torch.as_tensor(cam)).sum(0))
        axes[row][-1].imshow(count, cmap="magma", vmin=0, vmax=cam.shape[0])
        axes[row][-1].set_title(f"members/pixel, IoU {iou:.2f}", fontsize=8)
        axes[row][-1].set_xticks([])
        axes[row][-1].set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=9)
    if label is not None:
        fig.suptitle(f"true class {names[int(label)]}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_descriptor_demo(maps: Sequence[torch.Tensor], names: Sequence[str] | None = None,
                         title: str | None = None) -> Figure:
    """The mechanism on one sample: each member's channel-mean map and its above-mean descriptor.

    maps: M feature maps (C, H, W) of one image (or (1, C, H, W)).
    """
    maps = [m if m.ndim == 4 else m[None] for m in maps]
    descs = [fdl.fdl_descriptor(m)[0] for m in maps]
    raws = [m.mean(dim=1)[0] for m in maps]
    fig, axes = plt.subplots(2, len(maps), figsize=(1.8 * len(maps), 3.6), squeeze=False)
    for m, (raw, desc) in enumerate(zip(raws, descs, strict=True)):
        axes[0][m].imshow(_np(raw), cmap="viridis")
        axes[1][m].imshow(_np(desc), cmap="viridis")
        axes[0][m].set_title(names[m] if names else f"member {m + 1}", fontsize=9)
        for ax in axes[:, m]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("channel mean", fontsize=9)
    axes[1][0].set_ylabel("above-mean d_m", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def plot_lambda_tradeoff(records: Sequence[Mapping[str, Any]], selected: int | None = None,
                         metric: str = "soft_vote") -> Figure:
    """Overlap (IoU of maps and of CAMs) and accuracy against the FDL weight scale.

    records: from `fdl_experiments.cam_records` (each with lambda_euc and metrics); the x axis is
    lambda_euc (lambda_cos scales with it). `selected` marks one record.
    """
    if not records:
        raise ValueError("no lambda records to plot")
    xs = np.array([float(r["lambda_euc"]) for r in records])
    # a symlog axis keeps lambda = 0 (the classical ensemble) on the plot
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(7.2, 2.9))
    for key, style in (("iou_map", "o-"), ("iou_cam", "s--")):
        ax1.plot(xs, [r["metrics"][key] for r in records], style, label=key)
    ax1.set_ylabel("mean pairwise IoU")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=8)
    for key, style in (("mean_member", "o-"), (metric, "s-"), ("fusion", "^--")):
        ax2.plot(xs, [r["metrics"][key] for r in records], style, label=TITLES.get(key, key))
    ax2.set_ylabel("test accuracy")
    ax2.legend(fontsize=8)
    ratios = {round(float(r["lambda_cos"]) / float(r["lambda_euc"]), 6) for r in records
              if float(r["lambda_euc"]) > 0}
    xlabel = "lambda_euc" + (f" (lambda_cos = {ratios.pop():g} x lambda_euc)" if len(ratios) == 1 else "")
    positive = xs[xs > 0]
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
        ax.set_xlim(0, float(xs.max()) * 1.6 if xs.max() > 0 else 1.0)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if selected is not None:
            ax.axvline(xs[selected], color="tab:red", alpha=0.4, lw=3)
    fig.tight_layout()
    return fig
