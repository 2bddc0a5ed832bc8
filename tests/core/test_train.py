"""Tests for labkit.core.train: the fit loop (learning, snapshots, seeding, hooks) and the cache."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import train as train_module
from labkit.core.data import ArrayDataset
from labkit.core.models import FlattenLinear, Network
from labkit.core.train import (
    History,
    cache_path,
    cached,
    config_key,
    fit,
    load_or_train,
    normalized_source,
)


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


# ----------------------------------------------------------------------------- cache


@pytest.fixture
def cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    return tmp_path


def test_cached_computes_once(cache_dir):
    calls = []

    def compute():
        calls.append(1)
        return {"value": torch.arange(3)}

    first = cached("thing", {"a": 1}, compute)
    second = cached("thing", {"a": 1}, compute)
    assert len(calls) == 1 and torch.equal(first["value"], second["value"])
    assert cache_path("thing", {"a": 1}).exists()
    assert cache_path("thing", {"a": 1}).parent == cache_dir / "thing"
    cached("thing", {"a": 2}, compute)
    assert len(calls) == 2
    cached("other", {"a": 1}, compute)
    assert len(calls) == 3


def test_config_key_is_stable():
    assert config_key("x", {"a": 1, "b": [1, 2]}) == config_key("x", {"b": [1, 2], "a": 1})
    assert config_key("x", {"a": 1}) != config_key("x", {"a": 1.5})
    assert config_key("x", {"a": 1}) != config_key("y", {"a": 1})


def test_config_key_hashes_arrays_by_content_and_refuses_functions():
    a = torch.zeros(2000)
    b = a.clone()
    b[1000] = 1.0  # str() of both tensors is the same abbreviated text
    assert str(a) == str(b)
    assert config_key("x", {"w": a}) != config_key("x", {"w": b})
    assert config_key("x", {"w": a}) == config_key("x", {"w": a.clone()})
    assert config_key("x", {"w": a}) == config_key("x", {"w": a.numpy()})
    assert config_key("x", {"t": torch.float32}) == config_key("x", {"t": torch.float32})
    with pytest.raises(TypeError, match="function"):
        config_key("x", {"f": lambda: 0})


def test_config_key_follows_the_code(monkeypatch):
    before = config_key("x", {"a": 1})
    monkeypatch.setattr(train_module, "code_fingerprint", lambda: "another")
    assert config_key("x", {"a": 1}) != before


def test_normalized_source_ignores_prose_not_code():
    code = 'def f(x):\n    """Double."""\n    return 2 * x  # why\n'
    prose = 'def f(x):\n    """Twice x, reworded."""\n\n    return 2 * x\n'
    changed = 'def f(x):\n    """Double."""\n    return 3 * x\n'
    assert normalized_source(code) == normalized_source(prose)
    assert normalized_source(code) != normalized_source(changed)
    assert normalized_source('"""Module."""\nX = 1\n') == normalized_source("X = 1\n")


def test_corrupt_cache_entry_is_recomputed(cache_dir):
    path = cache_path("thing", {"a": 1})
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x00garbage\xff not a torch file")
    calls = []
    with pytest.warns(UserWarning, match="unreadable"):
        result = cached("thing", {"a": 1}, lambda: calls.append(1) or 42)
    assert result == 42 and calls == [1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cached("thing", {"a": 1}, lambda: 0) == 42


def test_load_or_train_uses_cache(cache_dir):
    ds = blobs()
    trained = []

    def run(model):
        trained.append(1)
        return fit(model, ce, ds, epochs=2, probe=ds.images[:4], **FIT)

    cfg = {"seed": 5, "epochs": 2}
    model_a, history_a = load_or_train("tiny", cfg, lambda: tiny_net(seed=99), run)
    model_b, history_b = load_or_train("tiny", cfg, lambda: tiny_net(seed=99), run)
    assert trained == [1]
    assert not model_b.training
    for (ka, va), (kb, vb) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    assert isinstance(history_b, History)
    assert history_b.metric("loss") == history_a.metric("loss")
    assert torch.equal(history_b.snapshots[-1], history_a.snapshots[-1])
    assert any(not torch.equal(p, q) for p, q in zip(model_b.parameters(), tiny_net(99).parameters(),
                                                      strict=True))


def test_an_interrupted_run_is_returned_but_not_cached(cache_dir):
    ds = blobs()
    calls = []

    class Stop:
        def on_epoch_end(self, state):
            if state.epoch == 1 and len(calls) == 1:  # only the first training is stopped
                raise KeyboardInterrupt

    def run(model):
        calls.append(1)
        return fit(model, ce, ds, epochs=2, callbacks=[Stop()], **FIT)

    cfg = {"seed": 1, "epochs": 2}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, first = load_or_train("tiny", cfg, lambda: tiny_net(seed=1), run)
    messages = [str(w.message) for w in caught]
    assert any("interrupted at epoch 1" in m for m in messages)
    assert any("not cached" in m for m in messages)
    assert first.interrupted and not cache_path("tiny", cfg).exists()
    _, second = load_or_train("tiny", cfg, lambda: tiny_net(seed=1), run)  # trains again
    assert calls == [1, 1] and not second.interrupted and len(second.epochs) == 2
    assert cache_path("tiny", cfg).exists()


def test_load_or_train_retrains_stale_entry(cache_dir):
    ds = blobs()
    cfg = {"seed": 0}
    cached("tiny", cfg, lambda: {"state_dict": {"wrong": torch.zeros(1)}, "history": History()})
    trained = []

    def run(model):
        trained.append(1)
        return fit(model, ce, ds, epochs=1, **FIT)

    with pytest.warns(UserWarning, match="do not fit"):
        model, history = load_or_train("tiny", cfg, tiny_net, run)
    assert trained == [1] and len(history.epochs) == 1
    _, again = load_or_train("tiny", cfg, tiny_net, run)
    assert trained == [1] and again.metric("loss") == history.metric("loss")
