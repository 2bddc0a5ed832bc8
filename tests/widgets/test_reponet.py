"""Widgets of notebook 01: built and driven without a front end (no training)."""

import matplotlib
import pytest
import torch

from labkit.core.train import History
from labkit.methods import reponet as rp
from labkit.widgets import reponet as wr

matplotlib.use("Agg")


def fake_run(kind="simplex", k=4, d=3, fixed=True, epochs=2):
    torch.manual_seed(0)
    directions = rp.polytope_vertices(kind, k) if fixed else torch.randn(k, d)
    labels = torch.arange(k).repeat(10)
    features = 2 * directions[labels] + 0.1 * torch.randn(len(labels), d)
    history = History()
    for e in range(epochs + 1):
        history.snapshots.append(features * (e + 1))
        history.snapshot_epochs.append(e)
        if e:
            history.epochs.append({"epoch": e, "loss": 1.0 / e, "time": 0.1,
                                   **rp.neural_collapse(features, labels, directions[:k], labels)})
    return {"label": f"{kind} d={d}", "accuracy": 0.9, "fixed": fixed, "directions": directions[:k],
            "test_features": features, "test_labels": labels, "probe_labels": labels,
            "history": history, "angle_to_direction": torch.rand(k) * 5}


def test_replay_switches_runs_and_frames():
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
    panel = wr.train_panel()
    controls, out = panel.children
    assert [c.description for c in controls.children][-1] == "Train"
