"""Widgets of notebook 01: built and driven without a front end (no training)."""

import matplotlib
import pytest
import torch

from labkit.methods import reponet_experiments as rx
from labkit.widgets import reponet as wr

matplotlib.use("Agg")


def test_replay_switches_runs_and_frames(fake_run):
    runs = [fake_run(epochs=2), fake_run("orthoplex", 6, 3, epochs=4)]
    box = wr.replay(runs)
    picker, slider = box.children[0].children
    assert slider.max == 2
    picker.value = 1
    assert slider.max == 4
    slider.value = 1  # redraws without error
    with pytest.raises(ValueError, match="no runs"):
        wr.replay([])


def test_settings_config(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    assert wr.settings_config("cube", 8, None, "softmax", 2)["feat_dim"] == 3
    assert wr.settings_config("simplex", 4, None, "margin", 2)["margin"] is True
    center = wr.settings_config("simplex", 4, 3, "center", 2)
    assert center["head"] == "center" and center["feat_dim"] == 3
    assert wr.settings_config("learned", 4, None, "softmax", 2)["feat_dim"] == 2
    with pytest.raises(ValueError, match="d = 3"):
        wr.settings_config("simplex", 4, 5, "softmax", 2)
    with pytest.raises(ValueError, match="margin"):
        wr.settings_config("learned", 4, 2, "margin", 2)


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


def test_widgets_carry_pictures_of_their_first_state(fake_run, monkeypatch):
    from labkit.viz import reponet as vr

    runs = [fake_run(epochs=2), fake_run("orthoplex", 6, 3)]
    shown = []
    draw = wr.draw_snapshot
    monkeypatch.setattr(wr, "draw_snapshot", lambda r, i, ax=None: shown.append((r["label"], i))
                        or draw(r, i, ax))
    _picture(wr.replay(runs), "run replay")
    assert shown == [("simplex d=3", 2)] * 2  # the first run's last snapshot: widget, picture
    drawn = []
    original = vr.head_preview
    monkeypatch.setattr(vr, "head_preview", lambda *args: drawn.append(args) or original(*args))
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
    assert 0.0 <= panel.result["accuracy"] <= 1.0
    # a fixed head's rays are its vertices, which training leaves where they are
    assert torch.equal(panel.live.directions, rx.class_directions(panel.result["model"]))
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
