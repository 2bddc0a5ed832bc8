"""Tests for labkit.methods.fdl_experiments: tiny real runs, caching, summaries."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.methods import fdl
from labkit.methods import fdl_experiments as fx


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    settings = fx.sweep_settings()
    settings.update(ks=(3,), seeds=(0,), members=2, widths=(4, 8), feat_dim=8, steps=3,
                    batch_size=10, fusion_steps=2, finetune_steps=1, test_size=50, cam_size=4)
    return settings


def test_run_config_maps_zero_weights_to_the_classical_run(tiny):
    a = fx.run_config(tiny, k=3, seed=0, use_fdl=False)
    b = fx.run_config(tiny, k=3, seed=0, lambda_cos=0, lambda_euc=0)
    c = fx.run_config(tiny, k=3, seed=0)
    assert a == b and a["use_fdl"] is False and a["lambda_euc"] == 0.0
    assert c["use_fdl"] is True and (c["lambda_cos"], c["lambda_euc"]) == (1.0, 10.0)


def test_tiny_sweep_runs_caches_and_reloads(tiny, monkeypatch):
    rows = fx.fewshot_sweep(tiny, progress=False)
    assert [(r["method"], r["k"], r["seed"]) for r in rows] == [("classical", 3, 0), ("fdl", 3, 0)]
    for row in rows:
        for key in (*fx.COMBINERS, "iou_map", "empty_cam"):
            assert 0.0 <= row[key] <= 1.0
        # NaN only when no two members have a Grad-CAM region on any image
        assert 0.0 <= row["iou_cam"] <= 1.0 or (math.isnan(row["iou_cam"]) and row["empty_cam"] > 0)
        assert 0.0 <= row["s_cos"] <= 1.0 + 1e-6  # one pair of members
    # cached: a second sweep must not train
    monkeypatch.setattr(fx, "_run", lambda cfg: pytest.fail("retrained a cached run"))
    assert repr(fx.fewshot_sweep(tiny, progress=False)) == repr(rows)  # NaN-safe equality
    # the stored weights are the trained members: re-scoring them reproduces the stored numbers
    result = fx.run_fewshot(tiny, k=3, seed=0, use_fdl=True)
    ensemble = fx.load_ensemble(result)
    _, test = fx.load_split(tiny["dataset"], tiny["test_size"])
    again = fdl.ensemble_accuracies(ensemble, test.images, test.labels)
    assert again["soft_vote"] == pytest.approx(result["metrics"]["soft_vote"])
    assert again["hard_vote"] == pytest.approx(result["metrics"]["hard_vote"])
    assert len(result["log"]) >= 1 and result["log"][-1]["fdl"] > 0
    records = fx.cam_records(tiny, k=3, seed=0, images=test.images[:3])
    assert [r["lambda_euc"] for r in records] == [0.0, 10.0]
    assert records[1]["cams"].shape == (2, 3, 28, 28) and records[1]["preds"].shape == (2, 3)
    assert records[1]["maps"].shape == (2, 3, 7, 7)


def test_summaries_are_exact():
    rows = [{"method": "fdl", "k": 3, "seed": s, "soft_vote": v} for s, v in enumerate((0.5, 0.7))]
    rows.append({"method": "classical", "k": 3, "seed": 0, "soft_vote": 0.4})
    stats = fx.summarize(rows, "soft_vote")
    mean, std, n = stats["fdl"][3]
    assert (mean, n) == (pytest.approx(0.6), 2) and std == pytest.approx(torch.tensor([0.5, 0.7]).std().item())
    assert stats["classical"][3] == (pytest.approx(0.4), 0.0, 1)
    table = fx.comparison_table(rows, ("soft_vote",))
    assert "0.400±0.00" in table and "0.600±0.14" in table


def test_epochs_cover_the_step_budget():
    assert fx._epochs_for(100, 30, 10) == (34, 10)  # 3 steps per epoch
    assert fx._epochs_for(100, 1000, 10) == (1, 10)
    assert fx._epochs_for(5, 8, 32) == (5, 8)  # the batch never exceeds the data


def test_cifar_members_have_the_papers_4x4_map(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    settings = fx.sweep_settings("cifar10")
    assert tuple(settings["widths"]) == (64, 128, 256) and fx.extra_datasets() == ("cifar10",)
    member = fx.member_factory(settings["widths"], 10, 3, 32, settings["feat_dim"])()
    out = member.forward_all(torch.rand(2, 3, 32, 32))
    assert out.feature_map.shape == (2, 256, 4, 4) and out.logits.shape == (2, 10)
    monkeypatch.setenv("LABKIT_PROFILE", "lab")
    assert fx.extra_datasets() == ()
    lab_member = fx.member_factory((8, 16), 10, 1, 28, 64)()
    assert lab_member.forward_all(torch.rand(2, 1, 28, 28)).feature_map.shape == (2, 16, 7, 7)


def test_members_have_the_authors_dropout_and_he_uniform_init(monkeypatch):
    """The code's VGG members: Dropout 0.2 / 0.3 / 0.4 after the pooling of blocks 1 / 2 / 3, the
    last block's after the FDL map (so FDL and Grad-CAM read the map undropped), He-uniform."""
    for profile, widths in (("full", (64, 128, 256)), ("lab", (8, 16))):
        monkeypatch.setenv("LABKIT_PROFILE", profile)
        settings = fx.sweep_settings("cifar10" if profile == "full" else "mnist5k")
        assert tuple(settings["widths"]) == widths
        cfg = fx.run_config(settings, k=3, seed=0)
        member = fx.member_factory(cfg["widths"], 10, 1, 32, 16, cfg["conv_dropout"], cfg["init"])()
        rates = [0.2, 0.3, 0.4][:len(widths)]
        backbone = [m.p for m in member.backbone if isinstance(m, torch.nn.Dropout)]
        assert backbone == rates[:-1]
        assert not isinstance(list(member.backbone)[-1], torch.nn.Dropout)
        neck = list(member.neck.body)
        assert isinstance(neck[0], torch.nn.Dropout) and neck[0].p == rates[-1]
        assert [m.p for m in neck[1:] if isinstance(m, torch.nn.Dropout)] == [0.5]
        for layer in member.modules():
            if isinstance(layer, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = layer.weight[0].numel()
                bound = math.sqrt(6 / fan_in)
                assert layer.weight.abs().max() <= bound
                if layer.weight.numel() >= 1000:  # PyTorch's default stays below 1/sqrt(fan_in)
                    assert layer.weight.abs().max() > 0.9 * bound
                assert layer.bias is None or not layer.bias.any()


def test_members_without_the_authors_regularisation():
    member = fx.member_factory((4, 8), 10, 1, 28, 8)()
    assert not any(isinstance(m, torch.nn.Dropout) for m in member.backbone)
    assert sum(isinstance(m, torch.nn.Dropout) for m in member.neck.modules()) == 1  # the head's 0.5
    with pytest.raises(ValueError, match="unknown init"):
        fx.member_factory((4, 8), 10, 1, 28, 8, init="xavier")


def test_regularization_ablation_pairs_the_sweep_runs(tiny):
    rows = fx.regularization_ablation(tiny, progress=False)
    assert [(r["variant"], r["method"]) for r in rows] == [
        ("authors", "classical"), ("authors", "fdl"), ("none", "classical"), ("none", "fdl")]
    sweep = fx.fewshot_sweep(tiny, progress=False)
    assert rows[0]["soft_vote"] == sweep[0]["soft_vote"]  # the same cached run
    authors, none = (fx.run_config(v, k=3, seed=0) for v in
                     (tiny, {**tiny, "conv_dropout": (), "init": "default"}))
    assert authors != none and none["conv_dropout"] == [] and none["init"] == "default"


def test_overlap_report_on_hand_made_rows():
    def row(method, k, seed, iou, acc):
        base = {c: acc for c in fx.COMBINERS}
        return {"method": method, "k": k, "seed": seed, "iou_map": iou, "iou_cam": iou / 2,
                "empty_cam": 0.1 if method == "fdl" else 0.0, **base}
    rows = [row("classical", 3, 0, 0.8, 0.70), row("classical", 5, 0, 0.6, 0.80),
            row("fdl", 3, 0, 0.2, 0.75), row("fdl", 5, 0, 0.7, 0.78)]
    report = fx.overlap_report(rows)
    assert report["iou_map"] == {"classical": pytest.approx(0.7), "fdl": pytest.approx(0.45)}
    assert report["less_overlap_every_k"] == {"iou_map": False, "iou_cam": False}  # k=5 overlaps more
    assert report["empty_cam"]["fdl"] == pytest.approx(0.1)
    assert all(wins == [3] for wins in report["fdl_wins_at"].values())


def test_test_pass_restores_the_training_mode():
    factory = fx.member_factory((4, 8), 10, 1, 28, 8)
    ensemble = fdl.FDLEnsemble(fdl.make_members(factory, 2, seed=0))
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    for mode in (True, False):
        ensemble.train(mode)
        fx._test_pass(ensemble, images, labels)
        assert all(m.training == mode for m in ensemble.modules())
