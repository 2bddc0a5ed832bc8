"""Widgets for notebook 01: replay recorded runs (run picker + epoch slider) and a
"train with these settings" panel that streams the probe features live (plotly FigureWidget).

Both hold controls and redraw wiring only: the replay draws with `labkit.viz.reponet.replay_figure`
and the panel's first state is `labkit.viz.reponet.train_panel_figure`; each carries a picture
of its first state (`labkit.widgets.picture.with_picture`). The kernel-free counterparts of the
replay are `labkit.viz.reponet.replay_slider` and `polytope_replay_slider`."""

from __future__ import annotations

import html
import threading
from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt

from labkit.methods import reponet as rp
from labkit.methods import reponet_experiments as rx
from labkit.viz import reponet as vr
from labkit.widgets.live import LiveScatter
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized


def replay(results: Sequence[rx.Result]):
    """A run picker and an epoch slider over the recorded snapshots (instant: no training); it
    opens on the first run's last snapshot, which its picture shows."""
    import ipywidgets as widgets

    if not results:
        raise ValueError("no runs to replay")
    picker = widgets.Dropdown(options=[(r.settings.label, i) for i, r in enumerate(results)],
                              description="run")
    last = len(results[0].history.snapshots) - 1
    slider = widgets.IntSlider(min=0, max=last, value=last, description="snapshot",
                               continuous_update=False)
    out = widgets.Output()

    @serialized
    def draw(*_: Any) -> None:
        result = results[picker.value]
        slider.max = len(result.history.snapshots) - 1
        with out:
            out.clear_output(wait=True)
            vr.replay_figure(result, min(slider.value, slider.max))
            plt.show()

    picker.observe(draw, names="value")
    slider.observe(draw, names="value")
    draw()
    box = widgets.VBox([widgets.HBox([picker, slider]), out])
    return with_picture(box, vr.replay_figure(results[0], slider.value).figure, "run replay")


def panel_settings(kind: str, classes: int, feat_dim: int | None, loss: str,
                   epochs: int) -> rx.Settings:
    """The run settings behind the panel's controls (on the active profile); loss in
    {"softmax", "margin", "center"}; feat_dim None: the fixed head's own (2 for learned ones)."""
    if loss not in ("softmax", "margin", "center"):
        raise ValueError(f"loss must be 'softmax', 'margin' or 'center', got {loss!r}")
    if loss == "center" or kind == "learned":
        if loss == "margin":
            raise ValueError("the angular margin needs a fixed polytope")
        return rx.Settings.for_profile(head="center" if loss == "center" else "learned",
                                       classes=classes, feat_dim=feat_dim or 2, epochs=epochs)
    return rx.Settings.for_profile(head=kind, classes=classes, feat_dim=feat_dim,
                                   margin=loss == "margin", epochs=epochs)


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
        self.result: rx.Result | None = None
        self.settings: rx.Settings | None = None
        self.thread: threading.Thread | None = None
        self.button.on_click(self.start)
        controls = widgets.VBox([self.kind, self.classes, self.feat_dim, self.loss, self.epochs,
                                 self.button, self.progress])
        self.widget = widgets.HBox([controls, widgets.VBox([self.status, self.figure])])
        with_picture(self.widget, vr.train_panel_figure(self.kind.value, self.classes.value,
                                                        self.feat_dim.value or None), "train panel")

    @serialized  # two clicks arriving on two kernel threads start one run
    def start(self, _: Any = None) -> None:
        """Begin a run with the current settings, in a background thread."""
        if self.thread is not None and self.thread.is_alive():
            return
        try:
            settings = panel_settings(self.kind.value, self.classes.value,
                                      self.feat_dim.value or None, self.loss.value,
                                      self.epochs.value)
        except ValueError as error:
            self.status.value = f"<b>impossible setting:</b> {html.escape(str(error))}"
            return
        self.button.disabled = True
        self.progress.max, self.progress.value = settings.epochs, 0
        self.progress.layout.visibility = "visible"
        self.figure.children = ()
        self.result = None
        self.status.value = (f"training {html.escape(settings.label)} on {settings.num_classes} "
                             f"classes: epoch 0/{settings.epochs} ...")
        self.thread = threading.Thread(target=self._run, args=(settings,), daemon=True)
        self.thread.start()

    def wait(self, timeout: float | None = None) -> None:
        """Block until the current run ends (for scripts and tests)."""
        if self.thread is not None:
            self.thread.join(timeout)

    def on_epoch_end(self, state: Any) -> None:
        if self.live.widget is None and self.settings.fixed:
            # rays only for fixed vertices: a learned head's would go stale as it trains
            self.live.directions = rp.class_directions(state.model.head)
        self.live.on_epoch_end(state)
        if not self.figure.children and self.live.widget is not None:
            self.figure.children = (self.live.widget,)
        self.progress.value = state.epoch
        self.status.value = f"training: epoch {state.epoch}/{self.progress.max} ..."

    def _run(self, settings: rx.Settings) -> None:
        try:
            _, _, probe = rx.load_data(settings)
            self.settings = settings
            self.live = LiveScatter(probe.images, probe.labels)
            self.result = rx.EXPERIMENT.train(settings, progress=False, callbacks=[self])
            self.status.value = (
                f"{html.escape(settings.label)}: test accuracy "
                f"{100 * self.result.metrics['accuracy']:.1f}%, max angle of a class mean to its "
                f"direction {float(self.result.angle_to_direction.max()):.1f}°")
        except Exception as error:  # a thread's exception would otherwise vanish
            self.status.value = f"<b>training failed:</b> {html.escape(repr(error))}"
            raise
        finally:
            self.button.disabled = False
            self.progress.layout.visibility = "hidden"


def train_panel():
    """The "train with these settings" panel (see `TrainPanel`), ready to display."""
    return TrainPanel().widget
