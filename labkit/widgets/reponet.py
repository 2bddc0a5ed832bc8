"""Widgets for notebook 01: replay recorded runs (run picker + epoch slider) and a
"train with these settings" panel that streams the probe features live (plotly FigureWidget)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt

from labkit.methods import reponet_experiments as rx
from labkit.viz import reponet as vr
from labkit.viz.features import scatter_features
from labkit.widgets.live import LiveScatter


def draw_snapshot(result: dict[str, Any], index: int, ax=None):
    """Probe features of `result` at snapshot `index`, with its class directions."""
    history = result["history"]
    feats, directions = vr._to_display(history.snapshots[index], result["directions"])
    if ax is None:
        fig = plt.figure(figsize=(4.2, 4.2))
        ax = fig.add_subplot(projection="3d" if feats.shape[1] == 3 else None)
    return scatter_features(feats, result["probe_labels"], directions=directions, ax=ax, legend=False,
                            title=f"{result['label']}, epoch {history.snapshot_epochs[index]}")


def replay(results: Sequence[dict[str, Any]]):
    """A run picker and an epoch slider over the recorded snapshots (instant: no training)."""
    import ipywidgets as widgets

    if not results:
        raise ValueError("no runs to replay")
    picker = widgets.Dropdown(options=[(r["label"], i) for i, r in enumerate(results)],
                              description="run")
    slider = widgets.IntSlider(min=0, max=len(results[0]["history"].snapshots) - 1,
                               value=len(results[0]["history"].snapshots) - 1, description="snapshot",
                               continuous_update=False)
    out = widgets.Output()

    def draw(*_: Any) -> None:
        result = results[picker.value]
        slider.max = len(result["history"].snapshots) - 1
        with out:
            out.clear_output(wait=True)
            draw_snapshot(result, min(slider.value, slider.max))
            plt.show()

    picker.observe(draw, names="value")
    slider.observe(draw, names="value")
    draw()
    return widgets.VBox([widgets.HBox([picker, slider]), out])


class _ShowWhenReady:
    """Displays the LiveScatter's FigureWidget in `out` once its first frame exists."""

    def __init__(self, live: LiveScatter, out: Any) -> None:
        self.live, self.out, self.shown = live, out, False

    def on_epoch_end(self, state: Any) -> None:
        self.live.on_epoch_end(state)
        if not self.shown and self.live.widget is not None:
            from IPython.display import display

            with self.out:
                display(self.live.widget)
            self.shown = True


def settings_config(kind: str, classes: int, feat_dim: int | None, loss: str, epochs: int) -> dict[str, Any]:
    """The run config behind the panel's controls; loss in {"softmax", "margin", "center"}."""
    if loss not in ("softmax", "margin", "center"):
        raise ValueError(f"loss must be 'softmax', 'margin' or 'center', got {loss!r}")
    if loss == "center" or kind == "learned":
        head = "center" if loss == "center" else "learned"
        if loss == "margin":
            raise ValueError("the angular margin needs a fixed polytope")
        return rx.run_config(head, classes=classes, feat_dim=feat_dim or 2, epochs=epochs)
    return rx.run_config(kind, classes=classes, feat_dim=feat_dim, margin=loss == "margin",
                         epochs=epochs)


def train_panel():
    """Controls (classifier, classes, feature dim, loss, epochs) and a Train button; training
    streams the probe features after each epoch and ends with test accuracy and angles."""
    import ipywidgets as widgets

    kind = widgets.Dropdown(options=["simplex", "orthoplex", "cube", "polygon", "learned", "hadamard"],
                            value="simplex", description="classifier")
    classes = widgets.IntSlider(value=4, min=2, max=10, description="classes")
    feat_dim = widgets.IntText(value=0, description="d (0=auto)")
    loss = widgets.ToggleButtons(options=["softmax", "margin", "center"], value="softmax",
                                 description="loss")
    epochs = widgets.IntSlider(value=3, min=1, max=30, description="epochs")
    button = widgets.Button(description="Train", button_style="primary")
    out = widgets.Output()

    def start(_: Any) -> None:
        out.clear_output()
        with out:
            try:
                cfg = settings_config(kind.value, classes.value, feat_dim.value or None, loss.value,
                                      epochs.value)
            except ValueError as error:
                print(f"impossible setting: {error}")
                return
            _, _, probe = rx.load_data(cfg)
            model = rx.build_model(cfg)
            live = LiveScatter(probe.images, probe.labels, directions=rx.class_directions(model))
            print(f"training {rx.label(cfg)} on {len(cfg['classes'])} classes ...")
        result = rx.train(cfg, callbacks=[_ShowWhenReady(live, out)], progress=False)
        with out:
            print(f"test accuracy {100 * result['accuracy']:.1f}%, max angle of a class mean to its "
                  f"direction {float(result['angle_to_direction'].max()):.1f}°")

    button.on_click(start)
    controls = widgets.VBox([kind, classes, feat_dim, loss, epochs, button])
    return widgets.HBox([controls, out])
