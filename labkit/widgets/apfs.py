"""Interactive APFS: a slider over rounds of the 2-D feasible-set run, and a slider over cached
runs with different proximal strengths lambda or lifetimes T. Both only re-draw recorded results
(instant), and carry a picture of their first state for stored notebooks; `static_rounds` stacks
a few rounds in one figure. Kernel-free counterparts: `labkit.viz.apfs.round_slider` and
`sweep_slider`. The method: docs/methods/apfs.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from labkit.viz.apfs import plot_round, plot_sweep
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized

PICTURE_DPI = 72  # the first-state picture is stored in the notebook: keep it small


def static_rounds(geometry: Mapping[str, Any], rounds: Sequence[int] | None = None) -> Figure:
    """Before/after of a few rounds stacked in one figure (the widget's static fallback)."""
    total = len(geometry["representatives"])
    rounds = list(rounds) if rounds is not None else sorted({0, total // 2, total - 1})
    # low dpi: this figure is stored in the notebook
    fig = plt.figure(figsize=(10, 4.4 * len(rounds)), layout="constrained", dpi=60)
    for sub, k in zip(fig.subfigures(len(rounds), 1, squeeze=False)[:, 0], rounds, strict=True):
        plot_round(geometry, k, fig=sub)
    return fig


class RoundExplorer:
    """A round slider over `apfs_experiments.geometry_run`; `.widget` is the box to display."""

    def __init__(self, geometry: Mapping[str, Any]) -> None:
        import ipywidgets as w

        self.geometry = geometry
        rounds = len(geometry["representatives"])
        self.slider = w.IntSlider(value=0, min=0, max=rounds - 1, description="round k",
                                  continuous_update=False)
        self.out = w.Output()
        self.slider.observe(lambda _: self.redraw(), names="value")
        self.widget = with_picture(w.VBox([self.slider, self.out]),
                                   self.figure(0, dpi=PICTURE_DPI), "RoundExplorer")
        self.redraw()

    def figure(self, round_index: int, dpi: float | None = None) -> Figure:
        """`plot_round` of round `round_index` in a new figure."""
        fig = plt.figure(figsize=(10, 4.6), dpi=dpi)
        return plot_round(self.geometry, round_index, fig=fig)

    @serialized
    def redraw(self) -> None:
        with self.out:
            self.out.clear_output(wait=True)
            fig = self.figure(self.slider.value)
            from IPython.display import display

            display(fig)
            plt.close(fig)


class SweepExplorer:
    """Pick lambda or T and slide over its cached runs; `.widget` is the box to display.

    sweeps: {"strength": rows, "lifetime": rows} from `apfs_experiments.sweep`.
    """

    def __init__(self, sweeps: Mapping[str, Sequence[Mapping[str, Any]]],
                 metric: str = "recall@1") -> None:
        import ipywidgets as w

        if not sweeps or any(not rows for rows in sweeps.values()):
            raise ValueError("SweepExplorer needs at least one non-empty sweep")
        self.sweeps, self.metric = sweeps, metric
        self.parameter = w.ToggleButtons(options=list(sweeps), description="vary")
        self.value = w.SelectionSlider(options=self._values(self.parameter.value),
                                       description="value", continuous_update=False)
        self.out = w.Output()
        self.parameter.observe(self._on_parameter, names="value")
        self.value.observe(lambda _: self.redraw(), names="value")
        first = self.figure(self.parameter.value, self.value.value, dpi=PICTURE_DPI)
        self.widget = with_picture(w.VBox([self.parameter, self.value, self.out]), first,
                                   "SweepExplorer")
        self.redraw()

    def _values(self, parameter: str) -> list:
        return sorted(dict.fromkeys(r["value"] for r in self.sweeps[parameter]))

    @serialized
    def _on_parameter(self, _: Any) -> None:
        self.value.options = self._values(self.parameter.value)
        self.redraw()

    def figure(self, parameter: str, value: Any, dpi: float | None = None) -> Figure:
        """`plot_sweep` of `parameter`'s runs with `value` highlighted, in a new figure."""
        return plot_sweep(self.sweeps[parameter], self.metric, highlight=value,
                          fig=plt.figure(figsize=(10, 3.4), dpi=dpi))

    @serialized
    def redraw(self) -> None:
        with self.out:
            self.out.clear_output(wait=True)
            fig = self.figure(self.parameter.value, self.value.value)
            from IPython.display import display

            display(fig)
            plt.close(fig)
