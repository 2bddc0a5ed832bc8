"""Interactive APFS: a slider over rounds of the 2-D feasible-set run, and a slider over cached
runs with different proximal strengths lambda or lifetimes T. Both only re-draw recorded results
(instant) with their static counterparts `labkit.viz.apfs.round_figure` and `sweep_figure`, and
carry a picture of their first state for stored notebooks. Kernel-free counterparts:
`labkit.viz.apfs.round_slider` and `sweep_slider`. The method: docs/methods/apfs.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from matplotlib.figure import Figure

from labkit.viz.apfs import round_figure, sweep_figure
from labkit.widgets.picture import show_figure, with_picture
from labkit.widgets.sync import serialized

if TYPE_CHECKING:
    from labkit.methods.apfs import GeometryResult
    from labkit.methods.apfs_experiments import Result

PICTURE_DPI = 72  # the first-state picture is stored in the notebook: keep it small


class RoundExplorer:
    """A round slider over `labkit.methods.apfs.geometry_run`; `.widget` is the box to display."""

    def __init__(self, geometry: GeometryResult) -> None:
        import ipywidgets as w

        self.geometry = geometry
        rounds = len(geometry.representatives)
        self.slider = w.IntSlider(value=0, min=0, max=rounds - 1, description="round k",
                                  continuous_update=False)
        self.out = w.Output()
        self.slider.observe(lambda _: self.redraw(), names="value")
        self.widget = with_picture(w.VBox([self.slider, self.out]),
                                   self.figure(0, dpi=PICTURE_DPI), "RoundExplorer")
        self.redraw()

    def figure(self, round_index: int, dpi: float | None = None) -> Figure:
        """`labkit.viz.apfs.round_figure` of round `round_index`."""
        return round_figure(self.geometry, round_index, dpi=dpi)

    @serialized
    def redraw(self) -> None:
        show_figure(self.out, self.figure(self.slider.value))


class SweepExplorer:
    """Pick lambda or T and slide over its cached runs; `.widget` is the box to display.

    sweeps: {"strength": results, "lifetime": results}, each from `apfs_experiments.sweep`.
    """

    def __init__(self, sweeps: Mapping[str, Sequence[Result]], metric: str = "recall@1") -> None:
        import ipywidgets as w

        if not sweeps or any(not results for results in sweeps.values()):
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
        return sorted(dict.fromkeys(getattr(r.settings, parameter)
                                    for r in self.sweeps[parameter]))

    @serialized
    def _on_parameter(self, _: Any) -> None:
        self.value.options = self._values(self.parameter.value)
        self.redraw()

    def figure(self, parameter: str, value: Any, dpi: float | None = None) -> Figure:
        """`labkit.viz.apfs.sweep_figure` of `parameter`'s runs with `value` highlighted."""
        return sweep_figure(self.sweeps, parameter, value, self.metric, dpi=dpi)

    @serialized
    def redraw(self) -> None:
        show_figure(self.out, self.figure(self.parameter.value, self.value.value))
