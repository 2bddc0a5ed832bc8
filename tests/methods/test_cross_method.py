"""The cross-method measures of notebook 06: zoos made from RePoNet runs and FDL ensembles, the
pair scores on a zoo whose answers are known, the 2 x 2's settings, gains and collapse."""

from __future__ import annotations

import pytest
import torch

from labkit.methods import apfs_experiments as ax
from labkit.methods import cross_method as cm
from labkit.methods import fdl_experiments as fx
from labkit.methods import interchange_analysis as ia
from labkit.methods import reponet_experiments as rx
from labkit.methods.interchange_experiments import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def quick(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")


def _twin_zoo() -> Zoo:
    """Member b is member a rotated (same head rotated with it), member c is a itself."""
    base = ia.synthetic_zoo(n_members=2, dim=4, num_classes=3, seed=1)
    a = base.members[0]
    rotation = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(0)))[0]
    twin = cm._member("b", "rotated", a.train_emb @ rotation.T, a.test_emb @ rotation.T,
                      a.head_weight @ rotation.T, a.head_bias, base.test_labels)
    same = cm._member("c", "copy", a.train_emb, a.test_emb, a.head_weight, a.head_bias,
                      base.test_labels)
    first = cm._member("a", "copy", a.train_emb, a.test_emb, a.head_weight, a.head_bias,
                       base.test_labels)
    return Zoo([first, twin, same], base.train_labels, base.test_labels, base.classes)


def test_member_accuracy_is_its_heads_on_the_test_embeddings():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.1], [0.2, 1.0]])
    member = cm._member("m", "k", emb, emb, torch.eye(2), None, torch.tensor([0, 1, 1, 1]))
    assert member.test_acc == 0.75 and member.dim == 2 and member.arch == "k"
    assert torch.equal(member.head[1], torch.zeros(2))  # a fixed head has no bias


def test_pair_scores_on_copies_and_rotations():
    rows = {(r.src, r.dst): r for r in cm.pair_scores(_twin_zoo(), few=12)}
    assert len(rows) == 6
    copy = rows["a", "c"]
    assert copy.kinds == "copy -> copy"
    assert copy.identity == pytest.approx(1.0) and copy.cka == pytest.approx(1.0)
    assert copy.affine_all == pytest.approx(1.0)
    rotated = rows["a", "b"]
    # rotated head on the unrotated features: not the same classifier, so no map loses accuracy
    # only by luck; a fitted map undoes the rotation exactly, and linear CKA ignores rotations
    assert rotated.affine_all == pytest.approx(1.0) and rotated.affine_few == pytest.approx(1.0)
    assert rotated.cka == pytest.approx(1.0)
    assert rotated.identity < 1.0
    groups = cm.by_kinds(list(rows.values()))
    assert set(groups) == {"copy -> copy", "copy -> rotated", "rotated -> copy"}
    assert groups["copy -> copy"]["identity"].n == 2


def test_kind_gain_pairs_the_same_seed_pairs():
    def row(src, dst, cka):
        kind = src.split("-")[0]
        return cm.PairScores(src, dst, f"{kind} -> {dst.split('-')[0]}", 1.0, 1.0, 1.0, cka)
    rows = [row("simplex-s0", "simplex-s1", 0.9), row("simplex-s1", "simplex-s0", 0.8),
            row("learned-s0", "learned-s1", 0.7), row("learned-s1", "learned-s0", 0.9),
            row("simplex-s0", "learned-s1", 0.0)]
    gain = cm.kind_gain(rows, "cka", "simplex", "learned")
    assert (gain.seeds, gain.wins) == (2, 1) and gain.gain == pytest.approx((0.2 - 0.1) / 2)


def test_polytope_zoo_from_reponet_runs_and_its_refusals():
    small = dict(classes=4, train_per_class=20, test_per_class=10, epochs=1, probe_per_class=5)
    fixed = rx.run(rx.Settings.for_profile(head="simplex", **small))
    learned = rx.run(rx.Settings.for_profile(head="learned", feat_dim=3, **small))
    zoo = cm.polytope_zoo([fixed, learned])
    assert zoo.names == ["simplex-s0", "learned-s0"]
    simplex = zoo.member("simplex-s0")
    assert simplex.dim == 3 and simplex.train_emb.shape == (80, 3)
    assert torch.allclose(simplex.head_weight, fixed.vertices) and not simplex.head_bias.any()
    assert simplex.test_acc == pytest.approx(fixed.metrics["accuracy"])
    assert zoo.member("learned-s0").test_acc == pytest.approx(learned.metrics["accuracy"])
    rows = cm.pair_scores(zoo)
    assert [r.kinds for r in rows] == ["simplex -> learned", "learned -> simplex"]
    with pytest.raises(ValueError, match="other data or d"):
        cm.polytope_zoo([fixed, rx.run(rx.Settings.for_profile(head="learned", feat_dim=4,
                                                               **small))])
    with pytest.raises(ValueError, match="one row per class"):
        cm.polytope_zoo([rx.run(rx.Settings.for_profile(head="simplex", margin=True, **small))])


def test_ensemble_zoo_and_scores_of_an_fdl_run():
    result = fx.run(fx.Settings.for_profile(k=3, members=2, widths=(4, 8), feat_dim=8, steps=3,
                                            batch_size=10, fusion_steps=2, finetune_steps=1,
                                            test_size=40, cam_size=4))
    zoo = cm.ensemble_zoo(result)
    assert len(zoo.members) == 2 and zoo.members[0].dim == 8
    assert len(zoo.test_labels) == 40 and len(zoo.train_labels) > 1000  # all training digits
    for i, member in enumerate(zoo.members):
        assert member.test_acc == pytest.approx(result.metrics[f"member_{i}"], abs=1e-6)
    scores = cm.ensemble_scores(result)
    assert set(scores) == {*cm.PairScores.MEASURES, "member_accuracy", "iou_map", "iou_cam"}
    assert scores["iou_map"] == result.metrics["iou_map"]


def test_combination_settings_put_the_gsp_network_in_the_apfs_runner():
    s = cm.combination_settings(variant="baseline")
    assert (s.arch, s.pooling, s.loss, s.variant) == ("vgg", "gsp", "multi_similarity", "baseline")
    assert (s.batches_per_pass, s.lifetime) == (ax.Settings.for_profile().batches_per_pass,
                                                ax.Settings.for_profile().lifetime)
    assert cm.combination_seeds() == (0, 1)


def test_combination_gains_and_the_interaction_on_known_rows():
    values = {("gap", "baseline"): [0.50, 0.60], ("gsp", "baseline"): [0.55, 0.62],
              ("gap", "apfs"): [0.52, 0.70], ("gsp", "apfs"): [0.60, 0.71]}
    rows = [{"pooling": p, "batches": b, "seed": s, "recall@1": v}
            for (p, b), vs in values.items() for s, v in enumerate(vs)]
    gains = cm.combination_gains(rows)
    assert gains["GSP - GAP, plain batches"].gain == pytest.approx((0.05 + 0.02) / 2)
    assert gains["APFS - plain, GAP"].gain == pytest.approx((0.02 + 0.10) / 2)
    both_vs_apfs = gains["GSP - GAP, APFS batches (both - APFS alone)"]
    assert both_vs_apfs.gain == pytest.approx((0.08 + 0.01) / 2) and both_vs_apfs.wins == 2
    # interaction per seed: (0.60 - 0.52) - (0.55 - 0.50) = 0.03; (0.71 - 0.70) - 0.02 = -0.01
    interaction = gains["interaction"]
    assert interaction.gain == pytest.approx(0.01) and interaction.wins == 1


def test_collapse_of_a_quick_gsp_run():
    settings = cm.combination_settings(variant="baseline", train_per_class=10, test_per_class=10,
                                       batches_per_pass=2, lifetime=1)
    measures = cm.collapse(ax.run(settings))
    assert set(measures) == {"nc1_seen", "nc2_seen", "nc1_unseen", "nc2_unseen"}
    assert all(v >= 0 and v == v for v in measures.values())


def test_no_identity_map_between_spaces_of_other_dims():
    zoo = _twin_zoo()
    a = zoo.member("a")
    narrow = cm._member("n", "narrow", a.train_emb[:, :2], a.test_emb[:, :2], a.head_weight[:, :2],
                        a.head_bias, zoo.test_labels)
    rows = cm.pair_scores(Zoo([a, narrow], zoo.train_labels, zoo.test_labels, zoo.classes))
    assert all(r.identity != r.identity for r in rows)  # NaN
    assert all(0 <= r.affine_all <= 1.5 for r in rows)


def test_the_runs_of_a_and_b_are_the_runners_own_at_the_profiles_seeds(monkeypatch):
    calls = []

    def sweep(settings, progress=False, **axes):
        calls.append((settings, axes))
        return [settings.replace(seed=s) for s in axes["seed"]]

    monkeypatch.setattr(rx, "sweep", sweep)
    monkeypatch.setattr(fx, "sweep", sweep)
    polytope = cm.polytope_runs()
    assert [(s.head, s.dim, s.seed) for s in polytope] == [
        ("simplex", 9, 0), ("simplex", 9, 1), ("learned", 9, 0), ("learned", 9, 1)]
    ensembles = cm.ensemble_runs()
    assert {m: [(s.k, s.use_fdl, s.seed) for s in runs] for m, runs in ensembles.items()} == {
        "classical": [(100, False, 0), (100, False, 1)], "fdl": [(100, True, 0), (100, True, 1)]}
