"""Figures for APFS: feasible sets in the plane, constraint satisfaction, sweeps, step cost.

They draw typed results: the 2-D run's `labkit.methods.apfs.GeometryResult`, the runner's
`apfs_experiments.Result` (sweeps) and `StepCost`. The ablation's bars and recall@K curves are
`labkit.viz.report`'s, with `VARIANT_COLORS`. `round_figure` and `sweep_figure` are the
widgets' static counterparts; `round_slider` and `sweep_slider` are kernel-free ones (plotly
figures with a frame per recorded round or swept value, see `labkit.viz.playable`). The method
is described in docs/methods/apfs.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from labkit.viz.playable import Frame, add_slider, compact

if TYPE_CHECKING:
    from labkit.methods.apfs import GeometryResult
    from labkit.methods.apfs_experiments import Result, StepCost

VARIANT_COLORS = {"baseline": "#8c8c8c", "apfs": "#1f77b4", "apfs+mining": "#d62728"}
SWEEP_SYMBOLS = {"strength": "λ", "lifetime": "T"}


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


def plot_round(geometry: GeometryResult, round_index: int, fig: Any = None) -> Figure:
    """Before / after panels of one round of `labkit.methods.apfs.geometry_run` (a Figure or
    SubFigure may be passed in to draw on)."""
    reps = geometry.representatives
    if not 0 <= round_index < len(reps):
        raise ValueError(f"round_index must be in 0..{len(reps) - 1}, got {round_index}")
    alpha, beta = geometry.settings.alpha, geometry.settings.beta
    fig = fig if fig is not None else plt.figure(figsize=(10, 4.6))
    fig.clear()
    axes = fig.subplots(1, 2)
    sat = geometry.satisfaction[round_index]
    for ax, when, snap in zip(axes, ("before", "after"),
                              (geometry.snapshots[round_index],
                               geometry.snapshots[round_index + 1]), strict=True):
        intra, inter = sat[when]
        draw_feasible_set(ax, snap, geometry.labels, reps[round_index], alpha, beta,
                          class_names=geometry.classes or None,
                          title=f"round {round_index} {when}: within alpha {100 * intra:.0f}%, "
                                f"beyond beta {100 * inter:.0f}%")
    axes[0].legend(loc="best", fontsize=7, markerscale=2, title="class", title_fontsize=7)
    fig.suptitle(f"Relaxed feasible set Theta_{round_index}: representatives (stars), "
                 f"alpha={alpha} (solid), beta={beta} (dashed)", fontsize=10)
    if hasattr(fig, "tight_layout"):  # a SubFigure takes its parent's layout
        fig.tight_layout()
    return fig


def round_figure(geometry: GeometryResult, round_index: int, dpi: float | None = None
                 ) -> Figure:
    """`plot_round` of one round in a new figure: `RoundExplorer`'s static counterpart."""
    return plot_round(geometry, round_index, fig=plt.figure(figsize=(10, 4.6), dpi=dpi))


def plot_rounds(geometry: GeometryResult, rounds: Sequence[int] | None = None) -> Figure:
    """Before/after of a few rounds (default: first, middle, last) stacked in one figure."""
    total = len(geometry.representatives)
    rounds = list(rounds) if rounds is not None else sorted({0, total // 2, total - 1})
    # low dpi: this figure is stored in the notebook
    fig = plt.figure(figsize=(10, 4.4 * len(rounds)), layout="constrained", dpi=60)
    for sub, k in zip(fig.subfigures(len(rounds), 1, squeeze=False)[:, 0], rounds, strict=True):
        plot_round(geometry, k, fig=sub)
    return fig


def plot_satisfaction(geometry: GeometryResult, ax: Axes | None = None) -> Axes:
    """Fraction of Theta_k's constraints that hold at the start and the end of each round k."""
    ax = ax if ax is not None else plt.subplots(figsize=(6, 3.2))[1]
    sat = geometry.satisfaction
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


def _swept(results: Sequence[Result], parameter: str) -> tuple[list, list]:
    """(each result's value of `parameter`, the sorted distinct values)."""
    if not results:
        raise ValueError("a sweep figure needs at least one result")
    per_result = [getattr(r.settings, parameter) for r in results]
    return per_result, sorted(dict.fromkeys(per_result))


def plot_sweep(results: Sequence[Result], parameter: str, metric: str = "recall@1",
               highlight: Any = None, fig: Figure | None = None) -> Figure:
    """Runs of `apfs_experiments.sweep` over `parameter` ("strength" = λ or "lifetime" = T).
    Left: `metric` against the swept value; right: ||theta - theta_anchor|| at each round end.

    `highlight` picks one swept value to draw bold (the widget's slider position).
    """
    per_result, values = _swept(results, parameter)
    fig = fig if fig is not None else plt.figure(figsize=(10, 3.4))
    fig.clear()
    left, right = fig.subplots(1, 2)
    positions = np.arange(len(values))
    means = [np.mean([r.metrics[metric] for r, x in zip(results, per_result, strict=True)
                      if x == v]) for v in values]
    left.plot(positions, means, marker="o", color="#1f77b4")
    for r, x in zip(results, per_result, strict=True):
        left.scatter(values.index(x), r.metrics[metric], s=10, color="black", zorder=3)
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
        dist = next(r.round_distances for r, x in zip(results, per_result, strict=True)
                    if x == v)
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


def sweep_figure(sweeps: Mapping[str, Sequence[Result]], parameter: str, value: Any,
                 metric: str = "recall@1", dpi: float | None = None) -> Figure:
    """`plot_sweep` of `parameter`'s runs with `value` highlighted, in a new figure:
    `SweepExplorer`'s static counterpart. sweeps: {"strength": results, "lifetime": results}."""
    return plot_sweep(sweeps[parameter], parameter, metric, highlight=value,
                      fig=plt.figure(figsize=(10, 3.4), dpi=dpi))


def plot_step_cost(cost: StepCost, ax: Axes | None = None) -> Axes:
    """Bars of ms per step from `apfs_experiments.step_cost` (measured side by side)."""
    ax = ax if ax is not None else plt.subplots(figsize=(4.5, 3))[1]
    names = list(cost.blocks)
    ax.bar(names, [cost.ms(n) for n in names],
           color=[VARIANT_COLORS.get(n, "gray") for n in names])
    ax.set_ylabel("ms per training step (mean over blocks)")
    ax.grid(axis="y", alpha=0.3)
    return ax


# ----------------------------------------------------------------------------- kernel-free sliders

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


def round_slider(geometry: GeometryResult, max_points_per_class: int | None = 50,
                 vertices: int = 33) -> Any:
    """Kernel-free counterpart of `plot_round`: a plotly slider with one frame per APFS round.

    geometry: `labkit.methods.apfs.geometry_run()` (snapshots (N, 2) at round boundaries,
    representatives (rounds, C)). Frame k shows round k's start (snapshot k) and end
    (snapshot k+1): class points, each representative r_c (star) with its alpha ball (solid)
    and beta ball (dashed), and the share of Theta_k's constraints met in the title. Axis
    ranges are the same in every frame. At most `max_points_per_class` points per class are
    drawn (None: all; the constraint shares count all) and each ball is a polygon of
    `vertices` points: both keep a stored figure small. Returns a plotly Figure.
    """
    import plotly.graph_objects as go

    reps = np.asarray(geometry.representatives)
    snapshots = geometry.snapshots
    if reps.ndim != 2 or len(reps) < 2:
        raise ValueError(f"round_slider needs representatives (rounds >= 2, C), got shape "
                         f"{reps.shape}")
    if len(snapshots) < len(reps) + 1:
        raise ValueError(f"{len(reps)} rounds need {len(reps) + 1} snapshots (their starts and "
                         f"the last end), got {len(snapshots)}")
    if any(s.ndim != 2 or s.shape[1] != 2 for s in snapshots):
        raise ValueError("round_slider needs 2-D embeddings (N, 2) in every snapshot")
    alpha, beta = float(geometry.settings.alpha), float(geometry.settings.beta)
    num_classes = reps.shape[1]
    names = [str(n) for n in (geometry.classes or range(num_classes))]
    colors = _hex_colors(num_classes)
    picks = class_subsample(geometry.labels, num_classes, max_points_per_class)
    frames, styled = [], []
    for k, rep in enumerate(reps):
        traces = [trace for panel, snap in ((1, snapshots[k]), (2, snapshots[k + 1]))
                  for trace in _feasible_set_traces(snap, picks, rep, alpha, beta, names,
                                                    colors, panel, vertices)]
        styled = styled or traces
        (intra0, inter0), (intra1, inter1) = (geometry.satisfaction[k][when]
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


def _sweep_traces(results: Sequence[Result], parameter: str, selected: int, metric: str,
                  slots: int) -> list[Any]:
    """The traces of one `sweep_slider` frame: metric vs value (left), round distances (right)."""
    import plotly.graph_objects as go

    per_result, values = _swept(results, parameter)
    symbol = SWEEP_SYMBOLS.get(parameter, parameter)
    scores = [r.metrics[metric] for r in results]
    means = [float(np.mean([s for s, x in zip(scores, per_result, strict=True) if x == v]))
             for v in values]
    labels = [f"{v:g}" for v in values]
    left = dict(xaxis="x", yaxis="y")
    right = dict(xaxis="x2", yaxis="y2")
    traces = [
        go.Scatter(x=np.arange(len(values)), y=compact(means), mode="lines+markers+text",
                   text=labels, textposition="top center", name="mean over seeds",
                   line=dict(color="#1f77b4"), **left),
        go.Scatter(x=[values.index(x) for x in per_result],
                   y=compact(scores), mode="markers", name="seeds",
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
        distances = next(r.round_distances for r, x in zip(results, per_result, strict=True)
                         if x == values[slot])
        bold = slot == selected
        traces.append(go.Scatter(
            x=compact((np.arange(len(distances)) + 1) / max(1, len(distances))),
            y=compact(distances, 6), mode="lines", name=f"{symbol} = {labels[slot]}",
            line=dict(color="rgb({:.0f},{:.0f},{:.0f})".format(*(255 * palette[slot][:3])),
                      width=3 if bold else 1), opacity=1.0 if bold else 0.45, **right))
    return traces


def sweep_slider(sweeps: Mapping[str, Sequence[Result]], metric: str = "recall@1") -> Any:
    """Kernel-free counterpart of `plot_sweep` over every swept parameter: one frame per
    (parameter, value), e.g. "λ=0.1" or "T=10".

    sweeps: {"strength": results, "lifetime": results}, each from `apfs_experiments.sweep`
    over that field. Left: `metric` against the parameter's values, the frame's value circled;
    right: ||theta - theta_anchor|| at each round's end (first seed) against the share of
    training done, the frame's value bold. Axis ranges are the same in every frame. Returns a
    plotly Figure.
    """
    import plotly.graph_objects as go

    if not sweeps or any(not rows for rows in sweeps.values()):
        raise ValueError("sweep_slider needs at least one non-empty sweep")
    values = {p: _swept(results, p)[1] for p, results in sweeps.items()}
    slots = max(len(v) for v in values.values())
    frames = []
    for parameter, results in sweeps.items():
        symbol = SWEEP_SYMBOLS.get(parameter, parameter)
        positions = list(range(len(values[parameter])))
        xaxis = dict(domain=[0, 0.45], range=[-0.5, slots - 0.5], anchor="y", tickvals=positions,
                     ticktext=[f"{v:g}" for v in values[parameter]],
                     title=dict(text=f"{symbol} ({parameter})"))
        for i, value in enumerate(values[parameter]):
            seeds = [r.metrics[metric] for r in results
                     if getattr(r.settings, parameter) == value]
            title = (f"APFS sweep of {symbol}: {metric} = {np.mean(seeds):.3f} at {symbol} = "
                     f"{value:g} (mean over {len(seeds)} seed{'s' if len(seeds) > 1 else ''})")
            frames.append(Frame(f"{symbol}={value:g}",
                                _sweep_traces(results, parameter, i, metric, slots),
                                {"title": {"text": title}, "xaxis": xaxis}))
    scores = [float(r.metrics[metric]) for results in sweeps.values() for r in results]
    pad = max(0.02, 0.1 * (max(scores) - min(scores)))
    distances = [d for results in sweeps.values() for r in results for d in r.round_distances
                 if d > 0]
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
