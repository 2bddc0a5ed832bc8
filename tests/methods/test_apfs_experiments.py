"""APFS runner on tiny data: settings, samplers with equal budgets, a quick cached ablation,
the contract's summary and claims on known results, sweeps, the 2-D run, the step cost."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from pytorch_metric_learning import miners
from torch import nn

from labkit.core import config
from labkit.core.data import ArrayDataset
from labkit.methods import apfs
from labkit.methods import apfs_experiments as X
from labkit.methods.apfs import ProximalRegularizer, RepresentativeBatchSampler


def _digits_like(seed: int, offset: int) -> ArrayDataset:
    # 5 classes of 28x28 images with a class-specific bright patch: learnable in a few steps
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(5).repeat_interleave(40)
    images = 0.3 * torch.rand(200, 1, 28, 28, generator=g)
    for c in range(5):
        row = 4 * ((c + offset) % 6)
        images[labels == c, :, row:row + 4, 4:24] += 0.7
    return ArrayDataset(images, labels, [str(c + offset) for c in range(5)], "synthetic")


@pytest.fixture(autouse=True)
def _quick(monkeypatch, tmp_path):
    # the runners' data entry point, replaced by synthetic images so tests take seconds
    def split(name, size=28, train_per_class=None, test_per_class=None, seed=0):
        train, test = _digits_like(0, 0), _digits_like(1, 5)
        if train_per_class:
            train = train.k_per_class(train_per_class, seed=seed)
        if test_per_class:
            test = test.k_per_class(test_per_class, seed=seed)
        return train, test

    monkeypatch.setattr(X, "class_disjoint_split", split)
    monkeypatch.setattr(apfs, "class_disjoint_split", split)  # the 2-D run's
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    with config.cpu_threads(1):
        yield


TINY = dict(batches_per_pass=5, train_per_class=20, test_per_class=10)


def _result(variant: str, seed: int, recall: float) -> X.Result:
    """A typed triplet result with known recall@1 (no training)."""
    return X.Result(X.Settings(loss="triplet", variant=variant, seed=seed),
                    {"recall@1": recall}, [], 0.0, [])


def test_settings_profiles_and_checks():
    s = X.Settings.for_profile(loss="triplet", seed=3)
    assert (s.loss, s.seed, s.dataset, s.epochs, s.dim) == ("triplet", 3, "mnist5k", 1, 32)
    assert (s.proximal, s.miner, s.variant) == ("gradient", None, "apfs")
    assert X.Settings.for_profile("lab") == X.Settings()
    full = X.Settings.for_profile("full")
    assert (full.dataset, full.arch, full.widths, full.image_size) == ("cub200", "resnet50",
                                                                       None, 224)
    assert X.Settings(widths=[16, 32, 64]) == X.Settings()  # TOML lists equal tuples
    with pytest.raises(ValueError, match="unknown loss"):
        X.Settings(loss="arcface")
    with pytest.raises(ValueError, match="unknown variant"):
        X.Settings(variant="proxy")
    with pytest.raises(ValueError, match="unknown settings .*nonsense"):
        X.Settings.build(nonsense=1)
    with pytest.raises(ValueError, match="multiple of"):
        X.Settings(batches_per_pass=7, lifetime=5)
    with pytest.raises(ValueError, match="unknown miner"):
        X.Settings(loss="multi_similarity", miner="hard_negative")
    with pytest.raises(ValueError, match="proximal form"):
        X.Settings(proximal="exact")
    with pytest.raises(ValueError, match="unknown pooling"):
        X.Settings(pooling="max")
    assert X.EXPERIMENT.grid() == {"loss": ("contrastive",), "variant": X.VARIANTS,
                                   "seed": (0,)}


def test_settings_record_the_miner_and_training_uses_it():
    train = _digits_like(0, 0)
    for variant in X.VARIANTS:
        for miner in (None, "multi_similarity"):
            s = X.Settings.for_profile(loss="multi_similarity", variant=variant, miner=miner)
            loss_fn, _, _ = X.make_training(s, X.build_model(s, 1, 28), train)
            assert isinstance(loss_fn.miner, miners.MultiSimilarityMiner) == (miner is not None)


def test_variants_share_the_budget():
    labels = torch.arange(5).repeat_interleave(20)
    images = torch.rand(100, 1, 28, 28)
    train = ArrayDataset(images, labels, [str(i) for i in range(5)])
    sizes = {}
    for variant in X.VARIANTS:
        s = X.Settings.for_profile(variant=variant)
        model = X.build_model(s, 1, 28)
        loss_fn, sampler, callbacks = X.make_training(s, model, train)
        batches = list(sampler)
        sizes[variant] = (len(sampler), tuple(sorted({len(b) for b in batches})))
        classes = [len(set(labels[b].tolist())) for b in batches]
        assert set(classes) == {s.classes_per_batch}
        if variant == "baseline":
            assert loss_fn.representatives == 0 and not callbacks
        else:
            assert isinstance(sampler, RepresentativeBatchSampler)
            assert sampler.hard_class_mining == (variant == "apfs+mining")
            assert loss_fn.regularizer is callbacks[0]
    assert len(set(sizes.values())) == 1


def test_both_proximal_forms_give_the_same_gradient():
    train = _digits_like(0, 0)
    grads, batches = {}, {}
    for form in X.PROXIMAL_FORMS:
        torch.manual_seed(0)
        s = X.Settings.for_profile(proximal=form)
        model = X.build_model(s, 1, 28).double()
        loss_fn, sampler, (reg,) = X.make_training(s, model, train)
        assert reg.via_gradient == (form == "gradient")
        with torch.no_grad():  # move the weights off the anchors
            for p in model.parameters():
                p.add_(0.05 * torch.randn(p.shape, dtype=p.dtype))
        batch = batches[form] = next(iter(sampler))
        loss_fn(model, train.images[batch].double(), train.labels[batch]).backward()
        grads[form] = [p.grad.clone() for p in model.parameters()]
    assert batches["gradient"] == batches["penalty"]
    for a, b in zip(grads["gradient"], grads["penalty"], strict=True):
        torch.testing.assert_close(a, b)


def test_quick_ablation_runs_caches_and_summarises():
    settings = X.Settings.for_profile(**TINY)
    results = X.sweep(settings, progress=False)  # the quick grid: contrastive x variants
    assert all(isinstance(r, X.Result) for r in results)
    assert [(r.settings.loss, r.settings.variant) for r in results] == [
        ("contrastive", v) for v in X.VARIANTS]
    for r in results:
        assert 0 <= r.metrics["recall@1"] <= r.metrics["recall@2"] <= r.metrics["recall@8"] <= 1
        assert r.seconds_per_step > 0 and len(r.history) == 1
    assert results[0].round_distances == [] and len(results[1].round_distances) == 1
    again = X.sweep(settings, progress=False)
    assert [r.metrics for r in again] == [r.metrics for r in results]  # from the cache
    second = dataclasses.replace(results[0], settings=results[0].settings.replace(seed=1),
                                 metrics={**results[0].metrics, "recall@1": 0.0})
    summary = X.summary([*results, second])
    assert summary.stats[("contrastive", "baseline")]["recall@1"].n == 2
    table = X.table(summary)
    assert "±" in table.splitlines()[2] and "map@r" in table.splitlines()[0]
    claims = X.claims(X.summary(results))
    assert set(claims) == {"apfs > baseline", "mining > apfs"}
    gain = claims["mining > apfs"]["contrastive"]
    assert gain.seeds == 1 and gain.gain == pytest.approx(
        results[2].metrics["recall@1"] - results[1].metrics["recall@1"])


@pytest.mark.parametrize("pooling", ["gap", "gsp"])
def test_gsp_pooling_trains_and_the_stored_weights_rebuild_the_network(pooling):
    from labkit.methods.gsp import GSP

    settings = X.Settings.for_profile(arch="vgg", widths=(4, 8, 8), pooling=pooling,
                                      variant="baseline", **TINY)
    model = X.build_model(settings, 1, 28)
    assert isinstance(model.neck, GSP) and model.neck.mu == (1.0 if pooling == "gap" else 0.3)
    assert model.backbone(torch.zeros(1, 1, 28, 28)).shape[-2:] == (7, 7)  # full-resolution map
    result = X.run(settings)
    assert bool(result.state_dict["neck.initialized"])  # k-centre prototypes before training
    test = _digits_like(1, 5)
    with torch.no_grad():
        again = result.model()(test.images[:8])
    assert again.shape == (8, settings.dim) and torch.isfinite(again).all()
    assert 0 <= result.metrics["recall@1"] <= 1
    with pytest.raises(ValueError, match="no weights"):
        dataclasses.replace(result, state_dict=None).model()


def test_default_pooling_keeps_the_trunks_own_neck():
    assert type(X.build_model(X.Settings.for_profile(), 1, 28).neck).__name__ == "FlattenLinear"
    pooled = X.build_model(X.Settings.for_profile(arch="vgg", widths=(4, 8)), 1, 28)
    assert type(pooled.neck).__name__ == "PooledLinear"


def test_summary_and_claims_on_known_results():
    results = [_result(v, s, base + 0.1 * s)
               for v, base in (("baseline", 0.5), ("apfs", 0.6), ("apfs+mining", 0.55))
               for s in (0, 1)]
    summary = X.summary(results)
    spread = summary.stats[("triplet", "apfs")]["recall@1"]
    assert spread.n == 2 and spread.mean == pytest.approx(0.65)
    assert spread.std == pytest.approx(0.1 / 2 ** 0.5)
    claims = {name: dataclasses.astuple(gains["triplet"])
              for name, gains in X.claims(summary).items()}
    assert claims["apfs > baseline"] == pytest.approx((0.1, 0.0, 2, 2))
    assert claims["mining > apfs"] == pytest.approx((-0.05, 0.0, 0, 2))


def test_claims_pair_by_seed():
    # the variant loses on both shared seeds but has the higher mean over all its seeds (0.63
    # against 0.55): unpaired means would call that a gain; seed 2 has nothing to pair with
    results = ([_result("apfs", s, v) for s, v in ((0, 0.40), (1, 0.60), (2, 0.90))]
               + [_result("baseline", s, v) for s, v in ((1, 0.65), (0, 0.45))])
    claims = X.claims(X.summary(results))
    gain = claims["apfs > baseline"]["triplet"]
    assert gain.seeds == 2 and gain.wins == 0
    assert gain.gain == pytest.approx(-0.05) and gain.spread == pytest.approx(0.0, abs=1e-12)
    assert "mining > apfs" not in claims  # no apfs+mining runs: nothing to claim


def test_sweep_over_lifetime_records_round_distances():
    base = X.Settings.for_profile(train_per_class=20, test_per_class=10)
    results = X.sweep(base, lifetime=(1, 5), progress=False)
    assert [r.settings.lifetime for r in results] == [1, 5]
    assert all(r.settings.replace(lifetime=5) == base for r in results)
    # 10 steps: a round per step for T = 1, two rounds for T = 5
    assert len(results[0].round_distances) == 10 and len(results[1].round_distances) == 2
    assert all(d > 0 for r in results for d in r.round_distances)
    assert set(X.sweep_values()) == {"strength", "lifetime"}
    with pytest.raises(ValueError, match="unknown settings"):
        X.sweep(base, lr_typo=(1,))


def test_geometry_run():
    settings = apfs.GeometrySettings.for_profile(per_class=10, rounds=2, lifetime=3)
    geo = apfs.geometry_run(settings)
    assert isinstance(geo, apfs.GeometryResult) and geo.settings == settings
    assert len(geo.snapshots) == 3 and geo.representatives.shape == (2, 5)
    assert geo.snapshots[0].shape == (5 * 10, 2) and len(geo.round_distances) == 2
    assert geo.satisfaction == apfs.round_satisfaction(geo.snapshots, geo.labels,
                                                       geo.representatives, 0.5, 2.0)
    for row in geo.satisfaction:
        for when in ("before", "after"):
            assert all(0 <= f <= 1 for f in row[when])
    assert apfs.geometry_run(settings).round_distances == geo.round_distances  # cached
    with pytest.raises(ValueError, match="beta >= alpha"):
        apfs.GeometrySettings(alpha=3.0)


def test_step_cost_reports_all_variants():
    cost = X.step_cost(steps=2, repeats=2)
    assert isinstance(cost, X.StepCost) and cost.steps == 2
    assert set(cost.as_dict()) == {"baseline_ms", "apfs_ms", "apfs+mining_ms", "apfs/baseline",
                                   "apfs+mining/baseline", "apfs/baseline (median block)",
                                   "apfs+mining/baseline (median block)"}
    assert all(len(blocks) == 2 and min(blocks) > 0 for blocks in cost.blocks.values())
    # total/total: the ratio of the mean block times
    assert cost.ratio("apfs") == pytest.approx(cost.ms("apfs") / cost.ms("baseline"))


def test_step_cost_ratios_on_known_blocks():
    cost = X.StepCost(X.Settings(), 4, {"baseline": [1.0, 1.0, 4.0], "apfs": [2.0, 1.5, 4.0]})
    assert cost.ms("apfs") == pytest.approx(2500.0)
    assert cost.ratio("apfs") == pytest.approx(7.5 / 6.0)  # total over total
    assert cost.median_ratio("apfs") == pytest.approx(1.5)  # of 2, 1.5 and 1
    assert cost.as_dict()["apfs/baseline (median block)"] == pytest.approx(1.5)


# the profiles' lambda values before issue 16, when the term was lambda * ||theta - anchor||^2
# and its gradient 2 * lambda * (theta - anchor)
OLD_STRENGTH = {"quick": 0.1, "lab": 0.1, "full": 1e-4}
OLD_SWEEP = {"quick": (0.0, 0.1), "lab": (0.0, 0.01, 0.1, 1.0)}
OLD_GEOMETRY_STRENGTH = 1e-2


def _proximal_shift(strength: float, via_gradient: bool,
                    ) -> tuple[list[torch.Tensor], ProximalRegularizer]:
    """What the proximal term adds to each gradient of a Linear moved off its anchor, and the
    regularizer (its model and anchors)."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    reg = ProximalRegularizer(model, strength, lifetime=5, via_gradient=via_gradient)
    with torch.no_grad():
        for p in model.parameters():
            p += torch.randn(p.shape, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64)
    loss = model(x).pow(2).sum()
    plain = torch.autograd.grad(loss, list(model.parameters()), retain_graph=True)
    if not via_gradient:
        loss = loss + reg.penalty()
    loss.backward()
    return [p.grad - g for p, g in zip(model.parameters(), plain, strict=True)], reg


@pytest.mark.parametrize("profile", ["quick", "lab", "full"])
def test_profile_lambdas_keep_the_old_pull(monkeypatch, profile):
    monkeypatch.setenv("LABKIT_PROFILE", profile)
    pairs = [(X.Settings.for_profile().strength, OLD_STRENGTH[profile], True),
             (apfs.GeometrySettings.for_profile().strength, OLD_GEOMETRY_STRENGTH, False)]
    if profile in OLD_SWEEP:
        new_sweep = X.sweep_values()["strength"]
        assert len(new_sweep) == len(OLD_SWEEP[profile])
        pairs += [(new, old, True) for new, old in zip(new_sweep, OLD_SWEEP[profile],
                                                      strict=True)]
    for new, old, via_gradient in pairs:
        shift, reg = _proximal_shift(new, via_gradient)
        for added, p, anchor in zip(shift, reg.model.parameters(), reg.anchors, strict=True):
            assert torch.allclose(added, 2 * old * (p.detach() - anchor)), (new, old)
