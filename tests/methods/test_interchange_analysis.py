"""Tests of what notebook 03 measures on a zoo, on toy zoos whose spaces are affine images of
one latent space (`synthetic_zoo`: typed members, no training)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from labkit.methods import interchange as ic
from labkit.methods import interchange_analysis as ia
from labkit.methods import interchange_experiments as ex


@pytest.fixture(scope="module")
def toy():
    return ia.synthetic_zoo(n_members=4, dim=6, num_classes=4, seed=0)


def test_synthetic_zoo_builds_typed_members(toy):
    assert toy.names == ["toy0", "toy1", "toy2", "toy3"]
    member = toy.member("toy2")
    assert isinstance(member, ex.Result) and isinstance(member.settings, ex.Settings)
    assert (member.arch, member.settings.seed, member.dim) == ("mlp", 1, 6)
    assert member.train_emb.shape == (240, 6) and member.test_emb.shape == (120, 6)
    logits = member.test_emb @ member.head_weight.T + member.head_bias
    assert member.test_acc == pytest.approx(float((logits.argmax(1) == toy.test_labels)
                                                  .float().mean()))
    with pytest.raises(ValueError, match="no zoo member 'nobody'"):
        toy.member("nobody")


def test_retention_matrix_and_controls_on_toy_zoo(toy):
    result = ia.retention_matrix(toy)
    assert result.retention.shape == (4, 4) and np.isnan(np.diag(result.retention)).all()
    assert result.median > 0.97  # the toy spaces are affine images of one latent space
    assert np.nanmin(result.r2) > 0.95
    # each cell is the held-out score of the map fitted for that pair
    scores = ia.evaluate_map(toy, "toy1", "toy3", ia.fit_pair(toy, "toy1", "toy3",
                                                              seed=7919 * 1 + 3))
    assert result.retention[1, 3] == scores.retention and result.r2[1, 3] == scores.r2
    assert scores.retention == pytest.approx(scores.accuracy / scores.target_accuracy)
    ctrl = ia.controls(toy)
    assert ctrl.fitted == pytest.approx(result.median)
    assert ctrl.shuffled < 0.6 and ctrl.identity < ctrl.fitted and ctrl.fitted_beats_controls
    assert ctrl.n_pairs == 12 and ctrl.n_identity_pairs == 4  # two archs x two seeds
    assert math.isnan(ctrl.random_init)  # the toy zoo has no untrained member
    assert ctrl.chance == pytest.approx(0.25 / np.median([m.test_acc for m in toy.members]))


def test_closed_form_matrix_exact_only_when_dim_reaches_classes():
    exact = ia.closed_form_matrix(ia.synthetic_zoo(n_members=3, dim=6, num_classes=4, seed=2))
    assert exact.exact[~np.eye(3, dtype=bool)].all()
    assert np.nanmin(exact.agreement) == 1.0 and np.nanmax(exact.max_logit_error) < 1e-6
    low = ia.closed_form_matrix(ia.synthetic_zoo(n_members=3, dim=2, num_classes=5, seed=2))
    assert not low.exact.any()
    assert np.nanmin(low.agreement) < 1.0
    assert ia.closed_form_checks(exact) == {"exact_when_target_dim_ge_classes": True}
    assert ia.closed_form_checks(low) == {"exact_when_target_dim_ge_classes": True,  # vacuous
                                          "inexact_when_target_dim_lt_classes": True}


def test_sweeps_and_similarity_rows_on_toy_zoo(toy):
    curves = ia.retention_vs_pairs(toy, [8, 200])
    assert set(curves) == {"affine (OLS)", "ridge (alpha=1)", "Procrustes"}
    assert curves["affine (OLS)"][1] > curves["affine (OLS)"][0]
    ranks = ia.retention_vs_rank(toy, [1, 6])
    assert ranks[1] > ranks[0] and ranks[1] == pytest.approx(ia.retention_matrix(toy).median)
    similarity = ia.similarity_rows(toy)
    assert len(similarity.rows) == 6 and set(similarity.spearman) == set(ic.SIMILARITY_INDICES)
    assert set(ic.SIMILARITY_INDICES) == {"cka", "cka_debiased", "mean_cca", "svcca", "procrustes"}
    # CCA: the same space up to a linear map
    assert all(0 <= r.index["cka"] <= 1 and r.index["mean_cca"] > 0.9 for r in similarity.rows)
    assert similarity.spearman["cka"] == pytest.approx(ic.spearman(
        [r.index["cka"] for r in similarity.rows], [r.retention for r in similarity.rows]))


def test_similarity_rows_carry_both_cka_estimators_and_a_shuffled_pairs_baseline(toy):
    similarity = ia.similarity_rows(toy, seed=3)
    first = similarity.rows[0]
    x, y = toy.member("toy0").test_emb.double(), toy.member("toy1").test_emb.double()
    assert first.pair == "toy0 / toy1" and not first.same_arch
    assert first.index["cka_debiased"] == pytest.approx(ic.linear_cka(x, y, debiased=True),
                                                        rel=1e-12)
    # the baseline is each index on B's rows re-paired by the seeded permutation of the controls
    shuffled = ic.shuffled_rows(y, seed=3)
    assert first.shuffled["cka"] == pytest.approx(ic.linear_cka(x, shuffled), rel=1e-12)
    assert first.shuffled["procrustes"] == pytest.approx(ic.procrustes_distance(x, shuffled),
                                                         rel=1e-12)
    matrix = ia.retention_matrix(toy)
    assert first.retention == pytest.approx((matrix.retention[0, 1] + matrix.retention[1, 0]) / 2)
    for r in similarity.rows:
        assert abs(r.shuffled["cka_debiased"]) < 0.05 and r.shuffled["cka"] > 0
        for key in ("cka", "cka_debiased", "mean_cca", "svcca"):
            assert r.index[key] > r.shuffled[key] + 0.2
        assert r.index["procrustes"] < r.shuffled["procrustes"]
    assert similarity.beyond_baseline()
    assert similarity.baseline()["cka"] == pytest.approx(
        np.median([r.shuffled["cka"] for r in similarity.rows]))
    assert ia.similarity_rows(toy, seed=4).rows[0].shuffled["cka"] != first.shuffled["cka"]
    # a pair whose index falls on its baseline breaks the claim
    worse = ia.PairSimilarity("a / b", False, dict(first.index, cka=0.0), first.shuffled, 0.5)
    assert not ia.Similarity([worse], {}).beyond_baseline()


def test_roc_on_grid_takes_best_tar_left_of_each_far():
    far, tar = np.array([0.0, 0.0, 0.1, 0.5, 1.0]), np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    assert np.allclose(ic.roc_on_grid(far, tar, np.array([0.05, 0.1, 0.7, 1.0])), [0.3, 0.6, 0.9, 1.0])


def test_open_set_results_on_toy_zoo(toy):
    res = ia.open_set_results(toy)
    assert set(res.native) == set(toy.names) and len(res.pairs) == 12
    assert (res.pairs[0].source, res.pairs[0].target) == ("toy0", "toy1")
    for row in res.pairs:
        assert row.metrics["eer"] < res.shuffled_control.metrics["eer"]
        assert 0 <= row.metrics["recall@1"] <= 1
    assert res.mapped_beats_control and res.n_unseen == 120 and res.fars == (1e-2, 1e-3)
    assert set(res.curves) >= {"toy0 native", "toy0 -> toy1 mapped",
                               "toy0 -> toy1 shuffled control"}
    assert all(len(curve) == len(res.grid) for curve in res.curves.values())
    # native: each member's own embeddings through the same protocol
    normed = torch.nn.functional.normalize(toy.member("toy2").test_emb.double(), dim=1)
    own, _, _ = ic.score_protocol(normed, normed, toy.test_labels)
    assert res.native["toy2"] == own


def test_explore_map_builds_every_kind_and_measures_it(toy):
    fitted = ia.explore_map(toy, "toy0", "toy1", "affine")
    ident = ia.explore_map(toy, "toy0", "toy1", "identity")
    heads = ia.explore_map(toy, "toy0", "toy1", "heads (closed form)")
    assert fitted.retention > 0.95 and fitted.r2 > 0.9 and ident.r2 < fitted.r2
    assert fitted.source_accuracy == toy.member("toy0").test_acc
    assert fitted.cka == pytest.approx(ic.linear_cka(toy.member("toy0").test_emb.double(),
                                                     toy.member("toy1").test_emb.double()))
    # the closed form into a 6-d head with 4 classes is exact: B's head reproduces A's accuracy
    assert heads.accuracy == pytest.approx(fitted.source_accuracy)
    assert ia.explore_map(toy, "toy0", "toy1", "reduced_rank", rank=1).r2 < 0.9
    few = ia.explore_map(toy, "toy0", "toy1", "affine", n_pairs=10)
    assert few.r2 < fitted.r2  # 10 pairs for a 6-d map: it fits the noise
    assert set(ia.MAP_METHODS) == {*ic.METHODS, "heads (closed form)", "identity"}
    with pytest.raises(ValueError, match="rank"):
        ia.explore_map(toy, "toy0", "toy1", "reduced_rank", rank=0)
    with pytest.raises(ValueError, match="unknown explorer map"):
        ia.explore_map(toy, "toy0", "toy1", "cca")
