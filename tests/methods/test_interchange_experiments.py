"""Tests of the interchange lab runners: zoo networks, measures on a toy zoo, a tiny real zoo."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit.methods import interchange as ic
from labkit.methods import interchange_experiments as ex


@pytest.mark.parametrize("arch", ex.ZOO_ARCHS)
def test_zoo_networks_follow_the_network_contract(arch):
    net = ex.build_zoo_network(arch, in_channels=1, num_classes=10, feat_dim=12)
    out = net.forward_all(torch.rand(3, 1, 28, 28))
    assert out.feature_map.ndim == 4 and out.embedding.shape == (3, 12)
    assert out.logits.shape == (3, 10)
    assert isinstance(net.head, nn.Linear) and net.head.bias is not None
    # the full profile's CIFAR shape, open-set variant without a head
    cifar = ex.build_zoo_network(arch, 3, 10, 8, image_size=32, head=None)
    assert cifar.head is None and cifar(torch.rand(2, 3, 32, 32)).shape == (2, 8)


def test_unknown_zoo_architecture():
    with pytest.raises(ValueError, match="unknown zoo architecture"):
        ex.build_zoo_network("alexnet")


@pytest.fixture(scope="module")
def toy():
    return ex.synthetic_zoo(n_members=4, dim=6, num_classes=4, seed=0)


def test_retention_matrix_and_controls_on_toy_zoo(toy):
    result = ex.retention_matrix(toy)
    assert result["retention"].shape == (4, 4) and np.isnan(np.diag(result["retention"])).all()
    assert result["median"] > 0.97  # the toy spaces are affine images of one latent space
    assert np.nanmin(result["r2"]) > 0.95
    ctrl = ex.controls(toy)
    assert ctrl["fitted"] == pytest.approx(result["median"])
    assert ctrl["shuffled"] < 0.6 and ctrl["identity"] < ctrl["fitted"]
    assert ctrl["n_pairs"] == 12 and ctrl["n_identity_pairs"] == 4
    assert math.isnan(ctrl["random_init"])  # the toy zoo has no untrained member


def test_closed_form_matrix_exact_only_when_dim_reaches_classes():
    exact = ex.closed_form_matrix(ex.synthetic_zoo(n_members=3, dim=6, num_classes=4, seed=2))
    assert exact["exact"][~np.eye(3, dtype=bool)].all()
    assert np.nanmin(exact["agreement"]) == 1.0 and np.nanmax(exact["max_logit_error"]) < 1e-6
    low = ex.closed_form_matrix(ex.synthetic_zoo(n_members=3, dim=2, num_classes=5, seed=2))
    assert not low["exact"].any()
    assert np.nanmin(low["agreement"]) < 1.0
    assert ex.closed_form_checks(exact) == {"exact_when_target_dim_ge_classes": True}
    assert ex.closed_form_checks(low) == {"exact_when_target_dim_ge_classes": True,  # vacuous
                                          "inexact_when_target_dim_lt_classes": True}


def test_sweeps_and_similarity_rows_on_toy_zoo(toy):
    curves = ex.retention_vs_pairs(toy, [8, 200])
    assert set(curves) == {"affine (OLS)", "ridge (alpha=1)", "Procrustes"}
    assert curves["affine (OLS)"][1] > curves["affine (OLS)"][0]
    ranks = ex.retention_vs_rank(toy, [1, 6])
    assert ranks[1] > ranks[0] and ranks[1] == pytest.approx(ex.retention_matrix(toy)["median"])
    rows, rhos = ex.similarity_rows(toy)
    assert len(rows) == 6 and set(rhos) == set(ex.SIMILARITY_INDICES)
    assert set(ex.SIMILARITY_INDICES) == {"cka", "cka_debiased", "mean_cca", "svcca", "procrustes"}
    assert all(0 <= r["cka"] <= 1 and r["mean_cca"] > 0.9 for r in rows)  # CCA: same space up to a linear map


def test_similarity_rows_carry_both_cka_estimators_and_a_shuffled_pairs_baseline(toy):
    rows, _ = ex.similarity_rows(toy, seed=3)
    first = rows[0]
    x, y = toy.member("toy0").test_emb.double(), toy.member("toy1").test_emb.double()
    assert first["pair"] == "toy0 / toy1"
    assert first["cka_debiased"] == pytest.approx(ic.linear_cka(x, y, debiased=True), rel=1e-12)
    # the baseline is each index on B's rows re-paired by the seeded permutation of the controls
    shuffled = ic.shuffled_rows(y, seed=3)
    assert first["cka_shuffled"] == pytest.approx(ic.linear_cka(x, shuffled), rel=1e-12)
    assert first["procrustes_shuffled"] == pytest.approx(ic.procrustes_distance(x, shuffled), rel=1e-12)
    for r in rows:
        assert abs(r["cka_debiased_shuffled"]) < 0.05 and r["cka_shuffled"] > 0
        for key in ("cka", "cka_debiased", "mean_cca", "svcca"):
            assert r[key] > r[f"{key}_shuffled"] + 0.2
        assert r["procrustes"] < r["procrustes_shuffled"]
    assert ex.similarity_rows(toy, seed=4)[0][0]["cka_shuffled"] != first["cka_shuffled"]


def test_roc_on_grid_takes_best_tar_left_of_each_far():
    far, tar = np.array([0.0, 0.0, 0.1, 0.5, 1.0]), np.array([0.0, 0.3, 0.6, 0.9, 1.0])
    assert np.allclose(ex.roc_on_grid(far, tar, np.array([0.05, 0.1, 0.7, 1.0])), [0.3, 0.6, 0.9, 1.0])


def test_open_set_results_on_toy_zoo(toy):
    res = ex.open_set_results(toy)
    assert set(res["native"]) == set(toy.names) and len(res["pairs"]) == 12
    for row in res["pairs"]:
        assert row["eer"] < res["shuffled_control"]["eer"]
        assert 0 <= row["recall@1"] <= 1


@pytest.fixture(scope="module")
def tiny_settings(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("LABKIT_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("LABKIT_PROFILE", "quick")
    mp.setenv("LABKIT_DEVICE", "cpu")
    settings = ex.zoo_settings()
    settings.update(archs=("mlp", "lenet5"), seeds=(0, 1), train_per_class=40, test_per_class=20,
                    epochs=5, lr=5e-3, open_seen_per_class=30, open_unseen_per_class=15, open_epochs=3,
                    low_dim_arch="mlp")
    yield settings
    mp.undo()


def test_tiny_real_zoo_trains_caches_and_beats_controls(tiny_settings, monkeypatch):
    zoo = ex.build_zoo(tiny_settings, progress=False)
    assert zoo.names == ["mlp-s0", "mlp-s1", "lenet5-s0", "lenet5-s1"]
    assert zoo.members[0].train_emb.shape == (400, 16) and zoo.members[0].test_emb.shape == (200, 16)
    assert zoo.extras["low_dim"].dim == 4 and zoo.extras["random_init"].epochs == []
    assert all(m.test_acc > 0.5 for m in zoo.members)  # chance is 0.1
    fitted = ex.retention_matrix(zoo)
    ctrl = ex.controls(zoo)
    assert fitted["median"] > 0.8 and ctrl["shuffled"] < 0.5
    assert ctrl["identity"] < fitted["median"]
    low = ex.closed_form_matrix(zoo)
    names = low["names"]
    into_low = [low["agreement"][i, names.index("mlp-d4")] for i in range(4)]
    assert low["exact"][0, 1] and not low["exact"][0, names.index("mlp-d4")]
    assert low["agreement"][0, 1] == 1.0 and min(into_low) < 1.0
    assert ex.closed_form_checks(low) == {"exact_when_target_dim_ge_classes": True,
                                          "inexact_when_target_dim_lt_classes": True}

    def no_training(*args, **kwargs):
        raise AssertionError("a cached member was retrained")

    monkeypatch.setattr(ex, "fit", no_training)
    again = ex.build_zoo(tiny_settings, progress=False)
    assert torch.equal(again.members[3].test_emb, zoo.members[3].test_emb)


def test_tiny_open_set_zoo(tiny_settings):
    zoo = ex.build_open_set_zoo(tiny_settings, progress=False)
    assert len(zoo.members) == 2 and zoo.members[0].head_weight is None
    assert set(zoo.train_labels.tolist()) == set(range(7))  # seen classes
    assert set(zoo.test_labels.tolist()) == set(range(3))  # unseen, relabelled
    res = ex.open_set_results(zoo)
    for row in res["pairs"]:
        assert row["eer"] < 0.5 and row["eer"] < res["shuffled_control"]["eer"] + 0.2
        assert 0 <= row["tar@far=0.01"] <= 1
    with pytest.raises(ValueError, match="no classification head"):
        _ = zoo.members[0].head
