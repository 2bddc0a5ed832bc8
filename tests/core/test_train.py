"""Tests for labkit.core.train: the fit loop (learning, snapshots, seeding, hooks)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import train as train_module
from labkit.core.data import ArrayDataset
from labkit.core.models import FlattenLinear, Network
from labkit.core.train import fit


def blobs(n_per_class: int = 32, seed: int = 0) -> ArrayDataset:
    """Two well-separated Gaussian blobs in 4-D, shaped as (N, 1, 2, 2) images."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[2.0, 2.0, -2.0, 0.0], [-2.0, -2.0, 2.0, 0.0]])
    labels = torch.arange(2).repeat_interleave(n_per_class)
    points = centres[labels] + 0.5 * torch.randn(len(labels), 4, generator=g)
    return ArrayDataset(points.view(-1, 1, 2, 2), labels, ["a", "b"], "blobs")


def tiny_net(seed: int = 0) -> Network:
    torch.manual_seed(seed)
    return Network(nn.Identity(), FlattenLinear(4, 2), nn.Linear(2, 2, bias=False))


def ce(model, images, labels):
    return F.cross_entropy(model(images), labels)


FIT = {"device": "cpu", "progress": False, "lr": 0.05, "batch_size": 16}


def _accuracy(model, ds):
    with torch.no_grad():
        return float((model(ds.images).argmax(1) == ds.labels).float().mean())


def test_fit_learns_separable_problem():
    ds = blobs()
    model = tiny_net()
    with torch.no_grad():
        before = float(ce(model, ds.images, ds.labels))
    history = fit(model, ce, ds, epochs=6, **FIT)
    losses = history.metric("loss")
    assert len(losses) == 6 and [row["epoch"] for row in history.epochs] == list(range(1, 7))
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        assert float(ce(model, ds.images, ds.labels)) < 0.25 * before
    assert _accuracy(model, ds) >= 0.95
    assert not model.training  # fit leaves the model in eval mode
    assert history.last == history.epochs[-1] and not history.interrupted


def test_snapshots_recorded_each_epoch():
    ds = blobs()
    probe = ds.images[::8]
    model = tiny_net()
    history = fit(model, ce, ds, epochs=3, probe=probe, **FIT)
    assert history.snapshot_epochs == [0, 1, 2, 3]
    assert all(s.shape == (len(probe), 2) and s.dtype == torch.float32 for s in history.snapshots)
    assert not torch.equal(history.snapshots[0], history.snapshots[-1])
    with torch.no_grad():
        assert torch.allclose(history.snapshots[-1], model.embed(probe), atol=1e-6)
    sparse = fit(tiny_net(), ce, ds, epochs=3, probe=probe, snapshot_every=2, **FIT)
    assert sparse.snapshot_epochs == [0, 2, 3]


def test_initial_snapshot_is_untrained_embedding():
    ds = blobs()
    model = tiny_net()
    with torch.no_grad():
        initial = model.embed(ds.images[:5])
    history = fit(model, ce, ds, epochs=1, probe=ds.images[:5], **FIT)
    assert torch.allclose(history.snapshots[0], initial)


def test_same_seed_same_weights():
    ds = blobs()
    a, b, c = tiny_net(), tiny_net(), tiny_net()
    fit(a, ce, ds, epochs=2, seed=3, **FIT)
    fit(b, ce, ds, epochs=2, seed=3, **FIT)
    fit(c, ce, ds, epochs=2, seed=4, **FIT)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))


class Recorder:
    def __init__(self):
        self.steps, self.epochs, self.losses, self.lrs = [], [], [], []

    def on_step_end(self, state):
        self.steps.append(state.step)
        self.losses.append(float(state.loss))

    def on_epoch_end(self, state):
        self.epochs.append(state.epoch)
        self.lrs.append(state.optimizer.param_groups[0]["lr"])


def test_callbacks_and_eval_fn():
    ds = blobs(n_per_class=20)  # 40 samples, batch 16, drop_last -> 2 steps per epoch
    rec = Recorder()
    modes = []

    def eval_fn(m):
        modes.append(m.training)
        return {"acc": torch.tensor(_accuracy(m, ds))}

    model = tiny_net()
    history = fit(model, ce, ds, epochs=3, callbacks=[rec], eval_fn=eval_fn, **FIT)
    assert rec.steps == [1, 2, 3, 4, 5, 6] and rec.epochs == [1, 2, 3]
    assert history.epochs[0]["loss"] == pytest.approx(sum(rec.losses[:2]) / 2, rel=1e-5)
    assert history.epochs[2]["loss"] == pytest.approx(sum(rec.losses[4:]) / 2, rel=1e-5)
    acc = history.metric("acc")
    assert len(acc) == 3 and all(isinstance(a, float) for a in acc)
    assert acc[-1] == _accuracy(model, ds)


def test_no_drop_last_counts_partial_batch():
    ds = blobs(n_per_class=20)
    rec = Recorder()
    fit(tiny_net(), ce, ds, epochs=1, callbacks=[rec], drop_last=False, **FIT)
    assert rec.steps == [1, 2, 3]


def test_batch_sampler_is_used():
    ds = blobs(n_per_class=10)
    sampler = [[0, 1, 10, 11], [5, 15], [2, 3, 4, 12]]
    seen = []

    def loss_fn(model, images, labels):
        seen.append(labels.tolist())
        return ce(model, images, labels)

    fit(tiny_net(), loss_fn, ds, epochs=2, batch_sampler=sampler, **FIT)
    assert seen == [ds.labels[b].tolist() for b in sampler] * 2


def test_keyboard_interrupt_stops_cleanly():
    ds = blobs()

    class Stop:
        def on_epoch_end(self, state):
            if state.epoch == 2:
                raise KeyboardInterrupt

    with pytest.warns(UserWarning, match="interrupted at epoch 2"):
        history = fit(tiny_net(), ce, ds, epochs=5, probe=ds.images[:4], callbacks=[Stop()], **FIT)
    assert history.interrupted
    assert [row["epoch"] for row in history.epochs] == [1, 2]
    assert history.snapshot_epochs == [0, 1, 2]


def test_schedules():
    ds = blobs(n_per_class=16)  # 2 steps per epoch
    rec = Recorder()
    fit(tiny_net(), ce, ds, epochs=4, schedule="step", milestones=[2], gamma=0.1, callbacks=[rec], **FIT)
    assert rec.lrs == pytest.approx([0.05, 0.005, 0.005, 0.005])
    rec = Recorder()
    fit(tiny_net(), ce, ds, epochs=4, schedule="cosine", callbacks=[rec], **FIT)
    assert rec.lrs[-1] == pytest.approx(0.0, abs=1e-9) and rec.lrs[1] == pytest.approx(0.025)


def test_loss_module_parameters_are_optimised():
    ds = blobs()

    class Centres(nn.Module):
        def __init__(self):
            super().__init__()
            self.centres = nn.Parameter(torch.zeros(2, 2))

        def forward(self, model, images, labels):
            emb = model.embed(images)
            return ce(model, images, labels) + ((emb - self.centres[labels]) ** 2).sum(1).mean()

    loss = Centres()
    fit(tiny_net(), loss, ds, epochs=2, optimizer="adam", **FIT)
    assert loss.centres.abs().sum() > 0


def test_side_optimizer_owns_its_parameters_outside_the_schedule():
    """A side optimiser's parameters step by its own rule only (plain SGD here), at a constant
    lr under the main optimiser's cosine schedule, and the main optimiser never touches them."""
    ds = blobs()
    centres = nn.Parameter(torch.ones(2, 2))
    steps = []

    def loss_fn(model, images, labels):
        steps.append(centres.detach().clone())
        return ce(model, images, labels) + (centres ** 2).sum()  # grad 2 c, no weight decay

    class Holder(nn.Module):  # the loss module's parameters would join the main groups
        def __init__(self):
            super().__init__()
            self.centres = centres

        def forward(self, model, images, labels):
            return loss_fn(model, images, labels)

    side = torch.optim.SGD([centres], lr=0.1)
    fit(tiny_net(), Holder(), ds, epochs=2, optimizer="adamw", weight_decay=0.5,
        schedule="cosine", side_optimizers=[side], **FIT)
    steps.append(centres.detach().clone())
    assert len(steps) == 9
    for before, after in zip(steps[:-1], steps[1:], strict=True):
        assert torch.allclose(after, before * (1 - 2 * 0.1), atol=1e-6)


@pytest.mark.parametrize("kwargs,match", [({"epochs": -1}, "epochs"),
                                          ({"epochs": 1, "batch_size": 0}, "batch_size"),
                                          ({"epochs": 1, "optimizer": "lbfgs"}, "optimizer"),
                                          ({"epochs": 1, "schedule": "linear"}, "schedule")])
def test_fit_errors(kwargs, match):
    options = {**FIT, **kwargs}
    with pytest.raises(ValueError, match=match):
        fit(tiny_net(), ce, blobs(4), **options)


def test_record_snapshot_restores_mode():
    model = tiny_net().train()
    out = train_module.record_snapshot(model, torch.rand(5, 1, 2, 2), batch_size=2)
    assert out.shape == (5, 2) and model.training
