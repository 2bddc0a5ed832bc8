"""Figures for Feature Distance Loss ensembles: accuracy and overlap vs k, CAM grids, the λ
trade-off.

Functions take the runner's typed objects (`labkit.methods.fdl_experiments`: a sweep's
`Summary`, `CamRecord`s) or plain tensors and return matplotlib Figures; nothing here trains.
`cam_figure` and `lambda_figure` are the static counterparts of the widgets `CamExplorer` and
`LambdaExplorer`. The `*_slider` functions return plotly figures that carry every recorded state
as a frame, so the member and λ views play without a kernel (see `labkit.viz.playable`). The
method is described in docs/methods/fdl.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure, SubFigure

from labkit.core.experiment import Summary
from labkit.methods import fdl
from labkit.viz.images import overlay, png_data_uri
from labkit.viz.playable import Frame, add_slider, compact

if TYPE_CHECKING:
    from labkit.methods.fdl_experiments import CamRecord

COLORS = {"classical": "tab:gray", "fdl": "tab:red"}
LABELS = {"classical": "classical ensemble", "fdl": "FDL ensemble"}
TITLES = {"mean_member": "mean single member", "soft_vote": "soft vote", "hard_vote": "hard vote",
          "fusion": "feature-fusion head", "iou_map": "IoU of FDL maps (channel mean)",
          "iou_cam": "IoU of Grad-CAMs"}
COMBINERS = ("mean_member", "soft_vote", "hard_vote", "fusion")

# the authors' CAM display: jet over the image at alpha 0.4
CAM_OPACITY = 0.4


def _np(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _vs_k(summary: Summary, metrics: Sequence[str], width: float, height: float) -> Figure:
    """One panel per metric: its mean ± std over seeds against k (log axis), a line per method.
    The summary's groups are (method, k), as `fdl_experiments.summary` makes them."""
    if tuple(summary.by) != ("method", "k") or not summary.stats:
        raise ValueError(f"no sweep results to plot (a summary by method and k), got groups "
                         f"{summary.by} with {len(summary.stats)} entries")
    ks = sorted({k for _, k in summary.stats})
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), height),
                             squeeze=False, sharey=True)
    for ax, metric in zip(axes[0], metrics, strict=True):
        for method in dict.fromkeys(m for m, _ in summary.stats):
            per_k = [k for k in ks if metric in summary.stats.get((method, k), {})]
            spreads = [summary.stats[(method, k)][metric] for k in per_k]
            ax.errorbar(per_k, [s.mean for s in spreads], yerr=[s.std for s in spreads],
                        marker="o", ms=4, capsize=3, color=COLORS.get(method),
                        label=LABELS.get(method, method))
        ax.set_xscale("log")
        ax.minorticks_off()  # only the swept k are labelled
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_title(TITLES.get(metric, metric), fontsize=10)
        ax.set_xlabel("training images per class (k)")
        ax.grid(alpha=0.3)
    return fig


def plot_accuracy_vs_k(summary: Summary, combiners: Sequence[str] = COMBINERS,
                       title: str | None = None) -> Figure:
    """One panel per combiner: test accuracy vs k (log axis), mean ± std over seeds, both
    methods; `summary` is `fdl_experiments.summary` of a sweep."""
    fig = _vs_k(summary, combiners, 3.2, 3.1)
    axes = fig.axes
    axes[0].set_ylabel("test accuracy")
    axes[0].legend(fontsize=8, loc="lower right")
    seeds = max(s.n for stats in summary.stats.values() for s in stats.values())
    fig.suptitle(title or f"accuracy vs k (mean ± std over {seeds} seed(s))", fontsize=11)
    fig.tight_layout()
    return fig


def plot_overlap_vs_k(summary: Summary, metrics: Sequence[str] = ("iou_map", "iou_cam")
                      ) -> Figure:
    """Mean pairwise IoU of the members' above-mean regions vs k, classical vs FDL."""
    fig = _vs_k(summary, metrics, 3.6, 3.0)
    for ax in fig.axes:
        ax.set_ylim(0, 1)
    fig.axes[0].set_ylabel("mean pairwise IoU (1 = same region)")
    fig.axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def check_records(images: torch.Tensor, labels: torch.Tensor,
                   records: Sequence[CamRecord]) -> int:
    """The members per record; raises unless every record holds (M, B, H, W) CAMs of the images."""
    if not records:
        raise ValueError("records is empty: pass fdl_experiments.cam_records(...)")
    if images.ndim != 4 or labels.shape != (images.shape[0],):
        raise ValueError(f"images must be (B, C, H, W) with (B,) labels, got {tuple(images.shape)} "
                         f"and {tuple(labels.shape)}")
    members = {int(r.cams.shape[0]) for r in records}
    if len(members) != 1:
        raise ValueError(f"every record needs the same number of members, got {sorted(members)}")
    for r in records:
        if tuple(r.cams.shape[1:]) != (images.shape[0], *images.shape[2:]):
            raise ValueError(f"records hold CAMs {tuple(r.cams.shape)}, which do not match "
                             f"{images.shape[0]} images of {tuple(images.shape[2:])}")
    return members.pop()


def _check_index(index: int, count: int, what: str) -> None:
    if not 0 <= index < count:
        raise ValueError(f"{what} must be in 0..{count - 1}, got {index}")


def _cam_rows(canvas: Figure | SubFigure, image: torch.Tensor, records: Sequence[CamRecord],
              index: int, class_names: Sequence[str] | None) -> None:
    """Rows = records, columns = members: each member's Grad-CAM of image `index` over the
    image, titled with its prediction. The last column counts, per pixel, the members whose
    above-mean region covers it (black 0, white all M) and gives the row's mean pairwise IoU."""
    members = records[0].cams.shape[0]
    axes = canvas.subplots(len(records), members + 1, squeeze=False)
    for row, record in enumerate(records):
        cam = record.cams[:, index]
        for m in range(members):
            ax = axes[row][m]
            ax.imshow(overlay(image, cam[m], alpha=CAM_OPACITY))
            ax.set_title(f"member {m + 1}: {_class_name(class_names, record.preds[m, index])}",
                         fontsize=8)
        # how many members count each pixel as above-mean: 1 everywhere = perfectly split
        count = _np(fdl.above_mean_mask(cam).sum(0))
        axes[row][-1].imshow(count, cmap="magma", vmin=0, vmax=members)
        axes[row][-1].set_title(f"members/pixel, IoU {_iou_text(cam)}", fontsize=8)
        axes[row][0].set_ylabel(record.settings.label, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])


def cam_figure(images: torch.Tensor, labels: torch.Tensor, records: Sequence[CamRecord],
               index: int, class_names: Sequence[str] | None = None) -> Figure:
    """`CamExplorer`'s view of test image `index`: rows = records (e.g. the classical and an FDL
    ensemble), columns = their members' Grad-CAMs over the image, and per row the members per
    pixel with the mean pairwise IoU. images (B, C, H, W), labels (B,), records from
    `fdl_experiments.cam_records` of those images."""
    members = check_records(images, labels, records)
    _check_index(index, images.shape[0], "image index")
    fig = plt.figure(figsize=(1.6 * (members + 1), 1.75 * len(records)))
    _cam_rows(fig, images[index], records, index, class_names)
    fig.suptitle(f"true class {_class_name(class_names, labels[index])}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_descriptor_demo(maps: Sequence[torch.Tensor], names: Sequence[str] | None = None,
                         title: str | None = None) -> Figure:
    """The mechanism on one sample: each member's channel-mean map and its above-mean descriptor.

    maps: M feature maps (C, H, W) of one image (or (1, C, H, W)); a `CamRecord`'s
    `maps[:, b]` (M, h, w) are already channel means, which a channel mean keeps.
    """
    maps = [m[None, None] if m.ndim == 2 else m if m.ndim == 4 else m[None] for m in maps]
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


def _tradeoff(axes: Sequence[Any], records: Sequence[CamRecord], selected: int | None,
              metric: str) -> None:
    """Overlap (left) and accuracy (right) of the records against λ_euc, on a symlog axis that
    keeps λ = 0 (the classical ensemble); `selected` marks one record."""
    if not records:
        raise ValueError("no lambda records to plot")
    ax1, ax2 = axes
    xs = np.array([r.settings.lambda_euc for r in records])
    for key, style in (("iou_map", "o-"), ("iou_cam", "s--")):
        ax1.plot(xs, [r.metrics[key] for r in records], style, label=key)
    ax1.set_ylabel("mean pairwise IoU")
    ax1.set_ylim(0, 1)
    ax1.legend(fontsize=8)
    for key, style in (("mean_member", "o-"), (metric, "s-"), ("fusion", "^--")):
        ax2.plot(xs, [r.metrics[key] for r in records], style, label=TITLES.get(key, key))
    ax2.set_ylabel("test accuracy")
    ax2.legend(fontsize=8)
    ratios = {round(r.settings.lambda_cos / r.settings.lambda_euc, 6) for r in records
              if r.settings.lambda_euc > 0}
    xlabel = "lambda_euc" + (f" (lambda_cos = {ratios.pop():g} x lambda_euc)" if len(ratios) == 1
                             else "")
    positive = xs[xs > 0]
    for ax in (ax1, ax2):
        ax.set_xscale("symlog", linthresh=float(positive.min()) if positive.size else 1.0)
        ax.set_xlim(0, float(xs.max()) * 1.6 if xs.max() > 0 else 1.0)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if selected is not None:
            ax.axvline(xs[selected], color="tab:red", alpha=0.4, lw=3)


def plot_lambda_tradeoff(records: Sequence[CamRecord], selected: int | None = None,
                         metric: str = "soft_vote") -> Figure:
    """Overlap (IoU of maps and of CAMs) and accuracy against the FDL weight scale: records from
    `fdl_experiments.cam_records` over `lambda_grid` (λ_cos scales with λ_euc, the x axis)."""
    fig, axes = plt.subplots(1, 2, figsize=(7.2, 2.9))
    _tradeoff(axes, records, selected, metric)
    fig.tight_layout()
    return fig


def lambda_figure(images: torch.Tensor, labels: torch.Tensor, records: Sequence[CamRecord],
                  which: int, index: int, class_names: Sequence[str] | None = None, *,
                  metric: str = "soft_vote") -> Figure:
    """`LambdaExplorer`'s view: the overlap/accuracy trade-off of the records with record
    `which` marked (top), and that ensemble's member Grad-CAMs of test image `index` (below)."""
    members = check_records(images, labels, records)
    _check_index(which, len(records), "record index")
    _check_index(index, images.shape[0], "image index")
    fig = plt.figure(figsize=(max(8.4, 1.6 * (members + 1)), 4.9), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=(2.9, 2.0))
    _tradeoff(top.subplots(1, 2), records, which, metric)
    _cam_rows(bottom, images[index], [records[which]], index, class_names)
    bottom.suptitle(f"{records[which].settings.label}, test image {index} (true class "
                    f"{_class_name(class_names, labels[index])})", fontsize=10)
    return fig


# ----------------------------------------------------------------------------- kernel-free sliders


def downsample(heat: Any, factor: int) -> np.ndarray:
    """Block means: (..., H, W) -> (..., H / factor, W / factor); factor 1 keeps the map.

    The stored slider figures carry every map of every frame, so halving the side of a 28x28
    CAM (itself upsampled from the 7x7 FDL layer) quarters the figure for little lost detail.
    """
    array = _np(heat).astype(np.float64)
    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a whole number >= 1, got {factor}")
    factor = int(factor)
    height, width = array.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"factor {factor} must divide the map size {height}x{width}")
    blocks = array.reshape(*array.shape[:-2], height // factor, factor, width // factor, factor)
    return blocks.mean(axis=(-3, -1))


def _axis_names(cell: int) -> tuple[str, str]:
    """plotly's axis ids of subplot `cell` (0-based, row-major): ('x', 'y'), ('x2', 'y2'), ..."""
    suffix = "" if cell == 0 else str(cell + 1)
    return f"x{suffix}", f"y{suffix}"


def _cam_cell_traces(image: torch.Tensor, cam: torch.Tensor, cell: int, pool: int) -> list[Any]:
    """The digit (gray picture) and its Grad-CAM (jet heat map, translucent, on the shared
    0..1 colour axis, `pool` pixels a cell) in subplot `cell`."""
    import plotly.graph_objects as go

    xaxis, yaxis = _axis_names(cell)
    digit = go.Image(source=png_data_uri(image), hoverinfo="skip", xaxis=xaxis, yaxis=yaxis)
    centre = (pool - 1) / 2  # a pooled cell spans `pool` pixels of the digit
    heat = go.Heatmap(z=compact(downsample(cam, pool)), x0=centre, dx=pool, y0=centre, dy=pool,
                      coloraxis="coloraxis", opacity=CAM_OPACITY,
                      hovertemplate="Grad-CAM %{z:.2f}<extra></extra>", xaxis=xaxis, yaxis=yaxis)
    return [digit, heat]


def _cam_grid_figure(row_names: Sequence[str], members: int, cell_size: int = 130) -> Any:
    """An empty rows x members grid of square, upright image axes with a row label each."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(row_names), cols=members, horizontal_spacing=0.015,
                        vertical_spacing=0.09, subplot_titles=[" "] * (len(row_names) * members))
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, constrain="domain")
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed")
    for cell in range(len(row_names) * members):
        xaxis, _ = _axis_names(cell)
        fig.update_yaxes(scaleanchor=xaxis, row=cell // members + 1, col=cell % members + 1)
    for row, name in enumerate(row_names):
        fig.update_yaxes(title_text=name, title_font_size=11, row=row + 1, col=1)
    fig.update_layout(width=110 + cell_size * members, height=130 + (cell_size + 20) * len(row_names),
                      margin=dict(l=50, r=20, t=90, b=20), title_font_size=13,
                      plot_bgcolor="white",
                      coloraxis=dict(cmin=0, cmax=1, colorscale="Jet",
                                     colorbar=dict(title=dict(text="Grad-CAM", side="right"), len=0.8,
                                                   thickness=12)))
    fig.update_annotations(font_size=10)
    return fig


def _titled(fig: Any, texts: Sequence[str]) -> list[dict[str, Any]]:
    """The figure's subplot-title annotations with new texts (a frame's per-cell titles)."""
    annotations = [annotation.to_plotly_json() for annotation in fig.layout.annotations]
    return [{**annotation, "text": text} for annotation, text in zip(annotations, texts, strict=True)]


def _iou_text(cams: torch.Tensor) -> str:
    """Mean pairwise IoU of (M, H, W) CAMs' above-mean regions, 'n/a' when under two have one."""
    iou = float(fdl.attention_iou(torch.as_tensor(cams)[:, None])[0])
    return "n/a" if math.isnan(iou) else f"{iou:.2f}"


def _class_name(class_names: Sequence[str] | None, cls: Any) -> str:
    return class_names[int(cls)] if class_names is not None else str(int(cls))


def _digit_labels(labels: torch.Tensor, class_names: Sequence[str] | None) -> list[str]:
    """Slider labels of test digits: the class when each class appears once, else 'index: class'."""
    classes = [_class_name(class_names, label) for label in labels]
    if len(set(classes)) == len(classes):
        return classes
    return [f"{index}: {name}" for index, name in enumerate(classes)]


def _add_member_cells(traces: list[Any], titles: list[str], image: torch.Tensor,
                      record: CamRecord, index: int, row: int, pool: int,
                      class_names: Sequence[str] | None) -> None:
    """Append one grid row: every member's CAM of image `index` of `record` over the digit,
    and each cell's title (the member's prediction)."""
    members = record.cams.shape[0]
    for m in range(members):
        traces += _cam_cell_traces(image, record.cams[m, index], row * members + m, pool)
        titles.append(f"member {m + 1}: {_class_name(class_names, record.preds[m, index])}")


def member_cam_slider(images: torch.Tensor, labels: torch.Tensor,
                      records: Sequence[CamRecord],
                      class_names: Sequence[str] | None = None, *, pool: int = 2) -> Any:
    """The member view without a kernel: one frame per test digit; rows = records (e.g. the
    classical and an FDL ensemble), columns = members, each cell the member's Grad-CAM over the
    digit, titled with its prediction; the frame title gives each row's mean pairwise IoU.

    images: (B, C, H, W) in [0, 1]; labels: (B,); records from `fdl_experiments.cam_records`
    (cams (M, B, H, W) in [0, 1], preds (M, B)). `pool` averages pool x pool blocks of the
    stored maps (see `downsample`). Returns a plotly Figure with a B-step slider.
    """
    members = check_records(images, labels, records)
    rows = [r.settings.label for r in records]
    fig = _cam_grid_figure(rows, members)
    frames = []
    for index, step in enumerate(_digit_labels(labels, class_names)):
        traces, titles = [], []
        for row, record in enumerate(records):
            _add_member_cells(traces, titles, images[index], record, index, row, pool, class_names)
        overlap = " · ".join(f"{name} IoU {_iou_text(r.cams[:, index])}"
                             for name, r in zip(rows, records, strict=True))
        title = {"text": f"Grad-CAM of each member, test digit {index} (true class "
                         f"{_class_name(class_names, labels[index])})",
                 "subtitle": {"text": f"mean pairwise IoU of the above-mean regions: {overlap}"}}
        frames.append(Frame(step, traces, {"title": title, "annotations": _titled(fig, titles)}))
    fig.add_traces(list(frames[0].traces))
    return add_slider(fig, frames, prefix="test digit")


def lambda_title(record: CamRecord, metric: str = "soft_vote") -> dict[str, Any]:
    """A lambda record's trade-off as a plotly title: its overlap, and below it what the
    combiners score."""
    m = record.metrics
    return {"text": f"{record.settings.label}: IoU of maps {m['iou_map']:.3f}, of Grad-CAMs "
                    f"{m['iou_cam']:.3f}",
            "subtitle": {"text": f"test accuracy: mean member {m['mean_member']:.3f} · "
                                 f"{TITLES.get(metric, metric)} {m[metric]:.3f} · "
                                 f"fusion head {m['fusion']:.3f}"}}


def lambda_cam_slider(images: torch.Tensor, labels: torch.Tensor,
                      records: Sequence[CamRecord], digits: Sequence[int] | None = None,
                      class_names: Sequence[str] | None = None, *, pool: int = 2,
                      metric: str = "soft_vote") -> Any:
    """The lambda view without a kernel: one frame per lambda record; rows = a few test digits,
    columns = members (Grad-CAM over the digit, titled with its prediction); the frame title
    carries the record's overlap and accuracies (`lambda_title`).

    images, labels, records as in `member_cam_slider` (records: `fdl_experiments.cam_records`
    over `lambda_grid`, each with its metrics); digits: indices into images (default the first
    three). Returns a plotly Figure with one slider step per record.
    """
    members = check_records(images, labels, records)
    digits = list(range(min(3, images.shape[0]))) if digits is None else [int(d) for d in digits]
    if not digits or not all(0 <= d < images.shape[0] for d in digits):
        raise ValueError(f"digits must index the {images.shape[0]} images, got {digits}")
    fig = _cam_grid_figure([f"digit {d} (class {_class_name(class_names, labels[d])})"
                            for d in digits], members)
    frames = []
    for record in records:
        traces, titles = [], []
        for row, index in enumerate(digits):
            _add_member_cells(traces, titles, images[index], record, index, row, pool, class_names)
        frames.append(Frame(record.settings.label, traces,
                            {"title": lambda_title(record, metric),
                             "annotations": _titled(fig, titles)}))
    fig.add_traces(list(frames[0].traces))
    return add_slider(fig, frames, prefix="FDL weights")
