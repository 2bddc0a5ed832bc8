"""Tests for labkit.methods.gsp_experiments: samplers, configs, a tiny quick-profile run."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.methods import gsp_experiments as gx
from labkit.methods.gsp import GSP


@pytest.fixture(scope="module")
def _cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("gsp_runs")  # shared: later tests reuse earlier runs


@pytest.fixture
def quick(monkeypatch, _cache_dir):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_CACHE", str(_cache_dir))
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    return _cache_dir


def test_configs_and_losses(quick):
    cfg = gx.run_config("proxy_anchor", "gsp", seed=3)
    assert cfg["gamma"] == 0.5 and cfg["mu"] == 0.3 and cfg["seed"] == 3
    assert gx.run_config("triplet", "gap")["gamma"] == 5.0
    with pytest.raises(ValueError, match="variant"):
        gx.run_config("triplet", "gem")
    with pytest.raises(ValueError, match="loss"):
        gx.run_config("arcface", "gap")
    with pytest.raises(ValueError, match="unknown config keys"):
        gx.run_config("triplet", "gap", mu_=0.5)
    for name in gx.LOSSES:
        loss = gx.dml_loss(name, 5, 8)
        emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
        assert torch.isfinite(loss(emb, torch.arange(4).repeat_interleave(4)))
    with pytest.raises(ValueError, match="unknown loss"):
        gx.dml_loss("center", 5, 8)


def test_quick_runs_train_evaluate_and_cache(quick):
    res = gx.run("contrastive", "gsp+zsr", seed=0)
    m = res["metrics"]
    for key in ("recall@1", "recall@8", "map@r", "nmi"):
        assert 0.0 <= m[key] <= 1.0
    assert m["recall@1"] <= m["recall@2"] <= m["recall@4"] <= m["recall@8"]
    assert len(res["history"]) == 1 and math.isfinite(res["history"][0]["loss"])
    assert list(quick.rglob("*.pt"))  # cached
    model = gx.load_model(res)
    assert isinstance(model.neck, GSP) and model.neck.mu == 0.3 and bool(model.neck.initialized)
    gap = gx.load_model(gx.run("contrastive", "gap", seed=0))
    assert gap.neck.mu == 1.0
    x = torch.rand(6, 1, 28, 28)
    w = gx.weight_maps(model, x)
    assert w.shape == (6, 7, 7)
    torch.testing.assert_close(w.flatten(1).mean(1), torch.ones(6))
    img = torch.zeros(2, 1, 28, 28)
    img[:, :, 8:20, 8:20] = 1.0
    ink, back = gx.foreground_weight_share(model, img)
    assert 0 <= ink <= 1 / 0.3 and 0 <= back <= 1 / 0.3
    # a cached result comes back identical, without training
    again = gx.run("contrastive", "gsp+zsr", seed=0)
    assert again["metrics"] == m


def test_compare_summarise_format(quick):
    results = gx.compare(variants=("gap", "gsp"), progress=False)
    table = gx.summarise(results)
    assert set(table) == {"contrastive"} and set(table["contrastive"]) == {"gap", "gsp"}
    text = gx.format_table(table)
    assert "contrastive" in text and "recall@1" in text
    assert set(gx.wins(table)) == {"contrastive"}
    fake = {"l": {"gap": [{"metrics": {"recall@1": 0.5}}, {"metrics": {"recall@1": 0.7}}],
                  "gsp": [{"metrics": {"recall@1": 0.8}}, {"metrics": {"recall@1": 0.8}}]}}
    t = gx.summarise(fake, metrics=("recall@1",))
    assert t["l"]["gap"]["recall@1"][0] == pytest.approx(0.6)
    assert t["l"]["gap"]["recall@1"][1] == pytest.approx(math.sqrt(0.02))
    assert gx.wins(t) == {"l": True}


def test_toy_and_identities():
    feats, protos, weights = gx.toy_transport_example()
    assert feats.shape == (48, 2) and protos.shape == (2, 2)
    torch.testing.assert_close(weights[1.0], torch.ones(48, dtype=weights[1.0].dtype))
    assert weights[0.25][:12].mean() > 2 * weights[0.25][12:].mean()  # objects kept
    assert all(gx.identity_checks().values())
