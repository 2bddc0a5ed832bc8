"""Widgets for notebook 01: replay recorded runs (run picker + epoch slider) and a
"train with these settings" panel that streams the probe features live (plotly FigureWidget).

Each carries a picture of its first state (`labkit.widgets.picture.with_picture`); the
kernel-free counterparts of the replay are `labkit.viz.reponet.replay_slider` and
`polytope_replay_slider`."""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt

from labkit.methods import reponet_experiments as rx
from labkit.viz import reponet as vr
from labkit.viz.features import scatter_features
from labkit.widgets.live import LiveScatter
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized


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
    """A run picker and an epoch slider over the recorded snapshots (instant: no training); it
    opens on the first run's last snapshot, which its picture shows."""
    import ipywidgets as widgets

    if not results:
        raise ValueError("no runs to replay")
    picker = widgets.Dropdown(options=[(r["label"], i) for i, r in enumerate(results)],
                              description="run")
    slider = widgets.IntSlider(min=0, max=len(results[0]["history"].snapshots) - 1,
                               value=len(results[0]["history"].snapshots) - 1, description="snapshot",
                               continuous_update=False)
    out = widgets.Output()

    @serialized
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
    box = widgets.VBox([widgets.HBox([picker, slider]), out])
    return with_picture(box, draw_snapshot(results[0], slider.value).figure, "run replay")


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


class TrainPanel:
    """Controls (classifier, classes, feature dim, loss, epochs), a Train button and a live view.

    Training runs in a background thread, so the kernel keeps answering the front end: the
    probe features appear after the first epoch and are redrawn after each one, while a
    progress bar and the disabled button say that it is busy. `widget` is what to display; its
    picture shows the first state: the default head's rays in a still empty feature plot.
    """

    def __init__(self) -> None:
        import ipywidgets as widgets

        self.kind = widgets.Dropdown(options=["simplex", "orthoplex", "cube", "polygon", "learned",
                                              "hadamard"], value="simplex", description="classifier")
        self.classes = widgets.IntSlider(value=4, min=2, max=10, description="classes")
        self.feat_dim = widgets.IntText(value=0, description="d (0=auto)")
        self.loss = widgets.ToggleButtons(options=["softmax", "margin", "center"], value="softmax",
                                          description="loss")
        self.epochs = widgets.IntSlider(value=3, min=1, max=30, description="epochs")
        self.button = widgets.Button(description="Train", button_style="primary")
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="epoch",
                                            layout=widgets.Layout(visibility="hidden"))
        self.status = widgets.HTML("choose settings and press Train")
        self.figure = widgets.Box()
        self.live: LiveScatter | None = None
        self.result: dict[str, Any] | None = None
        self.config: dict[str, Any] | None = None
        self.thread: threading.Thread | None = None
        self.button.on_click(self.start)
        controls = widgets.VBox([self.kind, self.classes, self.feat_dim, self.loss, self.epochs,
                                 self.button, self.progress])
        self.widget = widgets.HBox([controls, widgets.VBox([self.status, self.figure])])
        with_picture(self.widget, vr.head_preview(self.kind.value, self.classes.value,
                                                  self.feat_dim.value or None), "train panel")

    @serialized  # two clicks arriving on two kernel threads start one run
    def start(self, _: Any = None) -> None:
        """Begin a run with the current settings, in a background thread."""
        if self.thread is not None and self.thread.is_alive():
            return
        try:
            cfg = settings_config(self.kind.value, self.classes.value, self.feat_dim.value or None,
                                  self.loss.value, self.epochs.value)
        except ValueError as error:
            self.status.value = f"<b>impossible setting:</b> {html.escape(str(error))}"
            return
        self.button.disabled = True
        self.progress.max, self.progress.value = cfg["epochs"], 0
        self.progress.layout.visibility = "visible"
        self.figure.children = ()
        self.result = None
        self.status.value = (f"training {html.escape(rx.label(cfg))} on {len(cfg['classes'])} "
                             f"classes: epoch 0/{cfg['epochs']} ...")
        self.thread = threading.Thread(target=self._run, args=(cfg,), daemon=True)
        self.thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends (for scripts and tests)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def on_epoch_end(self, state: Any) -> None:
        if self.live.widget is None and rx.is_fixed_head(self.config["head"]):
            # rays only for fixed vertices: a learned head's would go stale as it trains
            self.live.directions = rx.class_directions(state.model)
        self.live.on_epoch_end(state)
        if not self.figure.children and self.live.widget is not None:
            self.figure.children = (self.live.widget,)
        self.progress.value = state.epoch
        self.status.value = f"training: epoch {state.epoch}/{self.progress.max} ..."

    def _run(self, cfg: dict[str, Any]) -> None:
        try:
            _, _, probe = rx.load_data(cfg)
            self.config = cfg
            self.live = LiveScatter(probe.images, probe.labels)
            self.result = rx.train(cfg, callbacks=[self], progress=False)
            self.status.value = (
                f"{html.escape(rx.label(cfg))}: test accuracy {100 * self.result['accuracy']:.1f}%, "
                f"max angle of a class mean to its direction "
                f"{float(self.result['angle_to_direction'].max()):.1f}°")
        except Exception as error:  # a thread's exception would otherwise vanish
            self.status.value = f"<b>training failed:</b> {html.escape(repr(error))}"
            raise
        finally:
            self.button.disabled = False
            self.progress.layout.visibility = "hidden"


def train_panel():
    """The "train with these settings" panel (see `TrainPanel`), ready to display."""
    return TrainPanel().widget
