"""A map explorer for notebook 03: pick source, target and map method; see what survives.

`MapExplorer` holds the controls (dropdowns and sliders) and redraws `map_figure`
(labkit.viz.interchange), its static counterpart, on every change: fitting a map on cached
embeddings takes milliseconds. Its display carries a picture of its first state, so a stored
notebook shows a figure without a kernel; `labkit.viz.interchange.map_slider` is the
kernel-free version over a fixed grid.
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt

from labkit.methods.interchange_analysis import MAP_METHODS, MapView
from labkit.methods.interchange_experiments import Zoo
from labkit.viz.interchange import map_figure
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized

__all__ = ["MapExplorer", "map_explorer"]


class MapExplorer:
    """ipywidgets front-end of `map_figure`: `.widget` to display, `.update()` to redraw;
    `.view` is the drawn state (`MapView`, None when the chosen map cannot be built)."""

    def __init__(self, zoo: Zoo, src: str | None = None, dst: str | None = None) -> None:
        import ipywidgets as w

        names = zoo.names + [m.name for m in zoo.extras.values()]
        self.zoo = zoo
        self.src = w.Dropdown(options=names, value=src or names[0], description="source A")
        self.dst = w.Dropdown(options=names, value=dst or names[min(2, len(names) - 1)],
                              description="target B")
        self.method = w.Dropdown(options=MAP_METHODS, value="affine", description="map")
        max_rank = max(m.dim for m in zoo.members)
        self.rank = w.IntSlider(value=max_rank, min=1, max=max_rank, description="rank",
                                continuous_update=False)
        self.alpha = w.FloatLogSlider(value=1.0, base=10, min=-3, max=5, description="ridge alpha",
                                      continuous_update=False)
        n_train = len(zoo.train_labels)
        self.n_pairs = w.IntSlider(value=n_train, min=min(10, n_train), max=n_train, step=10,
                                   description="fit pairs", continuous_update=False)
        self.output = w.Output()
        self.message = w.HTML()
        self.hint = w.HTML()
        for control in (self.src, self.dst, self.method, self.rank, self.alpha, self.n_pairs):
            control.observe(lambda _change: self.update(), names="value")
        self.widget = w.VBox([w.HBox([self.src, self.dst, self.method]),
                              w.HBox([self.rank, self.alpha, self.n_pairs]), self.hint, self.message,
                              self.output])
        self.view: MapView | None = None
        self.update()
        first_state, _ = map_figure(zoo, self.src.value, self.dst.value, self.method.value,
                                    **self._options())
        with_picture(self.widget, first_state, "map explorer")

    def _enable_applicable(self) -> None:
        """Grey out the sliders the chosen map does not read, and say which ones apply."""
        method = self.method.value
        self.rank.disabled = method != "reduced_rank"
        self.alpha.disabled = method != "ridge"
        self.n_pairs.disabled = method in ("heads (closed form)", "identity")
        live = [c.description for c in (self.rank, self.alpha, self.n_pairs) if not c.disabled]
        self.hint.value = (f"<i>{method}: {', '.join(live)} apply</i>" if live else
                           f"<i>{method}: nothing to fit, so no slider applies</i>")

    def _options(self) -> dict[str, Any]:
        """The `explore_map` options the chosen map reads, from the sliders."""
        method = self.method.value
        if method in ("heads (closed form)", "identity"):
            return {}
        options: dict[str, Any] = {"n_pairs": self.n_pairs.value}
        if method == "ridge":
            options["alpha"] = self.alpha.value
        if method == "reduced_rank":
            dims = (self.zoo.member(self.src.value).dim, self.zoo.member(self.dst.value).dim)
            options["rank"] = min(self.rank.value, *dims)
        return options

    @serialized
    def update(self) -> None:
        """Re-fit the chosen map and redraw; a map that cannot be built shows why instead."""
        from IPython.display import display

        self._enable_applicable()
        self.output.clear_output(wait=True)
        try:
            fig, self.view = map_figure(self.zoo, self.src.value, self.dst.value,
                                        self.method.value, **self._options())
        except ValueError as error:
            self.view = None
            self.message.value = f"<b>cannot build this map:</b> {error}"
            return
        self.message.value = ""
        with self.output:
            display(fig)
        plt.close(fig)


def map_explorer(zoo: Zoo, src: str | None = None, dst: str | None = None) -> Any:
    """The explorer widget (display it in a notebook; without a kernel it shows its first
    state as a picture)."""
    return MapExplorer(zoo, src, dst).widget
