"""Tests for labkit.methods.gsp_experiments: settings, a tiny quick-profile run, the contract."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.methods import gsp
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


def test_settings_profiles_and_checks(quick):
    s = gx.Settings.for_profile(loss="proxy_anchor", seed=3)
    assert s.transport_gamma == 0.5 and s.pooling_mu == 0.3 and s.seed == 3 and s.epochs == 1
    assert gx.Settings.for_profile("lab").epochs == 2
    assert gx.Settings.for_profile("full").dataset == "cifar100"
    assert s.replace(loss="triplet").transport_gamma == 5.0  # gamma follows the loss
    assert gx.Settings(variant="gap").pooling_mu == 1.0
    assert gx.Settings(widths=[8, 16, 32]) == gx.Settings()  # TOML lists equal tuples
    with pytest.raises(ValueError, match="variant"):
        gx.Settings(variant="gem")
    with pytest.raises(ValueError, match="loss"):
        gx.Settings(loss="arcface")
    with pytest.raises(ValueError, match="unknown settings .*mu_"):
        gx.Settings.build(mu_=0.5)
    for name in gx.LOSSES:
        loss = gx.dml_loss(name, 5, 8)
        emb = torch.nn.functional.normalize(torch.randn(16, 8), dim=1)
        assert torch.isfinite(loss(emb, torch.arange(4).repeat_interleave(4)))
    with pytest.raises(ValueError, match="unknown loss"):
        gx.dml_loss("center", 5, 8)


def test_quick_runs_train_evaluate_and_cache(quick):
    settings = gx.Settings.for_profile(variant="gsp+zsr")
    res = gx.run(settings)
    assert isinstance(res, gx.Result) and res.settings == settings
    m = res.metrics
    for key in ("recall@1", "recall@8", "map@r", "nmi"):
        assert 0.0 <= m[key] <= 1.0
    assert m["recall@1"] <= m["recall@2"] <= m["recall@4"] <= m["recall@8"]
    assert len(res.history) == 1 and math.isfinite(res.history[0]["loss"])
    assert list(quick.rglob("*.pt"))  # cached
    model = res.model()
    assert isinstance(model.neck, GSP) and model.neck.mu == 0.3 and bool(model.neck.initialized)
    gap_model = gx.run(settings.replace(variant="gap")).model()
    assert gap_model.neck.mu == 1.0
    x = torch.rand(6, 1, 28, 28)
    w = gsp.weight_maps(model, x)
    assert w.shape == (6, 7, 7)
    torch.testing.assert_close(w.flatten(1).mean(1), torch.ones(6))
    img = torch.zeros(2, 1, 28, 28)
    img[:, :, 8:20, 8:20] = 1.0
    ink, back = gsp.foreground_weight_share(model, img)
    assert 0 <= ink <= 1 / 0.3 and 0 <= back <= 1 / 0.3
    masks = torch.zeros(2, 1, 28, 28, dtype=torch.bool)
    masks[:, :, 8:20, 8:20] = True
    share, chance = gsp.mass_on_object(gap_model, img, masks)  # GAP weighs every cell alike
    torch.testing.assert_close(share, chance)
    torch.testing.assert_close(chance, torch.full((2,), 144 / 784))
    share, _ = gsp.mass_on_object(model, img, masks)
    assert ((0 <= share) & (share <= 1)).all()
    # a cached result comes back identical, without training
    assert gx.run(settings).metrics == m


def test_sweep_summary_table_claims(quick):
    results = gx.sweep(variant=("gap", "gsp"), seed=(0,), progress=False)
    assert [r.settings.variant for r in results] == ["gap", "gsp"]
    summary = gx.summary(results)
    assert summary.by == ("loss", "variant")
    assert set(summary.stats) == {("contrastive", "gap"), ("contrastive", "gsp")}
    text = gx.table(summary)
    assert "contrastive" in text and "recall@1" in text
    gain = gx.claims(summary)["gsp > gap"]["contrastive"]
    expected = results[1].metrics["recall@1"] - results[0].metrics["recall@1"]
    assert gain.seeds == 1 and gain.gain == pytest.approx(expected)
    assert [r.settings.variant for r in gx.sweep(progress=False)] == list(gx.VARIANTS)


def test_toy_and_identities():
    feats, protos, weights = gsp.toy_transport_example()
    assert feats.shape == (48, 2) and protos.shape == (2, 2)
    torch.testing.assert_close(weights[1.0], torch.ones(48, dtype=weights[1.0].dtype))
    assert weights[0.25][:12].mean() > 2 * weights[0.25][12:].mean()  # objects kept
    assert all(gsp.identity_checks().values())
