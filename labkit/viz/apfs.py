"""Figures for APFS: feasible sets in the plane, constraint satisfaction, ablation, sweeps.

Matplotlib figures draw one state; `round_slider` and `sweep_slider` are their kernel-free
counterparts (plotly figures with a frame per recorded round or swept value, see
`labkit.viz.playable`). The method is described in docs/methods/apfs.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from labkit.viz.playable import Frame, add_slider, compact

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


# ----------------------------------------------------------------------------- kernel-free sliders

SWEEP_SYMBOLS = {"strength": "λ", "lifetime": "T"}


def _hex_colors(num: int) -> list[str]:
    from matplotlib.colors import to_hex

    return [to_hex(color) for color in _colors(num)]  # the matplotlib figures' class colours


def circle_outline(center: Sequence[float], radius: float,
                   vertices: int = 37) -> tuple[np.ndarray, np.ndarray]:
    """x (vertices,) and y (vertices,) of a closed polygon (first point = last) on the circle."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    if vertices < 4:
        raise ValueError(f"a circle outline needs at least 4 vertices, got {vertices}")
    angle = np.linspace(0.0, 2 * np.pi, vertices)
    return center[0] + radius * np.cos(angle), center[1] + radius * np.sin(angle)


def class_subsample(labels: Any, num_classes: int, per_class: int | None) -> list[np.ndarray]:
    """Row indices of each class 0..num_classes-1, at most `per_class` evenly spaced ones.

    The same rows are drawn in every frame, so points move between rounds instead of flickering.
    """
    if per_class is not None and per_class < 1:
        raise ValueError(f"per_class must be >= 1 (or None for all), got {per_class}")
    labels = labels.cpu().numpy() if hasattr(labels, "cpu") else np.asarray(labels)
    picks = []
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        if per_class is not None and len(rows) > per_class:
            rows = rows[np.linspace(0, len(rows) - 1, per_class).round().astype(int)]
        picks.append(rows)
    return picks


def coordinates_only(trace: Any) -> Any:
    """A scatter trace holding only `trace`'s x and y.

    plotly.js merges a frame's traces into the figure's, so frames whose styles never change
    need to carry only the coordinates (a third of the JSON of the round slider).
    """
    import plotly.graph_objects as go

    return go.Scatter(x=trace.x, y=trace.y)


def _feasible_set_traces(embedding: Any, picks: Sequence[np.ndarray], rep_index: Sequence[int],
                         alpha: float, beta: float, names: Sequence[str], colors: Sequence[str],
                         panel: int, vertices: int) -> list[Any]:
    """One panel of `round_slider`: class points, alpha and beta balls, representatives."""
    import plotly.graph_objects as go

    axes = {"xaxis": "x" if panel == 1 else f"x{panel}", "yaxis": "y" if panel == 1 else f"y{panel}"}
    legend = panel == 1  # one legend entry per class, not one per panel
    e = compact(embedding)
    traces = [go.Scatter(x=compact(e[rows, 0]), y=compact(e[rows, 1]), mode="markers",
                         name=names[c], legendgroup=names[c], showlegend=legend,
                         marker=dict(size=4, color=colors[c], opacity=0.5), hoverinfo="skip",
                         **axes)
              for c, rows in enumerate(picks)]
    for c, r in enumerate(rep_index):
        for symbol, radius, dash in (("α", alpha, "solid"), ("β", beta, "dash")):
            xs, ys = circle_outline(e[r], radius, vertices)
            traces.append(go.Scatter(x=compact(xs, 3), y=compact(ys, 3), mode="lines",
                                     name=f"{symbol} ball {names[c]}", legendgroup=names[c],
                                     showlegend=False, hoverinfo="skip",
                                     line=dict(color=colors[c], width=1.5, dash=dash), **axes))
    centres = e[np.asarray(rep_index)]
    traces.append(go.Scatter(x=compact(centres[:, 0]), y=compact(centres[:, 1]), mode="markers",
                             name="representatives", showlegend=legend, text=list(names),
                             hovertemplate="representative of class %{text}<extra></extra>",
                             marker=dict(symbol="star", size=15, color=list(colors),
                                         line=dict(color="black", width=1)), **axes))
    return traces


def _round_extent(snapshots: Sequence[Any], representatives: np.ndarray,
                  beta: float) -> tuple[list[float], list[float]]:
    """Square x and y ranges holding every frame's points and beta balls (5% padding)."""
    lows, highs = [], []
    for k, rep in enumerate(representatives):
        for snap in (snapshots[k], snapshots[k + 1]):
            e = compact(snap)
            centres = e[np.asarray(rep)]
            lows += [e.min(0), centres.min(0) - beta]
            highs += [e.max(0), centres.max(0) + beta]
    low, high = np.min(lows, 0), np.max(highs, 0)
    middle, half = (low + high) / 2, 1.05 * float((high - low).max()) / 2
    return ([float(middle[0] - half), float(middle[0] + half)],
            [float(middle[1] - half), float(middle[1] + half)])


def round_slider(geometry: Mapping[str, Any], max_points_per_class: int | None = 50,
                 vertices: int = 33) -> Any:
    """Kernel-free counterpart of `plot_round`: a plotly slider with one frame per APFS round.

    geometry: `apfs_experiments.geometry_run()` (snapshots (N, 2) at round boundaries,
    representatives (rounds, C)). Frame k shows round k's start (snapshot k) and end
    (snapshot k+1): class points, each representative r_c (star) with its alpha ball (solid)
    and beta ball (dashed), and the share of Theta_k's constraints met in the title. Axis
    ranges are the same in every frame. At most `max_points_per_class` points per class are
    drawn (None: all; the constraint shares count all) and each ball is a polygon of
    `vertices` points: both keep a stored figure small. Returns a plotly Figure.
    """
    import plotly.graph_objects as go

    reps = np.asarray(geometry["representatives"])
    snapshots = geometry["snapshots"]
    if reps.ndim != 2 or len(reps) < 2:
        raise ValueError(f"round_slider needs representatives (rounds >= 2, C), got shape "
                         f"{reps.shape}")
    if len(snapshots) < len(reps) + 1:
        raise ValueError(f"{len(reps)} rounds need {len(reps) + 1} snapshots (their starts and "
                         f"the last end), got {len(snapshots)}")
    if any(s.ndim != 2 or s.shape[1] != 2 for s in snapshots):
        raise ValueError("round_slider needs 2-D embeddings (N, 2) in every snapshot")
    alpha, beta = float(geometry["config"]["alpha"]), float(geometry["config"]["beta"])
    num_classes = reps.shape[1]
    names = [str(n) for n in (geometry.get("classes") or range(num_classes))]
    colors = _hex_colors(num_classes)
    picks = class_subsample(geometry["labels"], num_classes, max_points_per_class)
    frames, styled = [], []
    for k, rep in enumerate(reps):
        traces = [trace for panel, snap in ((1, snapshots[k]), (2, snapshots[k + 1]))
                  for trace in _feasible_set_traces(snap, picks, rep, alpha, beta, names,
                                                    colors, panel, vertices)]
        styled = styled or traces
        (intra0, inter0), (intra1, inter1) = (geometry["satisfaction"][k][when]
                                              for when in ("before", "after"))
        title = (f"Round {k}, relaxed set Θ_{k}: start within α {100 * intra0:.0f}%, beyond β "
                 f"{100 * inter0:.0f}% → end within α {100 * intra1:.0f}%, beyond β "
                 f"{100 * inter1:.0f}%")
        frames.append(Frame(str(k), [coordinates_only(t) for t in traces],
                            {"title": {"text": title}}))
    x_range, y_range = _round_extent(snapshots, reps, beta)
    fig = go.Figure(data=styled)
    square = dict(range=y_range, constrain="domain")
    fig.update_layout(
        xaxis=dict(domain=[0, 0.46], range=x_range, constrain="domain", title="embedding 1"),
        yaxis=dict(anchor="x", scaleanchor="x", title="embedding 2", **square),
        xaxis2=dict(domain=[0.54, 1], range=x_range, constrain="domain", anchor="y2",
                    title="embedding 1"),
        yaxis2=dict(anchor="x2", scaleanchor="x2", **square),
        annotations=[dict(text=text, x=x, y=1.02, xref="paper", yref="paper", showarrow=False,
                          xanchor="center", yanchor="bottom")
                     for text, x in (("start of the round (before)", 0.23),
                                     ("end of the round (after)", 0.77))],
        legend=dict(title=dict(text="class"), itemsizing="constant"),
        height=560, margin=dict(t=90, b=40, l=50, r=20))
    return add_slider(fig, frames, prefix="round", active=0)


def _sweep_traces(rows: Sequence[Mapping[str, Any]], values: Sequence[Any], selected: int,
                  metric: str, symbol: str, slots: int) -> list[Any]:
    """The traces of one `sweep_slider` frame: metric vs value (left), round distances (right)."""
    import plotly.graph_objects as go

    means = [float(np.mean([r[metric] for r in rows if r["value"] == v])) for v in values]
    labels = [f"{v:g}" for v in values]
    left = dict(xaxis="x", yaxis="y")
    right = dict(xaxis="x2", yaxis="y2")
    traces = [
        go.Scatter(x=np.arange(len(values)), y=compact(means), mode="lines+markers+text",
                   text=labels, textposition="top center", name="mean over seeds",
                   line=dict(color="#1f77b4"), **left),
        go.Scatter(x=[values.index(r["value"]) for r in rows],
                   y=compact([r[metric] for r in rows]), mode="markers", name="seeds",
                   marker=dict(size=5, color="black"), **left),
        go.Scatter(x=[selected], y=compact([means[selected]]), mode="markers",
                   name=f"{symbol} = {labels[selected]}", showlegend=False,
                   marker=dict(size=18, color="rgba(0,0,0,0)",
                               line=dict(color="#d62728", width=2.5)), **left),
    ]
    palette = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(values)))
    for slot in range(slots):
        if slot >= len(values):  # this parameter has fewer values: an empty trace keeps the count
            traces.append(go.Scatter(x=[], y=[], mode="lines", showlegend=False, **right))
            continue
        distances = next(r["round_distances"] for r in rows if r["value"] == values[slot])
        bold = slot == selected
        traces.append(go.Scatter(
            x=compact((np.arange(len(distances)) + 1) / max(1, len(distances))),
            y=compact(distances, 6), mode="lines", name=f"{symbol} = {labels[slot]}",
            line=dict(color="rgb({:.0f},{:.0f},{:.0f})".format(*(255 * palette[slot][:3])),
                      width=3 if bold else 1), opacity=1.0 if bold else 0.45, **right))
    return traces


def sweep_slider(sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
                 metric: str = "recall@1") -> Any:
    """Kernel-free counterpart of `plot_sweep` over every swept parameter: one frame per
    (parameter, value), e.g. "λ=0.1" or "T=10".

    sweeps: {"strength": rows, "lifetime": rows} from `apfs_experiments.sweep`. Left: `metric`
    against the parameter's values, the frame's value circled; right: ||theta - theta_anchor||
    at each round's end (first seed) against the share of training done, the frame's value
    bold. Axis ranges are the same in every frame. Returns a plotly Figure.
    """
    import plotly.graph_objects as go

    if not sweeps or any(not rows for rows in sweeps.values()):
        raise ValueError("sweep_slider needs at least one non-empty sweep")
    values = {p: sorted(dict.fromkeys(r["value"] for r in rows)) for p, rows in sweeps.items()}
    slots = max(len(v) for v in values.values())
    frames = []
    for parameter, rows in sweeps.items():
        symbol = SWEEP_SYMBOLS.get(parameter, parameter)
        positions = list(range(len(values[parameter])))
        xaxis = dict(domain=[0, 0.45], range=[-0.5, slots - 0.5], anchor="y", tickvals=positions,
                     ticktext=[f"{v:g}" for v in values[parameter]],
                     title=dict(text=f"{symbol} ({parameter})"))
        for i, value in enumerate(values[parameter]):
            seeds = [r[metric] for r in rows if r["value"] == value]
            title = (f"APFS sweep of {symbol}: {metric} = {np.mean(seeds):.3f} at {symbol} = "
                     f"{value:g} (mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
            frames.append(Frame(f"{symbol}={value:g}",
                                _sweep_traces(rows, values[parameter], i, metric, symbol, slots),
                                {"title": {"text": title}, "xaxis": xaxis}))
    scores = [float(r[metric]) for rows in sweeps.values() for r in rows]
    pad = max(0.02, 0.1 * (max(scores) - min(scores)))
    distances = [d for rows in sweeps.values() for r in rows for d in r["round_distances"] if d > 0]
    distance_axis = (dict(type="log", range=[np.log10(min(distances)) - 0.1,
                                             np.log10(max(distances)) + 0.1])
                     if distances else dict(type="linear"))
    fig = go.Figure(data=list(frames[0].traces))
    fig.update_layout(
        yaxis=dict(anchor="x", range=[min(scores) - pad, max(scores) + 2 * pad],
                   title=f"{metric} (unseen classes)"),
        xaxis2=dict(domain=[0.55, 1], range=[0, 1.02], anchor="y2",
                    title="share of training done (round ends)"),
        yaxis2=dict(anchor="x2", title="||θ − θ_anchor|| at round end", **distance_axis),
        height=460, margin=dict(t=70, b=40, l=60, r=20))
    return add_slider(fig, frames, prefix="value", active=0)
