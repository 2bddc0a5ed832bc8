"""Kernel-free sliders: plotly figures whose frames hold every recorded or precomputed state.

A widget needs a live kernel to redraw; a figure built here carries all its states (epochs,
rounds, a grid of μ and γ) as plotly frames with a slider over them, so it plays in JupyterLab
without running anything, in the HTML pages `labkit reproduce` writes, and in any browser with
no network. The live widgets stay for exploring beyond the recorded grid.

`show` displays a figure as plotly's JSON mimetype only: JupyterLab's plotly extension draws
it, and the stored notebook carries no copy of plotly.js.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"


@dataclass(frozen=True)
class Frame:
    """One slider step: its label, the traces that replace the figure's (same count, same
    order) and an optional layout update (e.g. a title naming the step)."""

    label: str
    traces: Sequence[Any]
    layout: dict[str, Any] = field(default_factory=dict)


def add_slider(fig: Any, frames: Sequence[Frame], *, prefix: str, active: int = 0) -> Any:
    """Attach `frames` and a slider over them to the plotly figure `fig`.

    `fig.data` must hold one trace per trace of a frame (the frame at `active` is a natural
    choice); each step swaps in its frame's trace data without a kernel. Returns `fig`.
    """
    import plotly.graph_objects as go

    if len(frames) < 2:
        raise ValueError(f"a slider needs at least two frames, got {len(frames)}")
    labels = [frame.label for frame in frames]
    if len(set(labels)) != len(labels):
        raise ValueError(f"frame labels must be unique (they name the frames), got {labels}")
    count = len(fig.data)
    for frame in frames:
        if len(frame.traces) != count:
            raise ValueError(f"frame {frame.label!r} has {len(frame.traces)} traces; the figure "
                             f"has {count}")
    if not 0 <= active < len(frames):
        raise ValueError(f"active must index the frames (0..{len(frames) - 1}), got {active}")
    fig.frames = [go.Frame(name=frame.label, data=list(frame.traces),
                           layout=frame.layout or None, traces=list(range(count)))
                  for frame in frames]
    jump = {"mode": "immediate", "frame": {"duration": 0, "redraw": True},
            "transition": {"duration": 0}}
    steps = [dict(label=frame.label, method="animate", args=[[frame.label], jump])
             for frame in frames]
    fig.update_layout(
        sliders=[dict(active=active, steps=steps, currentvalue=dict(prefix=f"{prefix}: "),
                      pad=dict(t=40, b=10), len=0.95, x=0.025)],
        **(frames[active].layout or {}))
    return fig


def slider_steps(fig: Any) -> list[str]:
    """The step labels of a figure's first slider (empty when it has none)."""
    sliders = fig.layout.sliders
    return [step.label for step in sliders[0].steps] if sliders else []


def compact(values: Any, decimals: int = 4) -> np.ndarray:
    """`values` as float32 numpy, rounded: plotly then stores them as a short base64 array."""
    array = values.detach().cpu().numpy() if hasattr(values, "detach") else np.asarray(values)
    return np.round(array.astype(np.float32), decimals)


def figure_json(fig: Any) -> dict[str, Any]:
    """The figure as the JSON dict plotly's mimetype carries (data, layout, frames)."""
    import plotly.io as pio

    return json.loads(pio.to_json(fig, validate=False, pretty=False))


def show(fig: Any, note: str | None = None) -> None:
    """Display `fig` as plotly's JSON mimetype with a one-line text fallback."""
    from IPython.display import display

    steps = slider_steps(fig)
    title = fig.layout.title.text or "plotly figure"
    fallback = note or (f"{title} (an interactive plotly figure"
                        + (f" with a {len(steps)}-step slider" if steps else "") + ")")
    display({PLOTLY_MIMETYPE: figure_json(fig), "text/plain": fallback}, raw=True)
