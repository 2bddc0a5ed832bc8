"""Tests for labkit.core.cache: keys, corrupt and stale entries, interrupted runs."""

from __future__ import annotations

import warnings

import pytest
import torch

from labkit.core import cache as cache_module
from labkit.core.cache import cache_path, cached, config_key, load_or_train, normalized_source
from labkit.core.data import ArrayDataset
from labkit.core.models import FlattenLinear, Network
from labkit.core.train import History, fit

FIT = {"device": "cpu", "progress": False, "lr": 0.05, "batch_size": 8}


def blobs() -> ArrayDataset:
    """Two classes of 16 noisy points in 4-D, as (N, 1, 2, 2) images."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2).repeat_interleave(16)
    points = (2.0 * labels - 1.0)[:, None] + 0.3 * torch.randn(32, 4, generator=g)
    return ArrayDataset(points.view(-1, 1, 2, 2), labels, ["a", "b"], "blobs")


def tiny_net(seed: int = 0) -> Network:
    torch.manual_seed(seed)
    return Network(torch.nn.Identity(), FlattenLinear(4, 2), torch.nn.Linear(2, 2, bias=False))


def ce(model, images, labels):
    return torch.nn.functional.cross_entropy(model(images), labels)


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
    monkeypatch.setattr(cache_module, "code_fingerprint", lambda: "another")
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
