"""APFS: representative sampler, sample-to-representative losses, proximal term, class mining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from torch import nn

from labkit.methods import apfs
from labkit.methods.apfs import (
    MetricLoss,
    ProximalRegularizer,
    RepresentativeBatchSampler,
    class_distance_matrix,
    constraint_satisfaction,
    mine_classes,
    proximal_penalty,
    representative_loss,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _labels(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(n, c) for c, n in enumerate(counts)])


def _rounds(sampler: RepresentativeBatchSampler, passes: int = 1) -> list[list[list[int]]]:
    batches = [b for _ in range(passes) for b in sampler]
    t = sampler.lifetime
    return [batches[i:i + t] for i in range(0, len(batches), t)]


# ----------------------------------------------------------------------------- sampler

def test_batch_layout_representatives_first_then_fresh_samples():
    labels = _labels([7, 9, 5, 8, 6])
    s = RepresentativeBatchSampler(labels, classes_per_batch=3, samples_per_class=4, lifetime=5,
                                   batches_per_pass=20)
    batches = list(s)
    assert len(batches) == len(s) == 20
    for batch in batches:
        assert len(batch) == 12 == s.batch_size
        reps, rest = batch[:3], batch[3:]
        rep_classes = labels[reps]
        assert len(set(rep_classes)) == 3
        assert sorted(labels[rest].tolist()) == sorted(np.repeat(rep_classes, 3).tolist())
        assert not set(reps) & set(rest)  # fresh samples are never the representative
        for c in rep_classes:  # enough members here: fresh samples distinct within the batch
            members = [i for i in rest if labels[i] == c]
            assert len(set(members)) == len(members)


def test_same_representative_per_class_within_a_round():
    labels = _labels([6, 6, 6, 6, 6, 6])
    s = RepresentativeBatchSampler(labels, 2, 3, lifetime=4, batches_per_pass=24)
    rounds = _rounds(s)
    assert len(rounds) == 6 == len(s.representative_log)
    for r, batches in enumerate(rounds):
        log = dict(zip(s.classes.tolist(), s.representative_log[r].tolist(), strict=True))
        for batch in batches:
            for i in batch[:2]:
                assert log[labels[i]] == i
    # consecutive rounds do change the representatives
    assert not np.array_equal(s.representative_log[0], s.representative_log[1])


def test_every_sample_serves_once_before_any_repeats_across_passes():
    counts = [3, 4, 5, 7]
    labels = _labels(counts)
    s = RepresentativeBatchSampler(labels, 2, 2, lifetime=3, batches_per_pass=9, seed=4)
    _rounds(s, passes=8)  # 24 rounds over 8 passes: queues persist across passes
    log = np.stack(s.representative_log)  # (rounds, C)
    assert log.shape == (24, 4)
    for position, c in enumerate(s.classes):
        members = set(np.flatnonzero(labels == c).tolist())
        seq = log[:, position].tolist()
        n = counts[c]
        for start in range(0, len(seq) - n + 1, n):
            assert set(seq[start:start + n]) == members


def test_classes_cycle_without_mining():
    labels = _labels([4] * 6)
    s = RepresentativeBatchSampler(labels, 3, 2, lifetime=2, batches_per_pass=12)
    batches = list(s)
    for i in range(0, 12, 2):  # two batches of 3 classes cover all 6 classes once
        seen = labels[batches[i][:3] + batches[i + 1][:3]]
        assert sorted(seen.tolist()) == list(range(6))


def test_seeded_and_passes_continue_the_cycle():
    labels = _labels([5, 6, 7, 8])
    a = RepresentativeBatchSampler(labels, 2, 3, lifetime=2, seed=3, batches_per_pass=4)
    b = RepresentativeBatchSampler(labels, 2, 3, lifetime=2, seed=3, batches_per_pass=4)
    c = RepresentativeBatchSampler(labels, 2, 3, lifetime=2, seed=5, batches_per_pass=4)
    first_a, first_b, first_c = list(a), list(b), list(c)
    assert first_a == first_b and first_a != first_c
    assert list(a) != first_a  # a second pass continues, it does not replay


def test_default_length_is_a_multiple_of_lifetime():
    labels = _labels([50] * 4)  # 200 samples, batch 8 -> 25 batches -> 24 with T=4
    s = RepresentativeBatchSampler(labels, 2, 4, lifetime=4)
    assert len(s) == 24 and len(list(s)) == 24
    tiny = RepresentativeBatchSampler(_labels([2, 2]), 2, 2, lifetime=5)
    assert len(tiny) == 5  # at least one round


def test_small_class_draws_fresh_samples_with_repetition():
    labels = _labels([2, 10])
    s = RepresentativeBatchSampler(labels, 2, 4, lifetime=1, batches_per_pass=3)
    for batch in s:
        rep0 = [i for i in batch[:2] if labels[i] == 0][0]
        fresh0 = [i for i in batch[2:] if labels[i] == 0]
        assert len(fresh0) == 3 and set(fresh0) == {1 - rep0}


@pytest.mark.parametrize("kwargs, match", [
    (dict(lifetime=0), "lifetime"),
    (dict(classes_per_batch=4), "classes_per_batch=4 but only 3 classes"),
    (dict(classes_per_batch=1), "classes_per_batch"),
    (dict(samples_per_class=1), "samples_per_class"),
    (dict(batches_per_pass=5), "multiple of lifetime"),
    (dict(rank=2, world_size=2), "rank"),
    (dict(temperature=0.0), "temperature"),
])
def test_invalid_arguments(kwargs, match):
    args = dict(labels=_labels([4, 4, 4]), classes_per_batch=2, samples_per_class=2, lifetime=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        RepresentativeBatchSampler(**args)


def test_single_sample_classes_are_rejected():
    with pytest.raises(ValueError, match=r"classes \[1\] have a single sample"):
        RepresentativeBatchSampler(_labels([4, 1, 4]), 2, 2, lifetime=1)
    with pytest.raises(ValueError, match="integers"):
        RepresentativeBatchSampler(np.array([0.5, 1.0]), 2, 2, lifetime=1)


def test_rank_sharding_is_disjoint_and_balanced():
    labels = _labels([3, 4, 5, 6, 7, 8, 9, 10])
    shards = [RepresentativeBatchSampler(labels, 2, 2, lifetime=3, seed=7, rank=r, world_size=2)
              for r in range(2)]
    a, b = (set(s.classes.tolist()) for s in shards)
    assert not a & b and a | b == set(range(8))
    assert len(shards[0]) == len(shards[1])  # DDP ranks must take the same number of steps
    for s in shards:
        used = {int(labels[i]) for batch in s for i in batch}
        assert used <= set(s.classes.tolist())
    with pytest.raises(ValueError, match="on rank 0 of 4"):
        RepresentativeBatchSampler(labels, 3, 2, lifetime=1, rank=0, world_size=4)


# ----------------------------------------------------------------------------- class mining

def test_mine_classes_nearest_on_planted_distances():
    d = np.array([[0, 5, 1, 9, 2],
                  [5, 0, 3, 3, 3],
                  [1, 3, 0, 4, 8],
                  [9, 3, 4, 0, 7],
                  [2, 3, 8, 7, 0]], dtype=float)
    assert mine_classes(d, 0, 3).tolist() == [0, 2, 4]
    assert mine_classes(d, 3, 2).tolist() == [3, 1]
    assert mine_classes(d, 4, 1).tolist() == [4]
    with pytest.raises(ValueError, match="cannot pick 6"):
        mine_classes(d, 0, 6)


def test_mine_classes_temperature_limits():
    d = np.array([[0, 1, 2, 3], [1, 0, 1, 2], [2, 1, 0, 1], [3, 2, 1, 0]], dtype=float)
    rng = np.random.default_rng(0)
    cold = [mine_classes(d, 0, 2, temperature=1e-3, rng=rng)[1] for _ in range(50)]
    assert set(cold) == {1}
    hot = [mine_classes(d, 0, 2, temperature=1e3, rng=rng)[1] for _ in range(3000)]
    freq = np.bincount(hot, minlength=4)[1:] / 3000
    assert np.allclose(freq, 1 / 3, atol=0.04)
    # tau = 1: P(c) ~ exp(-d), so class 1 is e times as likely as class 2
    mid = [mine_classes(d, 0, 2, temperature=1.0, rng=rng)[1] for _ in range(6000)]
    freq = np.bincount(mid, minlength=4)[1:] / 6000
    expected = np.exp(-np.array([1.0, 2.0, 3.0]))
    assert np.allclose(freq, expected / expected.sum(), atol=0.03)


def test_sampler_hard_class_mining_picks_planted_nearest_classes():
    # classes {0,1,2} share one direction, {3,4,5} another: a batch of 3 classes mined from any
    # seed class must be exactly that seed's cluster
    labels = _labels([5] * 6)
    directions = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.98, -0.2],
                               [0.0, 1.0], [0.1, 0.99], [-0.2, 0.98]])
    calls = []

    def embed_fn(indices):
        calls.append(indices.clone())
        return directions[torch.as_tensor(labels)[indices]]

    s = RepresentativeBatchSampler(labels, 3, 2, lifetime=4, hard_class_mining=True,
                                   embed_fn=embed_fn, batches_per_pass=12)
    batches = list(s)
    assert len(calls) == 3  # one embedding pass per round, not per batch
    for batch in batches:
        classes = set(labels[batch[:3]].tolist())
        assert classes in ({0, 1, 2}, {3, 4, 5})
    # mined classes leave the class queue with their seed: the next seed comes from the other
    # group, so each pair of batches covers every class once
    for first in range(0, 12, 2):
        pair = labels[batches[first][:3] + batches[first + 1][:3]]
        assert sorted(pair.tolist()) == list(range(6))
    # D_rep is built from the representatives of the current round
    assert torch.equal(calls[-1], torch.as_tensor(s.representatives))


def test_sampler_mining_needs_an_embedder():
    s = RepresentativeBatchSampler(_labels([3, 3]), 2, 2, lifetime=1, hard_class_mining=True)
    with pytest.raises(ValueError, match="embed_fn"):
        next(iter(s))


def test_class_distance_matrix_is_normalised_euclidean():
    e = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])
    d = class_distance_matrix(e)
    assert torch.allclose(d, torch.tensor([[0, 2 ** 0.5, 2], [2 ** 0.5, 0, 2 ** 0.5],
                                           [2, 2 ** 0.5, 0]], dtype=torch.float64))


def test_representative_embedder_restores_mode_and_embeds_indices():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3))
    images = torch.randn(10, 1, 2, 2)
    model.train()
    embed = apfs.representative_embedder(model, images, batch_size=2)
    out = embed(torch.tensor([4, 1, 7]))
    assert model.training
    model.eval()
    with torch.no_grad():
        assert torch.allclose(out, model(images[[4, 1, 7]]))


# ----------------------------------------------------------------------------- losses

def _rep_batch(seed=0, p=3, m=4, d=5):
    g = torch.Generator().manual_seed(seed)
    labels = torch.cat([torch.arange(p), torch.arange(p).repeat_interleave(m - 1)])
    emb = torch.randn(p * m, d, generator=g, dtype=torch.float64)
    return emb, labels


def _split(emb, labels, p):
    x = F.normalize(emb[p:], dim=1)
    r = F.normalize(emb[:p], dim=1)
    return x, labels[p:], r, labels[:p]


def _avg_nonzero(v):
    nz = v[v > 0]
    return nz.mean() if len(nz) else v.sum() * 0


def test_contrastive_on_representatives_matches_formula():
    emb, labels = _rep_batch()
    x, y, r, ry = _split(emb, labels, 3)
    d = torch.cdist(x, r)
    same = y[:, None] == ry[None]
    mp, mn = 0.1, 0.9
    expected = _avg_nonzero((d[same] - mp).clamp(min=0)) + _avg_nonzero((mn - d[~same]).clamp(min=0))
    loss, _ = apfs.base_loss("contrastive", pos_margin=mp, neg_margin=mn)
    got = representative_loss(loss, emb, labels, 3)
    assert torch.allclose(got, expected)


def test_triplet_on_representatives_matches_formula():
    emb, labels = _rep_batch(1)
    x, y, r, ry = _split(emb, labels, 3)
    d = torch.cdist(x, r)
    terms = []
    for i in range(len(x)):
        for c in range(3):
            if c != y[i]:
                terms.append(d[i, y[i]] - d[i, c] + 0.3)
    expected = _avg_nonzero(torch.stack(terms).clamp(min=0))
    loss, _ = apfs.base_loss("triplet", margin=0.3)
    assert torch.allclose(representative_loss(loss, emb, labels, 3), expected)


@pytest.mark.parametrize("mined", [False, True])
def test_multi_similarity_on_representatives_matches_formula(mined):
    emb, labels = _rep_batch(2, p=4, m=3)
    x, y, r, ry = _split(emb, labels, 4)
    s = x @ r.T
    a, b, lam, eps = 2.0, 10.0, 0.5, 0.1
    per_anchor = []
    for i in range(len(x)):
        pos = ry == y[i]
        sp, sn = s[i, pos], s[i, ~pos]
        # the MS miner's rule; without it every pair counts (the authors' setting)
        keep_p = sp[sp - eps < sn.max()] if mined else sp
        keep_n = sn[sn + eps > sp.min()] if mined else sn
        term = torch.log1p(torch.exp(-a * (keep_p - lam)).sum()) / a
        term = term + torch.log1p(torch.exp(b * (keep_n - lam)).sum()) / b
        per_anchor.append(term)
    expected = torch.stack(per_anchor).mean()
    options = dict(miner="multi_similarity", epsilon=eps) if mined else {}
    loss, miner = apfs.base_loss("multi_similarity", alpha=a, beta=b, base=lam, **options)
    assert (miner is not None) == mined
    assert torch.allclose(representative_loss(loss, emb, labels, 4, miner), expected)


def _ms_batch(seed=5, classes=4, per_class=5, d=8):
    # float32: MetricLoss computes on float32 embeddings
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(per_class)
    return torch.randn(classes * per_class, d, generator=g), labels


def test_multi_similarity_has_no_miner_by_default_as_in_the_authors_framework():
    emb, labels = _ms_batch()
    pml_loss = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    unmined = pml_loss(emb, labels)
    mined = pml_loss(emb, labels, miners.MultiSimilarityMiner(epsilon=0.1)(emb, labels))
    assert not torch.allclose(mined, unmined)  # the batch tells the two settings apart
    loss, miner = apfs.base_loss("multi_similarity")
    assert miner is None
    assert torch.allclose(loss(emb, labels), unmined)
    assert torch.allclose(MetricLoss("multi_similarity")(nn.Identity(), emb, labels), unmined)
    # APFS: the same on sample-to-representative pairs (first rows are one per class)
    order = torch.cat([torch.arange(0, 20, 5), torch.tensor(
        [i for i in range(20) if i % 5])])
    rep_emb, rep_labels = emb[order], labels[order]
    want = pml_loss(rep_emb[4:], rep_labels[4:], ref_emb=rep_emb[:4], ref_labels=rep_labels[:4])
    got = MetricLoss("multi_similarity", representatives=4)(nn.Identity(), rep_emb, rep_labels)
    assert torch.allclose(got, want)


def test_multi_similarity_miner_is_an_option():
    emb, labels = _ms_batch()
    pml_loss = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
    for epsilon in (0.1, 0.3):
        mined = pml_loss(emb, labels,
                         miners.MultiSimilarityMiner(epsilon=epsilon)(emb, labels))
        _, miner = apfs.base_loss("multi_similarity", miner="multi_similarity", epsilon=epsilon)
        assert isinstance(miner, miners.MultiSimilarityMiner) and miner.epsilon == epsilon
        got = MetricLoss("multi_similarity", miner="multi_similarity",
                         epsilon=epsilon)(nn.Identity(), emb, labels)
        assert torch.allclose(got, mined)
    with pytest.raises(ValueError, match="unknown miner"):
        apfs.base_loss("multi_similarity", miner="hard_negative")
    with pytest.raises(ValueError, match="epsilon"):
        apfs.base_loss("multi_similarity", epsilon=0.1)  # no silent drop of the miner's option


@pytest.mark.parametrize("name, miner", [(name, None) for name in apfs.LOSS_NAMES]
                         + [("multi_similarity", "multi_similarity")])
def test_representative_loss_gradient_matches_finite_differences(name, miner):
    emb, labels = _rep_batch(3)
    emb.requires_grad_(True)
    loss, miner = apfs.base_loss(name, miner=miner,
                                 **({"beta": 5.0} if name == "multi_similarity" else {}))
    assert torch.autograd.gradcheck(
        lambda e: representative_loss(loss, e, labels, 3, miner), (emb,), eps=1e-6, atol=1e-5)


def test_representative_loss_ignores_sample_to_sample_pairs():
    # moving a sample changes only its own rows: the loss's gradient w.r.t. another sample is
    # unchanged when that other sample is fixed, i.e. there is no sample-sample coupling
    emb, labels = _rep_batch(4)
    loss, _ = apfs.base_loss("contrastive", neg_margin=2.0)  # every negative term active
    e = emb.clone().requires_grad_(True)
    representative_loss(loss, e, labels, 3).backward()
    g1 = e.grad[5].clone()
    emb2 = emb.clone()
    emb2[6] += 0.3 * torch.randn(5, dtype=torch.float64)
    e2 = emb2.clone().requires_grad_(True)
    representative_loss(loss, e2, labels, 3).backward()
    assert torch.allclose(e2.grad[5], g1)


def test_representative_loss_rejects_bad_layout():
    emb, labels = _rep_batch()
    loss, _ = apfs.base_loss("contrastive")
    bad = labels.clone()
    bad[1] = bad[0]
    with pytest.raises(ValueError, match="one representative per class"):
        representative_loss(loss, emb, bad, 3)
    with pytest.raises(ValueError, match="num_representatives"):
        representative_loss(loss, emb, labels, len(labels))
    with pytest.raises(ValueError, match="unknown loss"):
        apfs.base_loss("arcface")


# ----------------------------------------------------------------------------- proximal term

def test_proximal_penalty_zero_at_anchor_and_gradient():
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True),
              torch.randn(5, generator=g, dtype=torch.float64, requires_grad=True)]
    anchors = [p.detach().clone() for p in params]
    assert proximal_penalty(params, anchors, 0.7).item() == 0.0
    shifted = [a + torch.randn(a.shape, generator=g, dtype=torch.float64) for a in anchors]
    value = proximal_penalty(params, shifted, 0.7)
    grads = torch.autograd.grad(value, params)
    for p, a, gr in zip(params, shifted, grads, strict=True):
        assert torch.allclose(gr, 0.7 * (p - a))  # (lambda/2)||.||^2: the authors' pull
    squared = sum(((p - a) ** 2).sum() for p, a in zip(params, shifted, strict=True))
    assert torch.allclose(value, 0.7 / 2 * squared)
    assert torch.autograd.gradcheck(lambda u, v: proximal_penalty([u, v], shifted, 0.7),
                                    tuple(params))
    with pytest.raises(ValueError, match="lambda"):
        proximal_penalty(params, anchors, -1.0)


def test_regularizer_resets_anchor_every_lifetime_steps():
    model = nn.Linear(3, 2)
    reg = ProximalRegularizer(model, strength=0.5, lifetime=3)
    start = [p.detach().clone() for p in model.parameters()]
    assert reg.penalty().item() == 0.0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    values = []
    for step in range(1, 7):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
        # before the boundary the anchor is the round's start: penalty (lambda/2)||theta - start||^2
        if step in (1, 2):
            expected = sum(((p - s) ** 2).sum() for p, s in zip(model.parameters(), start, strict=True))
            assert torch.allclose(reg.penalty(), 0.5 / 2 * expected)
            assert reg.distance() == pytest.approx(expected.sqrt().item())
        reg.on_step_end()
        values.append(reg.penalty().item())
    assert values[2] == 0.0 and values[5] == 0.0  # reset at steps 3 and 6
    assert values[0] > 0 and values[3] > 0
    assert reg.resets == 3  # the constructor's plus two round boundaries


def test_metric_loss_adds_penalty_and_baseline_runs():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    images = torch.randn(8, 1, 2, 2)
    labels = torch.tensor([0, 1, 0, 0, 0, 1, 1, 1])
    reg = ProximalRegularizer(model, 1.0, lifetime=2)
    plain = MetricLoss("contrastive", representatives=2)
    with_reg = MetricLoss("contrastive", representatives=2, regularizer=reg)
    with torch.no_grad():
        model[1].weight += 0.5
    want = plain(model, images, labels) + reg.penalty()
    assert torch.allclose(with_reg(model, images, labels), want)
    for name in apfs.LOSS_NAMES:
        assert torch.isfinite(MetricLoss(name)(model, images, labels))


def test_constraint_satisfaction_counts():
    x = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    r = torch.tensor([[0.5, 0.0], [3.0, 1.0]])
    intra, inter = constraint_satisfaction(x, torch.tensor([0, 1]), r, torch.tensor([0, 1]),
                                           alpha=1.0, beta=2.6)
    assert intra == 1.0 and inter == 0.5  # d(x0, r1)=3.16 >= 2.6 but d(x1, r0)=2.5 < 2.6


def test_round_satisfaction_reads_each_round_at_its_start_and_end():
    # two samples per class on a line; round 0's representatives are rows (0, 2), round 1's
    # rows (1, 3); snapshots at the start of round 0, between the rounds, and at the end
    labels = torch.tensor([0, 0, 1, 1])
    line = [[0.0, 0.4, 1.0, 5.0], [0.0, 1.5, 3.0, 3.1], [0.0, 2.0, 4.2, 4.1]]
    snapshots = [torch.tensor([[x, 0.0] for x in xs]) for xs in line]
    rows = apfs.round_satisfaction(snapshots, labels, np.array([[0, 2], [1, 3]]),
                                   alpha=0.5, beta=2.0)
    assert len(rows) == 2
    # round 0 start, reps at 0 and 1: within alpha 0, 0.4, 0 (not 4); beyond beta only 5
    assert rows[0]["before"] == (0.75, 0.25)
    # the middle snapshot read with round 0's reps (0, 3): within 0, 0, 0.1 (not 1.5); beyond
    # 3, 3, 3.1 (not 1.5)
    assert rows[0]["after"] == (0.75, 0.75)
    # the same snapshot with round 1's reps (1.5, 3.1): beyond only 3.1 (1.6, 1.5, 1.6 are not)
    assert rows[1]["before"] == (0.75, 0.25)
    # the end, reps at 2 and 4.1: within 0, 0.1, 0 (not 2); beyond 4.1, 2.1, 2.2, 2.1
    assert rows[1]["after"] == (0.75, 1.0)


def test_tiny_network_embeds_to_dim():
    net = apfs.tiny_network((4, 8, 8), 2)
    assert net(torch.rand(3, 1, 28, 28)).shape == (3, 2) and net.head is None


# ----------------------------------------------------------------------------- a small run

def _blobs(seed, num_classes=6, per_class=30, dim=8):
    centres = 1.5 * torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    x = centres.repeat_interleave(per_class, 0) + torch.randn(num_classes * per_class, dim,
                                                              generator=g)
    return x, torch.arange(num_classes).repeat_interleave(per_class)


def _recall_at_1(emb, labels):
    e = F.normalize(emb, dim=1)
    sim = e @ e.T
    sim.fill_diagonal_(-2)
    return (labels[sim.argmax(1)] == labels).double().mean().item()


def test_apfs_training_beats_the_untrained_embedding():
    torch.manual_seed(0)
    x, y = _blobs(seed=100)
    xt, yt = _blobs(seed=1)  # a fresh draw of the same classes
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    # a random net mixes the blobs; training must clearly improve held-out retrieval
    before = _recall_at_1(model(xt).detach(), yt)
    sampler = RepresentativeBatchSampler(y, 3, 5, lifetime=5, seed=0, batches_per_pass=40,
                                         hard_class_mining=True,
                                         embed_fn=apfs.representative_embedder(model, x))
    reg = ProximalRegularizer(model, 2e-3, lifetime=5)
    loss_fn = MetricLoss("contrastive", representatives=3, regularizer=reg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        for batch in sampler:
            index = torch.tensor(batch)
            loss = loss_fn(model, x[index], y[index])
            opt.zero_grad()
            loss.backward()
            opt.step()
            reg.on_step_end()
    after = _recall_at_1(model(xt).detach(), yt)
    oracle = _recall_at_1(xt, yt)  # the raw inputs: what a good embedding can keep
    assert after > before + 0.25 and after > oracle - 0.05
    assert reg.resets == 1 + 120 // 5


def test_gradient_form_of_the_regularizer_matches_the_penalty():
    torch.manual_seed(0)
    x = torch.randn(6, 3, dtype=torch.float64)
    grads = []
    for via_gradient in (False, True):
        torch.manual_seed(1)
        model = nn.Linear(3, 2).double()
        reg = ProximalRegularizer(model, 0.4, lifetime=5, via_gradient=via_gradient)
        with torch.no_grad():
            model.weight += 0.2  # move away from the anchor
        loss = model(x).pow(2).sum()
        if not via_gradient:
            loss = loss + reg.penalty()
        loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b)
    torch.manual_seed(1)
    plain = nn.Linear(3, 2).double()
    with torch.no_grad():
        plain.weight += 0.2
    plain(x).pow(2).sum().backward()
    # the hook adds lambda * (theta - anchor), the authors' DistanceRegularizer: 0.4 * 0.2
    assert torch.allclose(grads[1][0] - plain.weight.grad, torch.full((2, 3), 0.08, dtype=torch.float64))
    assert torch.allclose(grads[1][1], plain.bias.grad)  # the bias did not move from its anchor
