"""Tests for labkit.core.evaluate: retrieval metrics against a brute-force reference, k-means / NMI,
accuracy, and the feature-geometry measures on planted configurations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from labkit.core import evaluate
from labkit.core.evaluate import (
    accuracy,
    alignment_to_targets,
    angular_spread,
    class_means,
    geometry_summary,
    kmeans,
    mean_angle_between_means,
    min_angle_between_means,
    pairwise_mean_angles,
    retrieval_metrics,
)
from labkit.core.models import Network


def brute_force_retrieval(x: np.ndarray, labels: list[int], ks=(1, 2, 4, 8)) -> dict[str, float]:
    """O(N^2) reference, one query at a time with python loops (cosine similarity)."""
    n = len(labels)
    unit = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x.tolist()]
    recall = {k: 0 for k in ks}
    map_sum = rp_sum = 0.0
    queries = 0
    for i in range(n):
        r = sum(1 for j in range(n) if j != i and labels[j] == labels[i])
        if r == 0:
            continue  # a lone sample is not a query
        queries += 1
        sims = [(sum(a * b for a, b in zip(unit[i], unit[j], strict=True)), j) for j in range(n) if j != i]
        ranked = [j for _, j in sorted(sims, reverse=True)]
        relevant = [labels[j] == labels[i] for j in ranked]
        for k in ks:
            recall[k] += any(relevant[:k])
        hits, ap = 0, 0.0
        for position in range(1, r + 1):
            if relevant[position - 1]:
                hits += 1
                ap += hits / position
        map_sum += ap / r
        rp_sum += sum(relevant[:r]) / r
    out = {f"recall@{k}": recall[k] / queries for k in ks}
    out["map@r"] = map_sum / queries
    out["r_precision"] = rp_sum / queries
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_metrics_match_brute_force(seed):
    g = torch.Generator().manual_seed(seed)
    # class sizes 1..7 plus another singleton: classes 0 and 7 have a single sample each
    labels = torch.cat([torch.full((size,), c) for c, size in enumerate([1, 2, 3, 4, 5, 6, 7, 1])])
    labels = labels[torch.randperm(len(labels), generator=g)]
    x = torch.randn(len(labels), 3, generator=g, dtype=torch.float64) + 0.8 * torch.nn.functional.one_hot(
        labels % 3, 3).double()
    expected = brute_force_retrieval(x.numpy(), labels.tolist())
    got = retrieval_metrics(x.float(), labels, nmi=False)
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, abs=1e-6), key
    chunked = retrieval_metrics(x.float(), labels, nmi=False, chunk=5)
    for key, value in expected.items():
        assert chunked[key] == pytest.approx(value, abs=1e-6), key
    # a non-trivial case: neither perfect nor empty
    assert 0 < got["map@r"] < 1 and got["recall@1"] < got["recall@8"]


def test_retrieval_metrics_scale_invariant_and_perfect():
    labels = torch.arange(4).repeat_interleave(5)
    directions = torch.eye(4)[labels]
    noise = 0.01 * torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    x = (directions + noise) * torch.rand(20, 1, generator=torch.Generator().manual_seed(1)).add(0.5)
    m = retrieval_metrics(x, labels)
    for key in ("recall@1", "recall@8", "map@r", "r_precision", "nmi"):
        assert m[key] == pytest.approx(1.0), key


def test_retrieval_metrics_errors():
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(4), torch.arange(4))
    with pytest.raises(ValueError):
        retrieval_metrics(torch.rand(4, 2), torch.arange(3))
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(torch.rand(4, 2), torch.tensor([0, 0, 1, 1]), ks=(0, 1))
    with pytest.raises(ValueError, match="single sample"):
        retrieval_metrics(torch.rand(4, 2), torch.arange(4), nmi=False)
    with pytest.raises(ValueError, match="two samples"):
        retrieval_metrics(torch.rand(0, 2), torch.arange(0))
    bad = torch.rand(6, 2)
    bad[3, 1] = math.nan  # topk would rank it everyone's nearest neighbour
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(bad, torch.tensor([0, 0, 1, 1, 2, 2]))


def test_retrieval_metrics_repeated_k_counts_once():
    g = torch.Generator().manual_seed(0)
    x, labels = torch.randn(40, 5, generator=g), torch.randint(0, 5, (40,), generator=g)
    once = retrieval_metrics(x, labels, ks=(1, 8), nmi=False)
    repeated = retrieval_metrics(x, labels, ks=(8, 1, 1), nmi=False)
    assert repeated["recall@1"] == once["recall@1"] and repeated["recall@8"] == once["recall@8"]


def planted_blobs(seed: int = 0, k: int = 4, per: int = 25, spread: float = 0.05):
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.eye(k, 3 + k)
    labels = torch.arange(k).repeat_interleave(per)
    return centres[labels] + spread * torch.randn(k * per, 3 + k, generator=g), labels


def test_nmi_is_one_for_separated_clusters():
    x, labels = planted_blobs()
    assert retrieval_metrics(x, labels)["nmi"] == pytest.approx(1.0)


def test_nmi_is_low_for_random_labels():
    x, labels = planted_blobs()
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    assert retrieval_metrics(x, shuffled)["nmi"] < 0.3


def test_kmeans_recovers_planted_blobs():
    x, labels = planted_blobs(seed=1, k=3, per=30)
    assign = kmeans(x, 3, seed=0)  # this init starts with two centroids in one blob
    assert assign.shape == labels.shape and assign.dtype == torch.long
    # a bijection between clusters and blobs
    pairs = {(int(a), int(b)) for a, b in zip(assign, labels, strict=True)}
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3
    assert torch.equal(assign, kmeans(x, 3, seed=0))
    # every point is assigned to its nearest centroid
    centroids = torch.stack([x[assign == c].mean(0) for c in range(3)])
    assert torch.equal(torch.cdist(x, centroids).argmin(1), assign)


def test_kmeans_early_stop_is_the_fixed_point_and_row_scale_is_a_scaling():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 6, generator=g)
    # stopping when no assignment changes gives what running many more iterations gives
    assert torch.equal(kmeans(x, 7, iters=20, seed=1), kmeans(x, 7, iters=500, seed=1))
    scale = torch.rand(400, generator=g) + 0.5
    assert torch.equal(evaluate._kmeans(x, 7, seed=1, row_scale=scale),
                       kmeans(x * scale[:, None], 7, seed=1))


def test_kmeans_never_loses_a_cluster():
    # random init can leave a centroid with no points; it must be re-seeded, not dropped
    for seed in range(12):
        x, _ = planted_blobs(seed=seed, k=6, per=10)
        assert kmeans(x, 6, seed=seed).unique().numel() == 6


def test_kmeans_keeps_splitting_while_a_cluster_is_empty():
    # four distinct points, repeated: a split whose copy wins no point leaves a cluster empty
    # with no assignment changed; stopping there returned 3 clusters for half of the seeds
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3, 3, 3, 3])
    x = torch.eye(4)[labels]
    for seed in range(20):
        assert kmeans(x, 4, seed=seed).unique().numel() == 4, seed
    assert retrieval_metrics(x, labels, ks=(1,), seed=0)["nmi"] == pytest.approx(1.0)


def test_kmeans_bounds():
    x = torch.rand(5, 2)
    assert sorted(kmeans(x, 5).tolist()) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError):
        kmeans(x, 6)
    with pytest.raises(ValueError):
        kmeans(x, 0)


def test_accuracy_and_model_accuracy():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 1])) == 0.75
    with pytest.raises(ValueError):
        accuracy(logits, torch.tensor([0, 1]))
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2))
    net = Network(nn.Identity(), nn.Flatten(), head)
    images = logits.view(4, 2, 1, 1)
    assert evaluate.model_accuracy(net, images, torch.tensor([0, 1, 0, 0])) == 0.75
    assert torch.equal(evaluate.embed(net, images, batch_size=3), logits)
    assert torch.equal(evaluate.predict_logits(net, images), logits)


# ----------------------------------------------------------------------------- geometry


def unit(deg: float) -> torch.Tensor:
    return torch.tensor([math.cos(math.radians(deg)), math.sin(math.radians(deg))], dtype=torch.float64)


def test_angular_spread_zero_on_rays():
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(3, 5, generator=g, dtype=torch.float64)
    labels = torch.arange(3).repeat(10)
    features = directions[labels] * torch.rand(30, 1, generator=g, dtype=torch.float64).add(0.1)
    spread = angular_spread(features, labels)
    assert spread.shape == (3,)
    assert torch.allclose(spread, torch.zeros(3, dtype=torch.float64), atol=1e-5)


def test_angular_spread_planted_angles():
    # class 0: two unit vectors at +-10 degrees around 0; class 1: +-30 degrees around 90
    features = torch.stack([unit(10), unit(-10), unit(120), unit(60)])
    labels = torch.tensor([0, 0, 1, 1])
    assert torch.allclose(angular_spread(features, labels), torch.tensor([10.0, 30.0], dtype=torch.float64),
                          atol=1e-9)


def _planted_means(angles=(0.0, 50.0, 130.0)):
    """Two samples per class placed symmetrically so that the class mean is exactly unit(angle)."""
    rows, labels = [], []
    for k, a in enumerate(angles):
        offset = 0.3 * unit(a + 90)
        rows += [unit(a) + offset, unit(a) - offset]
        labels += [k, k]
    return torch.stack(rows), torch.tensor(labels)


def test_angles_between_planted_means():
    features, labels = _planted_means()
    assert torch.allclose(class_means(features, labels), torch.stack([unit(0), unit(50), unit(130)]))
    angles = pairwise_mean_angles(features, labels)
    expected = torch.tensor([[0, 50, 130], [50, 0, 80], [130, 80, 0]], dtype=torch.float64)
    assert torch.allclose(angles, expected, atol=1e-5)
    assert min_angle_between_means(features, labels) == pytest.approx(50, abs=1e-5)
    assert mean_angle_between_means(features, labels) == pytest.approx((50 + 130 + 80) / 3, abs=1e-5)


def test_alignment_to_targets():
    features, labels = _planted_means()
    targets = torch.stack([unit(10), unit(50), unit(100), unit(0)])  # one extra target is ignored
    assert torch.allclose(alignment_to_targets(features, labels, targets),
                          torch.tensor([10.0, 0.0, 30.0], dtype=torch.float64), atol=1e-5)
    with pytest.raises(ValueError):
        alignment_to_targets(features, labels, targets[:2])
    with pytest.raises(ValueError):
        alignment_to_targets(features, labels, torch.zeros(3, 3))
    summary = geometry_summary(features, labels, targets)
    assert summary["min_angle_deg"] == pytest.approx(50, abs=1e-5)
    assert summary["max_angle_to_target_deg"] == pytest.approx(30, abs=1e-5)
    assert summary["spread_deg"] == pytest.approx(math.degrees(math.atan(0.3)), abs=1e-5)
    assert "max_angle_to_target_deg" not in geometry_summary(features, labels)


def test_class_means_with_empty_class():
    means = class_means(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([0, 0]), num_classes=2)
    assert torch.equal(means, torch.tensor([[2.0, 3.0], [0.0, 0.0]]))


# ----------------------------------------------------------------------------- attention vs masks

def _square_mask():
    """One 4x4 image whose object is its top-left 2x2 block."""
    masks = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :2] = True
    return masks


def test_mask_cover_is_the_area_share_per_cell():
    masks = _square_mask()
    masks[0, 0, 2, 2] = True  # one pixel of the bottom-right 2x2 cell
    cover = evaluate.mask_cover(masks, (2, 2))
    assert torch.equal(cover, torch.tensor([[[1.0, 0.0], [0.0, 0.25]]]))
    with pytest.raises(ValueError, match="tile"):
        evaluate.mask_cover(masks, (3, 3))


def test_mass_inside_by_hand():
    masks = _square_mask()
    heat = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])  # a 2x2 map: 3 of its 4 units on the object
    assert evaluate.mass_inside(heat, masks).item() == pytest.approx(0.75)
    uniform = torch.ones(1, 4, 4)
    assert evaluate.mass_inside(uniform, masks).item() == pytest.approx(0.25)  # chance: the area
    with pytest.raises(ValueError, match="non-negative"):
        evaluate.mass_inside(-uniform, masks)
    with pytest.raises(ValueError, match="without mass"):
        evaluate.mass_inside(torch.zeros(1, 4, 4), masks)


def test_pointing_hits_by_hand():
    masks = _square_mask().repeat(2, 1, 1, 1)
    heat = torch.zeros(2, 4, 4)
    heat[0, 1, 1] = 1.0  # on the object
    heat[1, 3, 0] = 1.0  # off it
    assert evaluate.pointing_hits(heat, masks).tolist() == [True, False]
    coarse = torch.tensor([[[0.0, 0.0], [0.0, 1.0]]])  # a 2x2 map peaking on a cell the object misses
    assert evaluate.pointing_hits(coarse, _square_mask()).tolist() == [False]
