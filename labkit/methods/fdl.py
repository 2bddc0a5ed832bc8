"""Feature Distance Loss (FDL) ensembles (Schlagenhauf, Lin & Noack, MVA 2023, arXiv 2205.11606).

The claim: members of an ensemble trained jointly tend to look at the same image regions. FDL
penalises the *similarity* of the members' last (post-pooling) feature maps, so each member is
pushed to attend elsewhere, and the ensemble becomes more diverse and (the paper says) better,
most visibly with few training images per class.

Everything here follows the authors' Keras code:

* descriptor d_m: channel mean of member m's map, then an above-(spatial)-mean mask;
* S_cos = sum_{i<j} cos(vec d_i, vec d_j), S_euc = sum_{i<j} mean_hw exp(-(d_i - d_j)^2);
* L = sum_m CE(y, p_m) + lambda_cos * S_cos + lambda_euc * S_euc, batch mean; both terms are
  bounded similarities that are *minimised* (nothing can blow up).

Combiners on the trained members: soft vote, hard vote (ties -> lowest class id) and the
feature-fusion head (frozen members, then fine-tuning); which of them the paper's tables report
is UNVERIFIED (the published keywords suggest the fusion head). Grad-CAM per member comes from
pytorch-grad-cam on the same layer the loss uses, and `attention_iou` measures how much the
members' above-mean regions overlap (`cam_metrics` also against object masks). A run's pieces
live here too: the members (`member_factory`), their joint training (`train_jointly`), the
fusion head's two phases (`train_fusion`) and the test measures (`test_pass`, `cam_metrics`);
`labkit.methods.fdl_experiments` is the runner that puts them together.

docs/methods/fdl.md maps the paper's symbols to these functions and lists the defaults, the
comparison with the authors' code and every deviation from it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core.data import ArrayDataset
from labkit.core.evaluate import mask_cover, mass_inside, pointing_hits
from labkit.core.models import NetworkOutput, build_network, eval_mode, he_uniform_
from labkit.core.train import fit

__all__ = [
    "fdl_descriptor",
    "fdl_similarity_terms",
    "feature_distance_loss",
    "FeatureDistanceLoss",
    "joint_loss",
    "JointLoss",
    "train_jointly",
    "INITS",
    "member_factory",
    "make_members",
    "FDLEnsemble",
    "soft_vote",
    "hard_vote",
    "FusionHead",
    "FusionModel",
    "epochs_for",
    "train_fusion",
    "above_mean_mask",
    "attention_iou",
    "member_gradcam",
    "descriptor_maps",
    "member_attention",
    "ensemble_accuracies",
    "accuracy",
    "test_pass",
    "cam_metrics",
]

# Keras' l2_normalize clamps the squared norm at 1e-12; a fully masked (all-zero) descriptor
# then has cosine 0 with anything instead of NaN.
_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------- the loss

def _check_weight(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (FDL minimises similarities; a "
                         f"negative weight would maximise them), got {value}")
    return value


def _check_maps(maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    if isinstance(maps, torch.Tensor):
        raise ValueError("maps must be a list of M >= 2 tensors (B, C, H, W), one per member; "
                         "got a single tensor")
    maps = list(maps)
    if len(maps) < 2:
        raise ValueError(f"FDL compares members pairwise and needs M >= 2 feature maps, got {len(maps)}")
    shape = tuple(maps[0].shape)
    if len(shape) != 4:
        raise ValueError(f"each feature map must be (B, C, H, W), got shape {shape}")
    for m, fmap in enumerate(maps):
        if tuple(fmap.shape) != shape:
            raise ValueError(f"all feature maps must have the same shape; map 0 is {shape}, "
                             f"map {m} is {tuple(fmap.shape)}")
    return maps


def fdl_descriptor(feature_map: torch.Tensor, *, mask: bool = True,
                   max_norm: bool = False) -> torch.Tensor:
    """The descriptor d_m (docs/methods/fdl.md) of one member's map: (B, C, H, W) -> (B, H, W).

    Channel mean; optionally divided by its per-sample largest absolute value (`max_norm`, off in
    every published run; the authors divide the masked descriptor by its maximum instead, which
    agrees for non-negative maps); then, with `mask`, every value not strictly above the sample's
    spatial mean is set to 0. The mask is hard
    (no gradient reaches below-mean positions), as in the authors' `tf.where`.
    """
    if feature_map.ndim != 4:
        raise ValueError(f"feature map must be (B, C, H, W), got shape {tuple(feature_map.shape)}")
    desc = feature_map.mean(dim=1)
    if max_norm:
        scale = desc.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)
        desc = desc / scale
    if mask:
        desc = torch.where(above_mean_mask(desc), desc, torch.zeros_like(desc))
    return desc


def fdl_similarity_terms(maps: Sequence[torch.Tensor], *, mask: bool = True,
                         max_norm: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample similarity sums over all member pairs i < j.

    maps: M tensors (B, C, H, W). Returns (S_cos, S_euc), each (B,):
    S_cos = sum_{i<j} cos(vec d_i, vec d_j) and S_euc = sum_{i<j} mean_{h,w} exp(-(d_i - d_j)^2)
    (the code calls the latter "Euclidean"; it is a Gaussian similarity in (0, 1] per pair).
    """
    maps = _check_maps(maps)
    descs = [fdl_descriptor(f, mask=mask, max_norm=max_norm).flatten(1) for f in maps]
    units = [d / d.pow(2).sum(dim=1, keepdim=True).clamp_min(_NORM_EPS).sqrt() for d in descs]
    s_cos = descs[0].new_zeros(descs[0].shape[0])
    s_euc = descs[0].new_zeros(descs[0].shape[0])
    for i, j in combinations(range(len(descs)), 2):
        s_cos = s_cos + (units[i] * units[j]).sum(dim=1)
        s_euc = s_euc + torch.exp(-(descs[i] - descs[j]).pow(2)).mean(dim=1)
    return s_cos, s_euc


def feature_distance_loss(maps: Sequence[torch.Tensor], lambda_cos: float = 1.0,
                          lambda_euc: float = 10.0, *, mask: bool = True,
                          max_norm: bool = False) -> torch.Tensor:
    """FDL = batch mean of lambda_cos * S_cos + lambda_euc * S_euc (see `fdl_similarity_terms`).

    maps: list of M >= 2 feature maps (B, C, H, W) taken after each member's last max-pool.
    Defaults (1, 10) are the code's VGG/CIFAR-10 weights. For ReLU maps the value lies in
    [0, M(M-1)/2 * (lambda_cos + lambda_euc)]; identical maps give the maximum.
    """
    lambda_cos = _check_weight("lambda_cos", lambda_cos)
    lambda_euc = _check_weight("lambda_euc", lambda_euc)
    s_cos, s_euc = fdl_similarity_terms(maps, mask=mask, max_norm=max_norm)
    return (lambda_cos * s_cos + lambda_euc * s_euc).mean()


class FeatureDistanceLoss(nn.Module):
    """`feature_distance_loss` as a module (no parameters)."""

    def __init__(self, lambda_cos: float = 1.0, lambda_euc: float = 10.0, *, mask: bool = True,
                 max_norm: bool = False) -> None:
        super().__init__()
        self.lambda_cos = _check_weight("lambda_cos", lambda_cos)
        self.lambda_euc = _check_weight("lambda_euc", lambda_euc)
        self.mask, self.max_norm = mask, max_norm

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        return feature_distance_loss(maps, self.lambda_cos, self.lambda_euc, mask=self.mask,
                                     max_norm=self.max_norm)


def joint_loss(outputs: Sequence[NetworkOutput], labels: torch.Tensor, lambda_cos: float = 1.0,
               lambda_euc: float = 10.0, *, use_fdl: bool = True, mask: bool = True,
               max_norm: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
    """L = sum_m CE(y, p_m) + [lambda_cos * S_cos + lambda_euc * S_euc] (the bracket iff use_fdl).

    outputs: one `NetworkOutput` per member (logits (B, K), feature_map (B, C, H, W)).
    Returns the scalar loss and detached parts {"ce", "s_cos", "s_euc", "fdl"} for logging; the
    similarity terms are always reported, so the classical ensemble's overlap is visible too.
    """
    lambda_cos = _check_weight("lambda_cos", lambda_cos)
    lambda_euc = _check_weight("lambda_euc", lambda_euc)
    if any(o.logits is None for o in outputs):
        raise ValueError("every member needs a classification head (NetworkOutput.logits is None)")
    ce = sum(F.cross_entropy(o.logits, labels) for o in outputs)
    maps = [o.feature_map for o in outputs]
    if use_fdl:
        s_cos, s_euc = fdl_similarity_terms(maps, mask=mask, max_norm=max_norm)
        fdl = (lambda_cos * s_cos + lambda_euc * s_euc).mean()
        total = ce + fdl
    else:
        with torch.no_grad():
            s_cos, s_euc = fdl_similarity_terms(maps, mask=mask, max_norm=max_norm)
        fdl = (lambda_cos * s_cos + lambda_euc * s_euc).mean()
        total = ce
    parts = {"ce": float(ce.detach()), "s_cos": float(s_cos.detach().mean()),
             "s_euc": float(s_euc.detach().mean()), "fdl": float(fdl.detach())}
    return total, parts


class JointLoss:
    """`loss_fn(model, images, labels)` for `labkit.core.train.fit` on an `FDLEnsemble`.

    `use_fdl=False` is the classical-ensemble baseline (same joint model, CE sum only).
    `.last` holds the parts of the latest batch (floats) for logging.
    """

    def __init__(self, lambda_cos: float = 1.0, lambda_euc: float = 10.0, *, use_fdl: bool = True,
                 mask: bool = True, max_norm: bool = False) -> None:
        self.lambda_cos = _check_weight("lambda_cos", lambda_cos)
        self.lambda_euc = _check_weight("lambda_euc", lambda_euc)
        self.use_fdl, self.mask, self.max_norm = use_fdl, mask, max_norm
        self.last: dict[str, float] = {}

    def __call__(self, model: FDLEnsemble, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.from_outputs(model.member_outputs(images), labels)

    def from_outputs(self, outputs: Sequence[NetworkOutput], labels: torch.Tensor) -> torch.Tensor:
        """The loss of the members' outputs (feature maps (B, C, H, W), logits (B, K)) of one
        batch: what `labkit train` calls on the outputs gathered from several ranks."""
        total, self.last = joint_loss(outputs, labels, self.lambda_cos, self.lambda_euc,
                                      use_fdl=self.use_fdl, mask=self.mask, max_norm=self.max_norm)
        return total


# ----------------------------------------------------------------------------- the ensemble

INITS = ("he_uniform", "default")


def member_factory(widths: Sequence[int], num_classes: int, in_channels: int, image_size: int,
                   feat_dim: int, conv_dropout: Sequence[float] = (),
                   init: str = "default") -> Callable[[], nn.Module]:
    """A VGG-style member (`build_network("vgg")`): its post-pool map is what FDL compares.

    As the paper's Keras VGG: after block i's pooling, Dropout conv_dropout[i] (the last block's
    after the FDL map, so FDL and Grad-CAM read the map undropped); head Flatten -> Dense
    `feat_dim` -> BN -> ReLU -> Dropout 0.5 -> Dense K (with bias) -> softmax. init
    "he_uniform" (the code's) or "default" (PyTorch's).
    """
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; use one of {INITS}")
    rates = tuple(conv_dropout)[:len(widths)]

    def build() -> nn.Module:
        net = build_network("vgg", in_channels, num_classes, feat_dim, neck="flatten_mlp",
                            head=nn.Linear(feat_dim, num_classes), image_size=image_size,
                            widths=tuple(widths), dropout=rates[:-1],
                            neck_options={"map_dropout": rates[-1] if rates else 0.0})
        return he_uniform_(net) if init == "he_uniform" else net
    return build


def make_members(factory: Callable[[], nn.Module], num_members: int = 5, seed: int = 0) -> list[nn.Module]:
    """M members of one architecture with independent initialisations.

    Member m is built right after `torch.manual_seed(seed * 1000 + m + 1)`, echoing the code's
    per-member init seeds 1..5, so the same `seed` always gives the same ensemble.
    """
    if num_members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {num_members}")
    members = []
    for m in range(num_members):
        torch.manual_seed(seed * 1000 + m + 1)
        members.append(factory())
    return members


class FDLEnsemble(nn.Module):
    """M independent members trained jointly (one optimiser, one batch, one step).

    Members are modules with `forward_all(x) -> NetworkOutput(feature_map, embedding, logits)`;
    `feature_map` is the (post-pooling) map the loss and Grad-CAM use. `ensemble(x)` returns the
    soft-vote log-probabilities (B, K), so generic accuracy helpers score the soft vote.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        for m, member in enumerate(members):
            if not hasattr(member, "forward_all"):
                raise ValueError(f"member {m} ({type(member).__name__}) has no forward_all(x) "
                                 "returning NetworkOutput(feature_map, embedding, logits)")
        self.members = nn.ModuleList(members)

    def __len__(self) -> int:
        return len(self.members)

    def member_outputs(self, images: torch.Tensor) -> list[NetworkOutput]:
        return [member.forward_all(images) for member in self.members]

    def member_logits(self, images: torch.Tensor) -> torch.Tensor:
        """(M, B, K) logits of all members."""
        return torch.stack([o.logits for o in self.member_outputs(images)])

    def feature_maps(self, images: torch.Tensor) -> list[torch.Tensor]:
        return [o.feature_map for o in self.member_outputs(images)]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return soft_vote(self.member_logits(images)).clamp_min(1e-12).log()


def soft_vote(member_logits: torch.Tensor) -> torch.Tensor:
    """Mean of the members' softmax vectors: (M, B, K) logits -> (B, K) probabilities."""
    if member_logits.ndim != 3:
        raise ValueError(f"member logits must be (M, B, K), got shape {tuple(member_logits.shape)}")
    return member_logits.softmax(dim=-1).mean(dim=0)


def hard_vote(member_logits: torch.Tensor) -> torch.Tensor:
    """Majority vote of the members' argmax predictions: (M, B, K) logits -> (B,) class ids.

    Ties (e.g. 2-2-1 among five members) go to the lowest class id among the tied classes, the
    rule of the authors' helper. Works for any number of samples B (the original dropped the
    last partial batch of 10). Each member's own argmax ties also resolve to the lowest id.
    """
    if member_logits.ndim != 3:
        raise ValueError(f"member logits must be (M, B, K), got shape {tuple(member_logits.shape)}")
    num_classes = member_logits.shape[-1]
    preds = member_logits.argmax(dim=-1)  # (M, B)
    votes = F.one_hot(preds, num_classes).sum(dim=0)  # (B, K)
    # Make every score distinct so argmax never depends on how torch breaks ties:
    # more votes always win, and among equal votes the lower class id gets the larger bonus.
    bonus = torch.arange(num_classes - 1, -1, -1, device=votes.device)
    return (votes * num_classes + bonus).argmax(dim=1)


# ------------------------------------------------------------------- fusion head, training

class FusionHead(nn.Module):
    """The code's feature-fusion head on the M concatenated FDL-layer maps.

    (B, M*C, H, W) -> Flatten -> Linear(hidden) -> BN -> ReLU -> Dropout -> Linear(K) logits.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.net(fused)


class FusionModel(nn.Module):
    """Frozen-or-fine-tuned members feeding a `FusionHead`.

    Two phases as in the code: `freeze_members=True` trains only the head (members run under
    no_grad), then `freeze_members=False` fine-tunes everything at a small LR. As in the code
    (which calls its extractors with training=False), the members' BatchNorm stays in inference
    mode in both phases: `train()` never switches the members back to training mode.
    """

    def __init__(self, ensemble: FDLEnsemble, num_classes: int, image_shape: tuple[int, int, int],
                 hidden: int = 128, dropout: float = 0.5) -> None:
        super().__init__()
        self.ensemble = ensemble
        with torch.no_grad(), eval_mode(ensemble):
            probe = torch.zeros(2, *image_shape, device=next(ensemble.parameters()).device)
            fused = torch.cat(ensemble.feature_maps(probe), dim=1)
        self.head = FusionHead(fused[0].numel(), num_classes, hidden, dropout).to(fused.device)
        self.freeze_members = True

    def train(self, mode: bool = True) -> FusionModel:
        super().train(mode)
        self.ensemble.eval()
        return self

    def fused_maps(self, images: torch.Tensor) -> torch.Tensor:
        """(B, M*C, H, W): the members' FDL-layer maps concatenated along channels."""
        if self.freeze_members:
            with torch.no_grad():
                return torch.cat(self.ensemble.feature_maps(images), dim=1)
        return torch.cat(self.ensemble.feature_maps(images), dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.fused_maps(images))


def epochs_for(steps: int, n: int, batch_size: int) -> tuple[int, int]:
    """(epochs, batch) that cover `steps` optimiser steps on `n` samples: whole epochs of
    `fit`'s batches, a batch never larger than the data."""
    batch = min(batch_size, n)
    per_epoch = max(1, n // batch)
    return max(1, math.ceil(steps / per_epoch)), batch


def train_jointly(ensemble: FDLEnsemble, train: ArrayDataset, lambda_cos: float = 1.0,
                  lambda_euc: float = 10.0, *, use_fdl: bool = True, steps: int, batch_size: int,
                  lr: float = 1e-3, seed: int = 0, device: torch.device | None = None,
                  progress: bool = False) -> list[dict[str, float]]:
    """Train the members together in place: one Adam (constant `lr`) on `JointLoss`, `steps`
    optimiser steps in whole epochs (`epochs_for`). Returns the loss parts of each epoch's last
    batch ({"epoch", "ce", "s_cos", "s_euc", "fdl"})."""
    loss_fn = JointLoss(lambda_cos, lambda_euc, use_fdl=use_fdl)
    log: list[dict[str, float]] = []

    class _Log:
        def on_epoch_end(self, state) -> None:
            log.append({"epoch": state.epoch, **loss_fn.last})

    epochs, batch = epochs_for(steps, len(train), batch_size)
    fit(ensemble, loss_fn, train, epochs=epochs, batch_size=batch, optimizer="adam", lr=lr,
        device=device, callbacks=[_Log()], seed=seed, progress=progress)
    return log


def train_fusion(ensemble: FDLEnsemble, train: ArrayDataset, *, steps: int, finetune_steps: int,
                 lr: float = 1e-3, finetune_lr: float = 1e-5, batch_size: int = 32, seed: int = 0,
                 device: torch.device | None = None) -> FusionModel:
    """The code's two phases: `steps` on the head with frozen members, then `finetune_steps` on
    everything at `finetune_lr`, both on `train`.

    Fine-tuning changes the members' weights in place; callers that still need the original
    members evaluate (or copy) them first.
    """
    device = device or next(ensemble.parameters()).device
    model = FusionModel(ensemble, train.num_classes, tuple(train.images.shape[1:]))
    model.to(device)

    def ce(m: FusionModel, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(m(x), y)

    if steps > 0:
        model.freeze_members = True
        epochs, batch = epochs_for(steps, len(train), batch_size)
        fit(model, ce, train, epochs=epochs, batch_size=batch, optimizer="adam", lr=lr,
            param_groups=[{"params": list(model.head.parameters())}], device=device, seed=seed,
            progress=False)
    if finetune_steps > 0:
        model.freeze_members = False
        epochs, batch = epochs_for(finetune_steps, len(train), batch_size)
        fit(model, ce, train, epochs=epochs, batch_size=batch, optimizer="adam", lr=finetune_lr,
            device=device, seed=seed + 1, progress=False)
    model.freeze_members = True
    model.eval()
    return model


# ----------------------------------------------------------------------------- attention

def above_mean_mask(heat: torch.Tensor) -> torch.Tensor:
    """Boolean mask of positions strictly above the map's spatial mean: (..., H, W) -> same shape.

    A constant map has no such position, and that is checked explicitly: the float mean of a
    constant map can round below its value (for 27% of random constants on 7x7 in float32), and
    then every position would pass `heat > mean`.
    """
    if heat.ndim < 2:
        raise ValueError(f"heat maps must be (..., H, W), got shape {tuple(heat.shape)}")
    dims = (-2, -1)
    spread = heat.amax(dim=dims, keepdim=True) > heat.amin(dim=dims, keepdim=True)
    return (heat > heat.mean(dim=dims, keepdim=True)) & spread


def attention_iou(heats: torch.Tensor) -> torch.Tensor:
    """Mean pairwise IoU of the members' above-mean regions: (M, B, H, W) -> (B,) in [0, 1].

    1 means all members attend to exactly the same region; 0 means pairwise disjoint regions.
    A member whose map is constant (e.g. an all-zero Grad-CAM) has no region: its pairs are left
    out of the mean rather than counted as disjoint (no attention is not different attention);
    an image where fewer than two members have a region gets NaN (see `empty_region_share`).
    """
    if heats.ndim != 4 or heats.shape[0] < 2:
        raise ValueError(f"heats must be (M >= 2, B, H, W), got shape {tuple(heats.shape)}")
    masks = above_mean_mask(heats)
    present = masks.flatten(2).any(dim=2)  # (M, B)
    total = torch.zeros(heats.shape[1], device=heats.device)
    count = torch.zeros(heats.shape[1], device=heats.device)
    for i, j in combinations(range(heats.shape[0]), 2):
        inter = (masks[i] & masks[j]).sum(dim=(-2, -1)).float()
        union = (masks[i] | masks[j]).sum(dim=(-2, -1)).float()
        both = (present[i] & present[j]).float()
        total += both * inter / union.clamp_min(1)
        count += both
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))


def empty_region_share(heats: torch.Tensor) -> float:
    """Share of (member, image) maps in (M, B, H, W) that are constant: no above-mean region."""
    return float((~above_mean_mask(heats).flatten(2).any(dim=2)).float().mean())


@torch.no_grad()
def descriptor_maps(ensemble: FDLEnsemble, images: torch.Tensor, *, batch_size: int = 256,
                    mask: bool = False) -> torch.Tensor:
    """(M, B, H, W) channel-mean descriptors of every member (what FDL compares), eval mode."""
    device = next(ensemble.parameters()).device
    chunks = []
    with eval_mode(ensemble):
        for start in range(0, images.shape[0], batch_size):
            maps = ensemble.feature_maps(images[start:start + batch_size].to(device))
            chunks.append(torch.stack([fdl_descriptor(f, mask=mask) for f in maps]).cpu())
    return torch.cat(chunks, dim=1)


class _LogitsOnly(nn.Module):
    """pytorch-grad-cam needs a model returning one tensor; members return a NetworkOutput."""

    def __init__(self, member: nn.Module) -> None:
        super().__init__()
        self.member = member

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.member.forward_all(images).logits


def _default_layer(member: nn.Module) -> nn.Module:
    if not hasattr(member, "backbone"):
        raise ValueError(f"{type(member).__name__} has no .backbone; pass layer=... selecting the "
                         "module whose output is the FDL feature map")
    return member.backbone


def member_gradcam(ensemble: FDLEnsemble, images: torch.Tensor, *,
                   classes: torch.Tensor | None = None, target: str = "softmax",
                   layer: Callable[[nn.Module], nn.Module] = _default_layer,
                   batch_size: int = 64) -> torch.Tensor:
    """Grad-CAM of every member on the layer FDL uses: (B, C, H, W) images -> (M, B, H, W) in [0, 1].

    classes: (B,) class per image; None uses each member's own prediction (the code's choice).
    target: "softmax" (gradient of the class probability, as in the code) or "logit".
    layer(member) picks the module whose output is the FDL map (default `member.backbone`).
    pytorch-grad-cam applies ReLU, min-max scales each map and upsamples it to the input size.
    Hooks are released, the members' train/eval modes and any existing .grad are restored.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import (
        ClassifierOutputSoftmaxTarget,
        ClassifierOutputTarget,
    )

    if target not in ("softmax", "logit"):
        raise ValueError(f"target must be 'softmax' or 'logit', got {target!r}")
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if classes is not None and tuple(classes.shape) != (images.shape[0],):
        raise ValueError(f"classes must be ({images.shape[0]},), got {tuple(classes.shape)}")
    target_cls = ClassifierOutputSoftmaxTarget if target == "softmax" else ClassifierOutputTarget
    device = next(ensemble.parameters()).device
    saved_grads = {p: p.grad for p in ensemble.parameters()}
    cams = []
    try:
        with torch.enable_grad(), eval_mode(ensemble):  # GradCAM sets modes of its own too
            for member in ensemble.members:
                wrapped = _LogitsOnly(member)
                per_member = []
                with GradCAM(model=wrapped, target_layers=[layer(member)]) as cam:
                    for start in range(0, images.shape[0], batch_size):
                        # An input that requires grad keeps the graph alive even when the
                        # member's parameters are frozen.
                        x = images[start:start + batch_size].detach().to(device).requires_grad_(True)
                        if classes is None:
                            with torch.no_grad():
                                cls = wrapped(x).argmax(dim=1).tolist()
                        else:
                            cls = classes[start:start + batch_size].tolist()
                        heat = cam(input_tensor=x, targets=[target_cls(int(c)) for c in cls])
                        per_member.append(torch.from_numpy(heat))
                cams.append(torch.cat(per_member))
    finally:
        for p, grad in saved_grads.items():
            p.grad = grad
    return torch.stack(cams)


def member_attention(ensemble: FDLEnsemble, images: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each member looks on (B, C, H, W) images: its Grad-CAMs (M, B, H, W) for its own
    prediction, the predictions (M, B) and the channel-mean FDL maps (M, B, h, w)."""
    with torch.no_grad():
        preds = ensemble.member_logits(images).argmax(-1)
    return member_gradcam(ensemble, images), preds, descriptor_maps(ensemble, images)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def ensemble_accuracies(ensemble: FDLEnsemble, images: torch.Tensor, labels: torch.Tensor, *,
                        fusion: FusionModel | None = None, batch_size: int = 512) -> dict[str, float]:
    """Test accuracies: each member, their mean, soft vote, hard vote (and fusion head if given)."""
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
    device = next(ensemble.parameters()).device
    logits, fused = [], []
    with contextlib.ExitStack() as modes:
        for module in [ensemble] + ([fusion] if fusion is not None else []):
            modes.enter_context(eval_mode(module))
        for start in range(0, images.shape[0], batch_size):
            x = images[start:start + batch_size].to(device)
            logits.append(ensemble.member_logits(x).cpu())
            if fusion is not None:
                fused.append(fusion(x).cpu())
    member_logits = torch.cat(logits, dim=1)
    labels = labels.cpu()
    members = (member_logits.argmax(-1) == labels).float().mean(dim=1)
    out = {f"member_{m}": float(a) for m, a in enumerate(members)}
    out["mean_member"] = float(members.mean())
    out["soft_vote"] = float((soft_vote(member_logits).argmax(-1) == labels).float().mean())
    out["hard_vote"] = float((hard_vote(member_logits) == labels).float().mean())
    if fusion is not None:
        out["fusion"] = float((torch.cat(fused).argmax(-1) == labels).float().mean())
    return out


@torch.no_grad()
def test_pass(ensemble: FDLEnsemble, images: torch.Tensor, labels: torch.Tensor,
              batch_size: int = 500) -> dict[str, float]:
    """One eval-mode pass over (N, C, H, W) test images: the accuracies of each member
    ("member_m"), their mean and the soft and hard vote, and how much the members' FDL maps
    overlap: "iou_map" (mean pairwise IoU of the above-mean regions of the channel means) and
    "s_cos", "s_euc" (the unweighted similarity sums over member pairs, mean over images)."""
    device = next(ensemble.parameters()).device
    with eval_mode(ensemble):
        logits, descs, s_cos, s_euc = [], [], [], []
        for start in range(0, images.shape[0], batch_size):
            outs = ensemble.member_outputs(images[start:start + batch_size].to(device))
            maps = [o.feature_map for o in outs]
            logits.append(torch.stack([o.logits for o in outs]).cpu())
            descs.append(torch.stack([fdl_descriptor(f, mask=False) for f in maps]).cpu())
            sims = fdl_similarity_terms(maps)
            s_cos.append(sims[0].cpu())
            s_euc.append(sims[1].cpu())
    member_logits, labels = torch.cat(logits, dim=1), labels.cpu()
    correct = (member_logits.argmax(-1) == labels).float().mean(dim=1)
    out = {f"member_{m}": float(a) for m, a in enumerate(correct)}
    out.update(mean_member=float(correct.mean()),
               soft_vote=float((soft_vote(member_logits).argmax(-1) == labels).float().mean()),
               hard_vote=float((hard_vote(member_logits) == labels).float().mean()),
               iou_map=float(attention_iou(torch.cat(descs, dim=1)).nanmean()),
               s_cos=float(torch.cat(s_cos).mean()), s_euc=float(torch.cat(s_euc).mean()))
    return out


def cam_metrics(cams: torch.Tensor, masks: torch.Tensor | None = None) -> dict[str, float]:
    """How the members' Grad-CAMs (M, B, H, W) >= 0 overlap: "iou_cam" (`attention_iou`, mean
    over images) and "empty_cam" (`empty_region_share`). With the images' object masks
    (B, 1, H, W), also where they look, over the maps with any mass: "cam_inside" (the share
    of a map's mass on the object, `core.evaluate.mass_inside`), "cam_inside_chance" (the
    object's share of the image, what a uniform map gets) and "cam_pointing" (the share of maps
    whose peak lies on the object, `pointing_hits`); NaN when no map has mass."""
    out = {"iou_cam": float(attention_iou(cams).nanmean()), "empty_cam": empty_region_share(cams)}
    if masks is None:
        return out
    members = cams.shape[0]
    heat = cams.flatten(0, 1).float()  # (M * B, H, W), member-major
    every = masks.expand(members, *masks.shape).flatten(0, 1)  # (M * B, 1, H, W)
    keep = heat.flatten(1).sum(1) > 0
    if not keep.any():
        return {**out, "cam_inside": math.nan, "cam_inside_chance": math.nan,
                "cam_pointing": math.nan}
    heat, every = heat[keep], every[keep]
    chance = mask_cover(every, heat.shape[1:]).flatten(1).mean(1)
    return {**out, "cam_inside": float(mass_inside(heat, every).mean()),
            "cam_inside_chance": float(chance.mean()),
            "cam_pointing": float(pointing_hits(heat, every).float().mean())}


@torch.no_grad()
def accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 500) -> float:
    """The share of (N, C, H, W) `images` whose largest logit of `model` (in its current mode,
    on its device) is the label (N,)."""
    device = next(model.parameters()).device
    preds = torch.cat([model(images[i:i + batch_size].to(device)).argmax(-1).cpu()
                       for i in range(0, images.shape[0], batch_size)])
    return float((preds == labels.cpu()).float().mean())
