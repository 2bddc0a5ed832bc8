"""Tests for labkit.methods.fdl: exact loss values, gradients, voting, fusion, Grad-CAM, IoU."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.models import NetworkOutput
from labkit.methods import fdl


class TinyNet(nn.Module):
    """conv3x3 -> ReLU -> (max-pool) feature map; flatten -> linear logits."""

    def __init__(self, in_channels: int = 1, width: int = 4, size: int = 8, classes: int = 3,
                 pool: bool = True) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
                                      nn.MaxPool2d(2) if pool else nn.Identity())
        side = size // 2 if pool else size
        self.neck = nn.Flatten()
        self.head = nn.Linear(width * side * side, classes)

    def forward_all(self, x: torch.Tensor) -> NetworkOutput:
        fmap = self.backbone(x)
        emb = self.neck(fmap)
        return NetworkOutput(fmap, emb, self.head(emb))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_all(x).logits


def reference_loss(maps: list[np.ndarray], lc: float, le: float) -> float:
    """Direct numpy re-computation of the formulas in docs/methods/fdl.md, one sample and one pair at a time."""
    total = 0.0
    batch = maps[0].shape[0]
    for b in range(batch):
        descs = []
        for fmap in maps:
            d = fmap[b].mean(axis=0)
            descs.append(np.where(d > d.mean(), d, 0.0).ravel())
        for i, j in combinations(range(len(descs)), 2):
            ni = max(np.sqrt((descs[i] ** 2).sum()), 1e-6)
            nj = max(np.sqrt((descs[j] ** 2).sum()), 1e-6)
            cos = float(descs[i] @ descs[j]) / (ni * nj)
            euc = float(np.mean(np.exp(-((descs[i] - descs[j]) ** 2))))
            total += lc * cos + le * euc
    return total / batch


# ----------------------------------------------------------------------------- the loss

def test_loss_matches_direct_recomputation():
    gen = torch.Generator().manual_seed(0)
    maps = [torch.rand(4, 3, 5, 6, generator=gen, dtype=torch.float64) * 2 for _ in range(4)]
    got = fdl.feature_distance_loss(maps, 0.7, 3.0)
    want = reference_loss([m.numpy() for m in maps], 0.7, 3.0)
    assert got.shape == ()
    assert got.item() == pytest.approx(want, rel=1e-12)
    # defaults are the code's VGG/CIFAR-10 weights (1, 10)
    assert fdl.feature_distance_loss(maps).item() == pytest.approx(
        reference_loss([m.numpy() for m in maps], 1.0, 10.0), rel=1e-12)


def test_identical_maps_give_maximal_similarity():
    fmap = torch.rand(3, 4, 6, 6, dtype=torch.float64) + 0.1
    for members in (2, 3, 5):
        pairs = members * (members - 1) // 2
        s_cos, s_euc = fdl.fdl_similarity_terms([fmap.clone() for _ in range(members)])
        torch.testing.assert_close(s_cos, torch.full((3,), float(pairs), dtype=torch.float64))
        torch.testing.assert_close(s_euc, torch.full((3,), float(pairs), dtype=torch.float64))
        loss = fdl.feature_distance_loss([fmap] * members, 1.0, 10.0)
        assert loss.item() == pytest.approx(11.0 * pairs)


def test_disjoint_above_mean_regions_give_zero_cosine():
    left = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    right = torch.zeros(2, 3, 4, 4, dtype=torch.float64)
    left[..., :2] = 1.0
    right[..., 2:] = 2.0
    s_cos, s_euc = fdl.fdl_similarity_terms([left, right])
    torch.testing.assert_close(s_cos, torch.zeros(2, dtype=torch.float64))
    # half the positions differ by 1 (left) and half by 2 (right): mean of exp(-1), exp(-4)
    want = 0.5 * (math.exp(-1) + math.exp(-4))
    torch.testing.assert_close(s_euc, torch.full((2,), want, dtype=torch.float64))


def test_mask_is_strictly_above_mean_and_hard():
    fmap = torch.tensor([[1.0, 2.0], [3.0, 2.0]]).expand(1, 2, 2, 2)  # channel mean is the same
    desc = fdl.fdl_descriptor(fmap)
    torch.testing.assert_close(desc, torch.tensor([[[0.0, 0.0], [3.0, 0.0]]]))  # mean 2 is dropped
    torch.testing.assert_close(fdl.fdl_descriptor(fmap, mask=False), fmap[:, 0])
    # a constant map has nothing above its mean: cosine 0 with anything, no NaN
    const = torch.ones(1, 2, 2, 2)
    s_cos, s_euc = fdl.fdl_similarity_terms([const, fmap])
    assert s_cos.item() == 0.0
    assert s_euc.item() == pytest.approx((3 + math.exp(-9)) / 4)
    # ... also when the float mean of the constant rounds below it (0.1 on 7x7 in float32)
    c = torch.full((1, 1, 7, 7), 0.1)
    assert c.mean() < 0.1  # the case the explicit test exists for
    assert fdl.fdl_descriptor(c).count_nonzero() == 0
    assert fdl.fdl_similarity_terms([c, c])[0].item() == 0.0


def test_max_norm_and_scale_behaviour():
    gen = torch.Generator().manual_seed(1)
    maps = [torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64) for _ in range(3)]
    scaled = [m * s for m, s in zip(maps, (0.5, 3.0, 7.0), strict=True)]
    s_cos, s_euc = fdl.fdl_similarity_terms(maps)
    s_cos2, s_euc2 = fdl.fdl_similarity_terms(scaled)
    torch.testing.assert_close(s_cos, s_cos2)  # cosine ignores per-member scale ...
    assert not torch.allclose(s_euc, s_euc2)  # ... the Gaussian term does not
    a = fdl.feature_distance_loss(maps, max_norm=True)
    b = fdl.feature_distance_loss(scaled, max_norm=True)
    assert a.item() == pytest.approx(b.item(), rel=1e-12)  # max_norm removes scale entirely


def test_gradcheck_float64():
    gen = torch.Generator().manual_seed(2)
    maps = [torch.rand(2, 3, 4, 4, generator=gen, dtype=torch.float64).requires_grad_(True)
            for _ in range(3)]
    # random continuous values sit away from the mask threshold, where the loss is smooth
    assert torch.autograd.gradcheck(lambda *ms: fdl.feature_distance_loss(list(ms), 0.3, 2.0),
                                    maps, eps=1e-7, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    fmap = torch.rand(2, 3, 4, 4)
    with pytest.raises(ValueError, match="M >= 2"):
        fdl.feature_distance_loss([fmap])
    with pytest.raises(ValueError, match="same shape"):
        fdl.feature_distance_loss([fmap, torch.rand(2, 3, 5, 4)])
    with pytest.raises(ValueError, match="B, C, H, W"):
        fdl.feature_distance_loss([fmap[0], fmap[1]])
    with pytest.raises(ValueError, match="single tensor"):
        fdl.feature_distance_loss(torch.stack([fmap, fmap]))
    with pytest.raises(ValueError, match="lambda_cos"):
        fdl.feature_distance_loss([fmap, fmap], lambda_cos=-1.0)
    with pytest.raises(ValueError, match="lambda_euc"):
        fdl.feature_distance_loss([fmap, fmap], lambda_euc=float("nan"))
    with pytest.raises(ValueError, match="lambda_euc"):
        fdl.JointLoss(lambda_euc=-0.1)
    with pytest.raises(ValueError, match="at least 2"):
        fdl.FDLEnsemble([TinyNet()])
    with pytest.raises(ValueError, match="forward_all"):
        fdl.FDLEnsemble([nn.Linear(2, 2), nn.Linear(2, 2)])


# ----------------------------------------------------------------------------- ensemble + joint loss

def make_ensemble(members: int = 3, seed: int = 0, **kw) -> fdl.FDLEnsemble:
    return fdl.FDLEnsemble(fdl.make_members(lambda: TinyNet(**kw), members, seed=seed))


def test_members_are_independent_and_reproducible():
    a, b = make_ensemble(seed=3), make_ensemble(seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb)
    w = [m.backbone[0].weight for m in a.members]
    assert not torch.allclose(w[0], w[1]) and not torch.allclose(w[1], w[2])
    with pytest.raises(ValueError, match="at least 2"):
        fdl.make_members(TinyNet, 1)


def test_fdl_gradients_reach_every_member():
    ens = make_ensemble(members=4)
    x = torch.rand(5, 1, 8, 8)
    loss = fdl.feature_distance_loss(ens.feature_maps(x))
    loss.backward()
    for member in ens.members:
        grad = member.backbone[0].weight.grad
        assert grad is not None and grad.abs().sum() > 0
        assert member.head.weight.grad is None  # FDL alone never touches the heads


def test_joint_loss_is_ce_sum_plus_fdl():
    ens = make_ensemble()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    outs = ens.member_outputs(x)
    ce = sum(F.cross_entropy(o.logits, y) for o in outs)
    fd = fdl.feature_distance_loss([o.feature_map for o in outs], 0.5, 2.0)
    total, parts = fdl.joint_loss(outs, y, 0.5, 2.0)
    assert total.item() == pytest.approx((ce + fd).item(), rel=1e-6)
    base, base_parts = fdl.joint_loss(outs, y, 0.5, 2.0, use_fdl=False)
    assert base.item() == pytest.approx(ce.item(), rel=1e-6)
    assert base_parts["fdl"] == pytest.approx(fd.item(), rel=1e-6)  # still reported
    assert set(parts) == {"ce", "s_cos", "s_euc", "fdl"}
    loss_fn = fdl.JointLoss(0.5, 2.0)
    assert loss_fn(ens, x, y).item() == pytest.approx(total.item(), rel=1e-6)
    assert loss_fn.last["fdl"] == pytest.approx(parts["fdl"])


# ----------------------------------------------------------------------------- combiners

def brute_hard_vote(logits: torch.Tensor) -> list[int]:
    preds = logits.argmax(-1)
    out = []
    for b in range(logits.shape[1]):
        counts = [int((preds[:, b] == k).sum()) for k in range(logits.shape[2])]
        best = max(counts)
        out.append(min(k for k, c in enumerate(counts) if c == best))
    return out


@pytest.mark.parametrize("batch", [1, 7, 10, 13, 4072 % 97])
def test_hard_vote_any_size_and_ties_to_lowest(batch):
    gen = torch.Generator().manual_seed(batch)
    logits = torch.randn(4, batch, 5, generator=gen)  # 4 members: 2-2 ties happen often
    assert fdl.hard_vote(logits).tolist() == brute_hard_vote(logits)


def test_hard_vote_explicit_ties():
    onehot = torch.eye(4)
    # members predict (3, 1, 1, 3): tie between 1 and 3 -> 1; (2, 0, 3): three-way tie -> 0
    a = torch.stack([onehot[3], onehot[1], onehot[1], onehot[3]])[:, None]
    assert fdl.hard_vote(a).tolist() == [1]
    b = torch.stack([onehot[2], onehot[0], onehot[3]])[:, None]
    assert fdl.hard_vote(b).tolist() == [0]
    c = torch.stack([onehot[2], onehot[2], onehot[3]])[:, None]
    assert fdl.hard_vote(c).tolist() == [2]


def test_soft_vote_is_mean_probability():
    logits = torch.randn(3, 4, 6)
    want = sum(logits[m].softmax(-1) for m in range(3)) / 3
    torch.testing.assert_close(fdl.soft_vote(logits), want)
    ens = make_ensemble()
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(ens(x).exp(), fdl.soft_vote(ens.member_logits(x)))
    with pytest.raises(ValueError, match="M, B, K"):
        fdl.soft_vote(logits[0])


def test_ensemble_accuracies_agree_with_votes():
    ens = make_ensemble()
    x, y = torch.rand(11, 1, 8, 8), torch.randint(0, 3, (11,))
    acc = fdl.ensemble_accuracies(ens, x, y, batch_size=4)
    with torch.no_grad():
        logits = ens.member_logits(x)
    assert acc["soft_vote"] == pytest.approx(float((fdl.soft_vote(logits).argmax(-1) == y).float().mean()))
    assert acc["hard_vote"] == pytest.approx(float((fdl.hard_vote(logits) == y).float().mean()))
    assert acc["mean_member"] == pytest.approx(np.mean([acc[f"member_{m}"] for m in range(3)]))
    assert ens.training  # mode restored


def test_fusion_model_freezes_members_and_their_batchnorm():
    members = fdl.make_members(
        lambda: TinyNet(), 2, seed=0)
    for m in members:  # add BN to check it stays in inference mode
        m.backbone.insert(1, nn.BatchNorm2d(4))
    ens = fdl.FDLEnsemble(members)
    model = fdl.FusionModel(ens, num_classes=3, image_shape=(1, 8, 8), hidden=16)
    assert model.head.net[1].in_features == 2 * 4 * 4 * 4  # M * C * H * W
    before = [p.clone() for p in ens.parameters()]
    stats = members[0].backbone[1].running_mean.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    assert not any(m.training for m in ens.modules()) and model.head.training
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for p, q in zip(before, ens.parameters(), strict=True):
        torch.testing.assert_close(p, q)  # frozen phase: members unchanged
    torch.testing.assert_close(stats, members[0].backbone[1].running_mean)
    model.freeze_members = False  # fine-tune phase: members move, BN stats do not
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert any(not torch.allclose(p, q) for p, q in zip(before, ens.parameters(), strict=True))
    torch.testing.assert_close(stats, members[0].backbone[1].running_mean)
    acc = fdl.ensemble_accuracies(ens, x, y, fusion=model)
    assert 0.0 <= acc["fusion"] <= 1.0


# ----------------------------------------------------------------------------- attention

def test_attention_iou_exact_values():
    a = torch.zeros(1, 4, 4)
    a[0, :2] = 1.0  # top half
    b = torch.zeros(1, 4, 4)
    b[0, 2:] = 1.0  # bottom half
    c = torch.zeros(1, 4, 4)
    c[0, :, :2] = 1.0  # left half: overlaps each of a, b in 4 of 12 union cells
    torch.testing.assert_close(fdl.attention_iou(torch.stack([a, a, a])), torch.ones(1))
    torch.testing.assert_close(fdl.attention_iou(torch.stack([a, b])), torch.zeros(1))
    torch.testing.assert_close(fdl.attention_iou(torch.stack([a, b, c])),
                               torch.tensor([(0 + 4 / 12 + 4 / 12) / 3]))
    # a constant map has no region: its pairs are left out, not counted as disjoint (IoU 0)
    flat = torch.zeros(1, 4, 4)
    torch.testing.assert_close(fdl.attention_iou(torch.stack([a, flat, c])),
                               torch.tensor([4 / 12]))
    assert torch.isnan(fdl.attention_iou(torch.ones(2, 3, 4, 4))).all()
    assert torch.isnan(fdl.attention_iou(torch.full((2, 1, 7, 7), 0.1))).all()
    assert fdl.empty_region_share(torch.full((2, 1, 7, 7), 0.1)) == 1.0
    assert fdl.empty_region_share(torch.stack([a, flat, c, flat])) == 0.5
    with pytest.raises(ValueError, match="M >= 2"):
        fdl.attention_iou(torch.ones(1, 3, 4, 4))


def test_cam_metrics_against_object_masks_by_hand():
    """Two members, two 4x4 images; the object is the top-left 2x2 block of each."""
    masks = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    masks[:, 0, :2, :2] = True
    cams = torch.zeros(2, 2, 4, 4)
    cams[0, 0, :2, :2] = 1.0  # member 1, image 1: all its mass on the object, peak on it
    cams[0, 1, :, :2] = 1.0  # image 2: the left half (4 of its 9 units of mass on the object)
    cams[0, 1, 3, 0] = 2.0  # ... and its peak off it
    cams[1, 0] = 0.0  # member 2, image 1: no mass, left out
    cams[1, 1, 3, 3] = 1.0  # image 2: all off the object
    out = fdl.cam_metrics(cams, masks)
    assert out["cam_inside"] == pytest.approx((1.0 + 4 / 9 + 0.0) / 3)
    assert out["cam_pointing"] == pytest.approx(1 / 3)
    assert out["cam_inside_chance"] == pytest.approx(0.25)  # 4 of 16 pixels
    assert out["iou_cam"] == pytest.approx(fdl.attention_iou(cams).nanmean().item(), nan_ok=True)
    assert out["empty_cam"] == fdl.empty_region_share(cams)
    assert set(fdl.cam_metrics(cams)) == {"iou_cam", "empty_cam"}  # no masks
    assert math.isnan(fdl.cam_metrics(torch.zeros(2, 2, 4, 4), masks)["cam_inside"])


def manual_gradcam(member: TinyNet, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    fmap = member.backbone(x)
    prob = member.head(member.neck(fmap)).softmax(-1)[torch.arange(x.shape[0]), cls].sum()
    grad, = torch.autograd.grad(prob, fmap)
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * fmap).sum(1)).detach()
    # pytorch-grad-cam min-max scales twice (per layer, then after averaging the layers), each
    # time dividing by max + 1e-7; with tiny softmax gradients that epsilon is visible.
    for _ in range(2):
        cam = cam - cam.amin(dim=(1, 2), keepdim=True)
        cam = cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)
    return cam


def test_member_gradcam_matches_manual_gradcam_and_cleans_up():
    ens = make_ensemble(members=3, pool=False)  # map = input size, so no resize in the way
    ens.train()
    ens.members[1].eval()
    x = torch.rand(5, 1, 8, 8)
    cls = torch.tensor([0, 1, 2, 1, 0])
    for p in ens.parameters():
        p.grad = torch.full_like(p, 0.25)
    cams = fdl.member_gradcam(ens, x, classes=cls, batch_size=2)
    assert cams.shape == (3, 5, 8, 8)
    for m, member in enumerate(ens.members):
        torch.testing.assert_close(cams[m], manual_gradcam(member, x, cls), atol=1e-5, rtol=1e-4)
    # modes, grads and hooks restored
    assert [m.training for m in ens.members] == [True, False, True]
    assert all(torch.all(p.grad == 0.25) for p in ens.parameters())
    for member in ens.members:
        assert not member.backbone._forward_hooks
    # default target: each member's own prediction; the input-size upsampling path
    pooled = make_ensemble(members=2)
    cams = fdl.member_gradcam(pooled, x)
    assert cams.shape == (2, 5, 8, 8) and float(cams.min()) >= 0 and float(cams.max()) <= 1
    with pytest.raises(ValueError, match="softmax"):
        fdl.member_gradcam(pooled, x, target="prob")


def test_member_gradcam_works_with_frozen_members_and_under_no_grad():
    ens = make_ensemble(members=2, pool=False)
    for p in ens.parameters():
        p.requires_grad_(False)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        cams = fdl.member_gradcam(ens, x, classes=torch.tensor([0, 1, 2]), target="logit")
    assert cams.shape == (2, 3, 8, 8) and cams.amax(dim=(2, 3)).gt(0).any()


# ----------------------------------------------------------------------------- a small training run

def redundant_cue_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images whose class (0..2) is drawn as the same stroke in all four quadrants, so a
    member can classify from any quadrant: room for members to look at different places."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=gen)
    patterns = torch.zeros(3, 4, 4)
    patterns[0, 1, :] = 1.0  # horizontal stroke
    patterns[1, :, 1] = 1.0  # vertical stroke
    patterns[2] = torch.eye(4)  # diagonal
    img = patterns[labels].repeat(1, 2, 2)[:, None]
    return (img + 0.3 * torch.randn(n, 1, 8, 8, generator=gen)).clamp(0, 1), labels


def train_tiny(use_fdl: bool, steps: int = 80) -> fdl.FDLEnsemble:
    torch.manual_seed(0)
    ens = make_ensemble(members=3, seed=0, width=6)
    loss_fn = fdl.JointLoss(1.0, 10.0, use_fdl=use_fdl)
    opt = torch.optim.Adam(ens.parameters(), lr=1e-2)
    x, y = redundant_cue_data(96, seed=0)
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % 96
        opt.zero_grad()
        loss_fn(ens, x[idx], y[idx]).backward()
        opt.step()
    return ens


def test_fdl_training_spreads_attention_and_still_classifies():
    xt, yt = redundant_cue_data(300, seed=1)
    results = {}
    for use_fdl in (False, True):
        ens = train_tiny(use_fdl).eval()
        with torch.no_grad():
            s_cos, s_euc = fdl.fdl_similarity_terms(ens.feature_maps(xt))
        iou = fdl.attention_iou(fdl.descriptor_maps(ens, xt)).mean().item()
        results[use_fdl] = (s_cos.mean().item(), s_euc.mean().item(), iou,
                            fdl.ensemble_accuracies(ens, xt, yt)["soft_vote"])
    base, ours = results[False], results[True]
    assert ours[0] < 0.75 * base[0]  # cosine similarity of the above-mean regions
    assert ours[1] < 0.5 * base[1]  # Gaussian similarity (the dominant, lambda=10 term)
    assert ours[2] < base[2] - 0.15  # above-mean regions overlap less
    assert ours[3] > 0.8 and base[3] > 0.8  # both ensembles beat chance (1/3) by far
