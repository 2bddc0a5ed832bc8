"""Tests for labkit.widgets.live: the LiveScatter callback updates its FigureWidget per epoch."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.data import ArrayDataset
from labkit.core.models import FlattenLinear, Network
from labkit.core.train import fit
from labkit.widgets.live import LiveScatter


def _setup(feat_dim: int):
    torch.manual_seed(0)
    labels = torch.arange(3).repeat_interleave(8)
    images = (torch.randn(24, 4) + 3 * torch.eye(3, 4)[labels]).view(-1, 1, 2, 2)
    data = ArrayDataset(images, labels, ["a", "b", "c"])
    model = Network(nn.Identity(), FlattenLinear(4, feat_dim), nn.Linear(feat_dim, 3, bias=False))
    return model, data


def _loss(model, images, labels):
    return F.cross_entropy(model(images), labels)


def test_live_scatter_updates_over_two_epochs():
    model, data = _setup(2)
    probe, probe_labels = data.images[::2], data.labels[::2]
    live = LiveScatter(probe, probe_labels, directions=torch.eye(3, 2))
    titles = []

    class Spy:
        def on_epoch_end(self, state):
            titles.append(live.widget.layout.title.text)
            xs.append([np.array(t.x, dtype=float) for t in live.widget.data[:3]])

    xs = []
    history = fit(model, _loss, data, epochs=2, batch_size=8, lr=0.1, device="cpu", progress=False,
                  probe=probe, callbacks=[live, Spy()])
    assert isinstance(live.widget, go.FigureWidget)
    assert titles == ["epoch 1", "epoch 2"]
    assert len(live.frames) == 2 and len(live.widget.data) == 3 + 3
    for k in range(3):
        sel = probe_labels == k
        np.testing.assert_allclose(live.widget.data[k].x, live.frames[1][sel, 0].numpy(), rtol=1e-6)
        np.testing.assert_allclose(live.widget.data[k].y, live.frames[1][sel, 1].numpy(), rtol=1e-6)
    assert not np.allclose(xs[0][0], xs[1][0])  # the same widget was redrawn with new points
    # the frames are the probe embeddings recorded by fit at those epochs
    assert torch.allclose(live.frames[1], history.snapshots[2], atol=1e-6)


def test_live_scatter_every_and_projection():
    model, data = _setup(5)
    probe, probe_labels = data.images[:9], data.labels[:9]
    live = LiveScatter(probe, probe_labels, directions=torch.eye(3, 5), every=2)
    fit(model, _loss, data, epochs=3, batch_size=8, device="cpu", progress=False, callbacks=[live])
    assert len(live.frames) == 1 and live.frames[0].shape == (9, 2)  # only epoch 2, PCA to 2-D
    assert live.widget.layout.title.text == "epoch 2"
    assert len(live.widget.data) == len(torch.unique(probe_labels))  # no rays after PCA
