"""Widgets of notebook 01: built and driven without a front end, on typed runs with known
tensors; the train panel trains quick runs in its background thread."""

import matplotlib
import pytest
import torch

from labkit.core.train import History
from labkit.methods import reponet as rp
from labkit.methods import reponet_experiments as rx
from labkit.widgets import reponet as wr

matplotlib.use("Agg")


def known_run(kind="simplex", k=4, epochs=2):
    """A fixed-head `reponet_experiments.Result` with known tensors: probe features of class c
    at (e + 1)(2 w_c + noise) after epoch e."""
    torch.manual_seed(0)
    directions = rp.polytope_vertices(kind, k)[:k]
    labels = torch.arange(k).repeat(10)
    features = 2 * directions[labels] + 0.1 * torch.randn(len(labels), directions.shape[1])
    history = History(snapshots=[features * (e + 1) for e in range(epochs + 1)],
                      snapshot_epochs=list(range(epochs + 1)))
    return rx.Result(rx.Settings.for_profile(head=kind, classes=k), {"accuracy": 0.9}, history,
                     labels, features, labels, torch.zeros(k), directions,
                     rp.polytope_vertices(kind, k), 0.0, None, None, {})


def test_replay_switches_runs_and_frames(monkeypatch):
    runs = [known_run(epochs=2), known_run("orthoplex", 6, epochs=4)]
    box = wr.replay(runs)
    picker, slider = box.children[0].children
    assert slider.max == 2
    drawn = []
    figure = wr.vr.replay_figure
    monkeypatch.setattr(wr.vr, "replay_figure", lambda r, i, ax=None: drawn.append(
        (r.settings.label, i)) or figure(r, i, ax))
    picker.value = 1
    assert slider.max == 4
    slider.value = 1
    assert drawn == [("orthoplex d=3", 2), ("orthoplex d=3", 1)]
    with pytest.raises(ValueError, match="no runs"):
        wr.replay([])


def test_panel_settings(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    cube = wr.panel_settings("cube", 8, None, "softmax", 2)
    assert cube == rx.Settings.for_profile(head="cube", classes=8, epochs=2) and cube.dim == 3
    assert wr.panel_settings("simplex", 4, None, "margin", 2).margin is True
    center = wr.panel_settings("simplex", 4, 3, "center", 2)
    assert center.head == "center" and center.feat_dim == 3 and not center.margin
    assert wr.panel_settings("learned", 4, None, "softmax", 2).feat_dim == 2
    with pytest.raises(ValueError, match="d = 3"):
        wr.panel_settings("simplex", 4, 5, "softmax", 2)
    with pytest.raises(ValueError, match="margin"):
        wr.panel_settings("learned", 4, 2, "margin", 2)


def test_train_panel_builds():
    controls, view = wr.train_panel().children
    assert [c.description for c in controls.children][-2:] == ["Train", "epoch"]


def _picture(widget, name):
    import base64

    bundle = widget._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert bundle["text/plain"].startswith(f"{name}: an interactive widget")
    assert "children" not in bundle["text/plain"]
    return bundle


def test_widgets_carry_pictures_of_their_first_state(monkeypatch):
    from labkit.viz import reponet as vr

    runs = [known_run(epochs=2), known_run("orthoplex", 6)]
    shown = []
    draw = vr.replay_figure
    monkeypatch.setattr(vr, "replay_figure", lambda r, i, ax=None: shown.append(
        (r.settings.label, i)) or draw(r, i, ax))
    _picture(wr.replay(runs), "run replay")
    assert shown == [("simplex d=3", 2)] * 2  # the first run's last snapshot: widget, picture
    drawn = []
    original = vr.train_panel_figure
    monkeypatch.setattr(vr, "train_panel_figure",
                        lambda *args: drawn.append(args) or original(*args))
    panel = wr.TrainPanel()
    _picture(panel.widget, "train panel")
    assert drawn == [("simplex", 4, None)]  # the head the controls open with
    _picture(wr.train_panel(), "train panel")


def test_train_panel_streams_frames_in_the_background(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    panel = wr.TrainPanel()
    panel.classes.value, panel.epochs.value = 3, 2
    seen = []
    panel.progress.observe(lambda change: seen.append((change["new"], panel.button.disabled,
                                                       len(panel.figure.children))), names="value")
    panel.start()
    assert panel.button.disabled and panel.thread.is_alive()  # start returned while training
    panel.wait(timeout=300)
    assert not panel.thread.is_alive()
    # the figure is shown from the first epoch on, and the button stays disabled until the end
    assert seen == [(1, True, 1), (2, True, 1)]
    assert panel.live.widget.layout.title.text == "epoch 2" and len(panel.live.frames) == 2
    assert not panel.button.disabled and "test accuracy" in panel.status.value
    assert isinstance(panel.result, rx.Result) and 0.0 <= panel.result.metrics["accuracy"] <= 1.0
    assert panel.result.settings == wr.panel_settings("simplex", 3, None, "softmax", 2)
    # a fixed head's rays are its vertices, which training leaves where they are
    assert torch.equal(panel.live.directions, rp.polytope_vertices("simplex", 3))
    assert torch.equal(panel.live.directions, panel.result.directions)
    panel.kind.value = "learned"
    panel.start()
    panel.wait(timeout=300)
    assert panel.live.directions is None  # no rays for a head that moves


def test_train_panel_reports_an_impossible_setting():
    panel = wr.TrainPanel()
    panel.kind.value, panel.loss.value = "learned", "margin"
    panel.start()
    assert panel.thread is None and "impossible setting" in panel.status.value
    assert not panel.button.disabled
