"""Tests for labkit.methods.fdl_experiments: settings, tiny real runs, caching, summaries."""

from __future__ import annotations

import math

import pytest
import torch

from labkit.core.report import PairedGain
from labkit.methods import fdl
from labkit.methods import fdl_experiments as fx

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(k=3, members=2, widths=(4, 8), feat_dim=8, steps=3, batch_size=10, fusion_steps=2,
            finetune_steps=1, test_size=50, cam_size=4)


@pytest.fixture()
def tiny(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    return fx.Settings.for_profile(**TINY)


def test_zero_weights_and_use_fdl_false_are_one_run():
    classical = fx.Settings(use_fdl=False)
    assert classical == fx.Settings(lambda_cos=0, lambda_euc=0)  # one cache key
    assert (classical.lambda_cos, classical.lambda_euc, classical.method) == (0.0, 0.0, "classical")
    assert fx.Settings().as_dict() == classical.replace(use_fdl=True, lambda_cos=1.0,
                                                        lambda_euc=10.0).as_dict()
    assert fx.Settings(lambda_cos=0.1, lambda_euc=1).label == "FDL (0.1, 1)"
    assert classical.label == "classical"
    # a TOML list is the tuple written in code; members keep one dropout rate per block
    assert fx.Settings(widths=[8, 16], conv_dropout=[0.2, 0.3, 0.4]) == fx.Settings()
    assert fx.Settings().conv_dropout == (0.2, 0.3)
    assert fx.Settings(widths=fx.CIFAR_WIDTHS).conv_dropout == (0.2, 0.3, 0.4)


@pytest.mark.parametrize(("changes", "message"), [
    (dict(ks=(3,)), "unknown settings \\['ks'\\]; the settings of"),
    (dict(lambda_euc=-1.0), "lambda_euc must be a finite number >= 0"),
    (dict(init="xavier"), "unknown init 'xavier'"),
    (dict(members=1), "need members >= 2"),
    (dict(widths=(4, 8, 16), conv_dropout=(0.2, 0.3)), "one rate per block"),
])
def test_bad_settings_are_refused(changes, message):
    with pytest.raises(ValueError, match=message):
        fx.Settings.build(**changes)


def test_profiles_and_grids(monkeypatch):
    quick = fx.Settings.for_profile("quick")
    assert (quick.members, quick.widths, quick.steps, quick.test_size) == (3, (4, 8), 60, 100)
    assert fx.Settings.for_profile("lab") == fx.Settings()
    full = fx.Settings.for_profile("full")
    assert (full.widths, full.steps, full.test_size, full.cam_size) == ((32, 64), 3000, None, 500)
    for profile, ks, seeds in (("quick", (3, 10), (0,)), ("lab", fx.KS, (0, 1)),
                               ("full", fx.KS, (0, 1, 2, 3, 4))):
        monkeypatch.setenv("LABKIT_PROFILE", profile)
        assert fx.EXPERIMENT.grid() == {"k": ks, "seed": seeds, "use_fdl": (False, True)}
    assert [s.dataset for s in fx.extra_datasets()] == ["cifar10"]  # full only
    monkeypatch.setenv("LABKIT_PROFILE", "lab")
    assert fx.extra_datasets() == ()
    assert [s.label for s in fx.lambda_grid(fx.Settings())] == [
        "classical", "FDL (0.1, 1)", "FDL (1, 10)", "FDL (3, 30)"]
    with pytest.raises(ValueError, match="classical"):
        fx.lambda_grid(fx.Settings(use_fdl=False))


def test_tiny_sweep_runs_caches_and_reloads(tiny, monkeypatch):
    results = fx.sweep(tiny, k=(3,), seed=(0,), use_fdl=(False, True), progress=False)
    assert [(r.settings.method, r.settings.k, r.settings.seed) for r in results] == [
        ("classical", 3, 0), ("fdl", 3, 0)]
    for result in results:
        assert isinstance(result, fx.Result) and result.image_shape == (1, 28, 28)
        for key in (*fx.COMBINERS, "iou_map", "empty_cam"):
            assert 0.0 <= result.metrics[key] <= 1.0
        # NaN only when no two members have a Grad-CAM region on any image
        iou = result.metrics["iou_cam"]
        assert 0.0 <= iou <= 1.0 or (math.isnan(iou) and result.metrics["empty_cam"] > 0)
        assert 0.0 <= result.metrics["s_cos"] <= 1.0 + 1e-6  # one pair of members
        assert not set(fx.MASKED) & set(result.metrics)  # mnist5k has no masks
    assert results[0].log[-1]["fdl"] == 0.0 and results[1].log[-1]["fdl"] > 0
    # cached: a second sweep must not train
    monkeypatch.setattr(fx.EXPERIMENT, "train", lambda *a: pytest.fail("retrained a cached run"))
    again = fx.sweep(tiny, k=(3,), seed=(0,), use_fdl=(False, True), progress=False)
    assert repr(again) == repr(results)  # NaN-safe equality
    # the stored weights are the trained members: re-scoring them reproduces the stored numbers
    result = fx.run(tiny)
    _, test = fx.load_split(tiny)
    scored = fdl.ensemble_accuracies(result.ensemble(), test.images, test.labels)
    assert scored["soft_vote"] == pytest.approx(result.metrics["soft_vote"])
    assert scored["hard_vote"] == pytest.approx(result.metrics["hard_vote"])
    records = fx.cam_records(fx.lambda_grid(tiny), test.images[:3])
    assert [r.settings.lambda_euc for r in records] == [0.0, 10.0]
    assert records[0].metrics == results[0].metrics  # the same cached runs
    assert records[1].cams.shape == (2, 3, 28, 28) and records[1].preds.shape == (2, 3)
    assert records[1].maps.shape == (2, 3, 7, 7)


def test_regularization_ablation_pairs_the_sweep_runs(tiny):
    runs = fx.regularization_ablation(tiny, progress=False)
    assert [(r.settings.method, r.settings.k) for r in runs["authors"]] == [
        ("classical", 3), ("fdl", 3)]
    assert runs["authors"][0].metrics == fx.run(tiny.replace(use_fdl=False)).metrics
    none = runs["none"][1].settings
    assert (none.conv_dropout, none.init, none.use_fdl) == ((), "default", True)
    assert runs["none"][1].metrics != runs["authors"][1].metrics


def test_a_quick_run_builds_and_trains_on_cluttered_digits(tiny, monkeypatch, tmp_path):
    """cluttered_mnist5k: 60x60 images (a 15x15 FDL map after two pools) with digit masks, so
    the run also says where the members' Grad-CAMs fall."""
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "data"))
    result = fx.run(tiny.replace(dataset="cluttered_mnist5k"))
    assert result.image_shape == (1, 60, 60) and result.num_classes == 10
    _, test = fx.load_split(result.settings)
    assert test.masks is not None and len(test) == 50
    maps = result.ensemble().feature_maps(test.images[:2])
    assert maps[0].shape == (2, 8, 15, 15)
    metrics = result.metrics
    for key in (*fx.COMBINERS, "cam_inside", "cam_inside_chance", "cam_pointing"):
        assert 0.0 <= metrics[key] <= 1.0, key
    # the digit (about 28x28 ink-or-not pixels of a 3,600-pixel canvas) is a small target
    assert 0.02 < metrics["cam_inside_chance"] < 0.2


def _result(method: str, k: int, seed: int, **metrics: float) -> fx.Result:
    settings = fx.Settings(k=k, seed=seed, use_fdl=method == "fdl")
    return fx.Result(settings, metrics, [], (1, 28, 28), 10, {})


def _hand_made() -> list[fx.Result]:
    def accuracies(acc: float) -> dict[str, float]:
        return {c: acc for c in fx.COMBINERS} | {"mean_member": acc - 0.1}

    return [
        _result("classical", 3, 0, iou_map=0.8, iou_cam=0.4, empty_cam=0.0, **accuracies(0.70)),
        _result("classical", 3, 1, iou_map=0.6, iou_cam=0.3, empty_cam=0.0, **accuracies(0.72)),
        _result("fdl", 3, 0, iou_map=0.2, iou_cam=0.1, empty_cam=0.1, **accuracies(0.75)),
        _result("fdl", 3, 1, iou_map=0.4, iou_cam=0.2, empty_cam=0.1, **accuracies(0.71)),
        _result("classical", 5, 0, iou_map=0.6, iou_cam=0.3, empty_cam=0.0, **accuracies(0.80)),
        # a tie up to float32 rounding
        _result("fdl", 5, 0, iou_map=0.7, iou_cam=0.2, empty_cam=0.2, **accuracies(0.80 + 3e-8)),
    ]


def test_summary_table_and_claims_on_hand_made_results():
    summary = fx.summary(_hand_made())
    assert summary.by == ("method", "k")
    assert list(summary.stats) == [("classical", 3), ("fdl", 3), ("classical", 5), ("fdl", 5)]
    soft = summary.stats[("fdl", 3)]["soft_vote"]
    assert (soft.mean, soft.n) == (pytest.approx(0.73), 2)
    assert soft.std == pytest.approx(torch.tensor([0.75, 0.71]).double().std().item())
    gain = summary.stats[("fdl", 3)]["soft_vote_gain"]  # combiner - mean member, per run
    assert gain.mean == pytest.approx(0.1) and gain.std == pytest.approx(0.0, abs=1e-12)
    table = fx.table(summary, ("soft_vote", "iou_cam"))
    assert table.splitlines()[0].split() == ["method", "k", "seeds", "soft_vote", "iou_cam"]
    assert "0.730 ± 0.028" in table and "0.800  " in table  # one seed: no std
    claims = fx.claims(summary)
    soft = claims["fdl > classical (soft_vote)"]
    assert set(soft) == {"3", "5"}  # paired by seed per k
    assert soft["3"] == PairedGain(pytest.approx(0.02), pytest.approx(math.sqrt(2) * 0.03), 1, 2)
    assert soft["5"].seeds == 1 and soft["5"].gain == pytest.approx(0.0, abs=1e-7)
    less = claims["fdl overlaps less (iou_map)"]  # classical - fdl: positive = FDL overlaps less
    assert less["3"].gain == pytest.approx(0.4) and less["3"].wins == 2
    assert less["5"].gain == pytest.approx(-0.1) and less["5"].wins == 0


def test_overlap_on_hand_made_results():
    report = fx.overlap(fx.summary(_hand_made()))
    # mean over k of the per-k means
    assert report.means["iou_map"] == {"classical": pytest.approx((0.7 + 0.6) / 2),
                                       "fdl": pytest.approx((0.3 + 0.7) / 2)}
    assert report.means["empty_cam"]["fdl"] == pytest.approx(0.15)
    assert report.less_every_k == {"iou_map": False, "iou_cam": True}  # k=5: maps overlap more
    # FDL ahead at k = 3; at k = 5 the accuracies tie up to rounding, which is no win
    assert report.fdl_wins_at == {c: [3] for c in fx.COMBINERS}


def test_epochs_cover_the_step_budget():
    assert fdl.epochs_for(100, 30, 10) == (34, 10)  # 3 steps per epoch
    assert fdl.epochs_for(100, 1000, 10) == (1, 10)
    assert fdl.epochs_for(5, 8, 32) == (5, 8)  # the batch never exceeds the data


def test_cifar_members_have_the_papers_4x4_map(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    (cifar,) = fx.extra_datasets()
    assert cifar.widths == (64, 128, 256) and cifar.dataset == "cifar10"
    member = fx.build_ensemble(cifar, (3, 32, 32), 10).members[0]
    out = member.forward_all(torch.rand(2, 3, 32, 32))
    assert out.feature_map.shape == (2, 256, 4, 4) and out.logits.shape == (2, 10)
    lab_member = fx.build_ensemble(fx.Settings(), (1, 28, 28), 10).members[0]
    assert lab_member.forward_all(torch.rand(2, 1, 28, 28)).feature_map.shape == (2, 16, 7, 7)


@pytest.mark.parametrize("settings", [fx.Settings(widths=fx.CIFAR_WIDTHS), fx.Settings()],
                         ids=["three-blocks", "two-blocks"])
def test_members_have_the_authors_dropout_and_he_uniform_init(settings):
    """The code's VGG members: Dropout 0.2 / 0.3 / 0.4 after the pooling of blocks 1 / 2 / 3, the
    last block's after the FDL map (so FDL and Grad-CAM read the map undropped), He-uniform."""
    member = fx.build_ensemble(settings, (1, 32, 32), 10).members[0]
    rates = [0.2, 0.3, 0.4][:len(settings.widths)]
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
    member = fdl.member_factory((4, 8), 10, 1, 28, 8)()
    assert not any(isinstance(m, torch.nn.Dropout) for m in member.backbone)
    assert sum(isinstance(m, torch.nn.Dropout) for m in member.neck.modules()) == 1  # the head's 0.5
    with pytest.raises(ValueError, match="unknown init"):
        fdl.member_factory((4, 8), 10, 1, 28, 8, init="xavier")


def test_test_pass_restores_the_training_mode():
    factory = fdl.member_factory((4, 8), 10, 1, 28, 8)
    ensemble = fdl.FDLEnsemble(fdl.make_members(factory, 2, seed=0))
    images, labels = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    for mode in (True, False):
        ensemble.train(mode)
        fdl.test_pass(ensemble, images, labels)
        assert all(m.training == mode for m in ensemble.modules())
