"""Tests for labkit.widgets.replay: static snapshot figures and the epoch slider."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.core.train import History  # noqa: E402
from labkit.widgets import replay  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _history(dim: int = 2) -> tuple[History, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    snapshots = [torch.randn(9, dim, generator=g) * (i + 1) for i in range(3)]
    return History(snapshots=snapshots, snapshot_epochs=[0, 2, 4]), torch.arange(3).repeat(3)


def test_snapshot_figure():
    history, labels = _history()
    ax = replay.snapshot_figure(history, labels, 1, directions=torch.eye(2))
    assert ax.get_title() == "epoch 2" and len(ax.lines) == 2
    offsets = np.concatenate([c.get_offsets() for c in ax.collections[:3]])
    expected = np.concatenate([history.snapshots[1][labels == k].numpy() for k in range(3)])
    np.testing.assert_allclose(offsets, expected, rtol=1e-6)


def test_snapshot_figure_projects_high_dim():
    history, labels = _history(dim=5)
    ax = replay.snapshot_figure(history, labels, -1, directions=torch.eye(5))
    assert ax.get_title() == "epoch 4" and len(ax.lines) == 0  # directions dropped after PCA
    assert ax.collections[0].get_offsets().shape[1] == 2


def test_no_snapshots():
    with pytest.raises(ValueError, match="probe"):
        replay.snapshot_figure(History(), torch.zeros(1), 0)
    with pytest.raises(ValueError, match="probe"):
        replay.snapshot_player(History(), torch.zeros(1))


def test_snapshot_player_redraws_on_slider_change(monkeypatch):
    import ipywidgets as widgets

    history, labels = _history(dim=3)
    drawn = []
    original = replay.snapshot_figure

    def spy(history, labels, index, **kwargs):
        drawn.append(index)
        return original(history, labels, index, **kwargs)

    monkeypatch.setattr(replay, "snapshot_figure", spy)
    box = replay.snapshot_player(history, labels)
    assert isinstance(box, widgets.VBox)
    slider, out = box.children
    assert isinstance(out, widgets.Output)
    assert [label for label, _ in slider.options] == ["0", "2", "4"]
    # the last epoch is drawn first, for the widget and for its picture
    assert drawn == [2, 2] and slider.label == "4"
    slider.value = 0
    assert drawn == [2, 2, 0] and slider.label == "0"
    slider.value = 1
    assert drawn == [2, 2, 0, 1]


def test_snapshot_player_carries_a_picture_of_its_first_state():
    import base64

    history, labels = _history()
    before = plt.get_fignums()
    bundle = replay.snapshot_player(history, labels)._repr_mimebundle_()
    assert base64.b64decode(bundle["image/png"]).startswith(b"\x89PNG")
    assert bundle["text/plain"].startswith("epoch replay: an interactive widget")
    assert "VBox" not in bundle["text/plain"]
    # the picture's figure is closed (the widget's own goes to its Output)
    assert len(plt.get_fignums()) <= len(before) + 1
