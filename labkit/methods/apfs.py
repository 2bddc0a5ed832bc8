"""Deep Metric Learning with Alternating Projections onto Feasible Sets (APFS).

Can, Gürbüz and Alatan, ICIP 2021 (arXiv 1907.07585). Learning is cast as a feasibility problem:
find weights theta whose embedding f_theta puts same-class pairs within alpha and different-class
pairs beyond beta. Fixing one *representative* r_c per class relaxes the constraint set to Theta_k
(only pairs (x_i, r_c) count); training alternates approximate projections onto these sets,

    theta_{k+1} ~ argmin_theta  L_k(theta) + (lambda / 2) * ||theta - theta_k||^2,

each solved by `lifetime` (T) SGD steps on batches that all contain the same representatives.
`geometry_run` trains the 2-D, unnormalised run whose feasible sets can be drawn in the plane
(a typed `GeometryResult`); the loss x variant ablation is `labkit.methods.apfs_experiments`.
The maths, the defaults, the comparison with the authors' code and every known deviation:
docs/methods/apfs.md.

How far each piece can be trusted (only the paper's abstract was available):

- verified (abstract): the feasibility view, relaxed sets built from one representative per
  class, alternating projections as "a typical loss + a regularisation term", hard class mining
  from representatives, no extra cost.
- verified (authors' later ccp-dml code, not the APFS paper itself): representatives kept for a
  "representative lifetime" of batches and placed first in the batch, losses on the
  sample x representative distance matrix, the parameter-space proximal term and its lambda
  (a gradient pull of lambda * (theta - theta_k)), no pair miner by default.
- reconstructed: the per-class representative queue, the class-cycling rule, the mining rule
  (seed class + nearest classes, or sampled with a temperature), the loss forms on
  sample-to-representative pairs. UNVERIFIED: T, lambda, P, M and the margins used in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_metric_learning import distances, losses, miners
from torch import nn

from labkit.core import config, experiment
from labkit.core.cache import cached
from labkit.core.data import class_disjoint_split
from labkit.core.models import FlattenLinear, Network, build_backbone, eval_mode, map_shape
from labkit.core.train import fit

LOSS_NAMES = ("contrastive", "triplet", "multi_similarity")
MINER_NAMES = ("multi_similarity",)
EmbedFn = Callable[[torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- pure functions

def squared_distance(params: Sequence[torch.Tensor],
                     anchors: Sequence[torch.Tensor]) -> torch.Tensor:
    """||theta - theta_anchor||^2 summed over all parameter tensors (a scalar)."""
    params, anchors = list(params), list(anchors)
    if len(params) != len(anchors):
        raise ValueError(f"{len(params)} parameters but {len(anchors)} anchors")
    if not params:
        raise ValueError("the proximal term needs at least one parameter tensor")
    total = params[0].new_zeros(())
    for p, a in zip(params, anchors, strict=True):
        if p.shape != a.shape:
            raise ValueError(f"parameter shape {tuple(p.shape)} != anchor shape {tuple(a.shape)}")
        total = total + (p - a).pow(2).sum()
    return total


def proximal_penalty(params: Sequence[torch.Tensor], anchors: Sequence[torch.Tensor],
                     strength: float) -> torch.Tensor:
    """(lambda / 2) * ||theta - theta_anchor||^2 summed over all parameter tensors (a scalar).

    The proximal term of the approximate projection P_{Theta_k}(theta_k); its gradient is
    lambda * (theta - theta_anchor), the pull the authors' later code (ccp-dml's
    `DistanceRegularizer`) adds to the gradient, so lambda means what theirs means. It lives in
    parameter space, as in that code; the APFS paper's exact form is UNVERIFIED.
    """
    if strength < 0:
        raise ValueError(f"proximal strength lambda must be >= 0, got {strength}")
    return 0.5 * strength * squared_distance(params, anchors)


def class_distance_matrix(rep_embeddings: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Euclidean distances D_rep (C, C) between the C representative embeddings (C, d).

    With `normalize` the embeddings are L2-normalised first, matching the losses' distance.
    """
    if rep_embeddings.ndim != 2 or len(rep_embeddings) < 2:
        raise ValueError(f"need representative embeddings of shape (C>=2, d), got "
                         f"{tuple(rep_embeddings.shape)}")
    e = rep_embeddings.detach().double()
    if normalize:
        e = F.normalize(e, dim=1)
    return torch.cdist(e, e)


def mine_classes(distances_: np.ndarray | torch.Tensor, seed_class: int, count: int,
                 temperature: float | None = None,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """The seed class followed by `count - 1` hard (close) classes, positions into D_rep.

    temperature=None takes the nearest classes (ties by position); a temperature tau samples
    them without replacement with probability proportional to exp(-D_rep(seed, c) / tau).
    Reconstructed rule (docs/methods/apfs.md, hard class mining); the paper's exact mining
    rule is UNVERIFIED.
    """
    dist = np.asarray(distances_.detach().cpu() if isinstance(distances_, torch.Tensor)
                      else distances_, dtype=np.float64)
    num = dist.shape[0]
    if dist.ndim != 2 or dist.shape[1] != num:
        raise ValueError(f"D_rep must be square (C, C), got {dist.shape}")
    if not 0 <= seed_class < num:
        raise ValueError(f"seed_class {seed_class} outside 0..{num - 1}")
    if not 1 <= count <= num:
        raise ValueError(f"cannot pick {count} classes out of {num}")
    others = np.array([c for c in range(num) if c != seed_class], dtype=np.int64)
    if count == 1:
        return np.array([seed_class])
    row = dist[seed_class, others]
    if temperature is None:
        chosen = others[np.argsort(row, kind="stable")[:count - 1]]
    else:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        rng = rng if rng is not None else np.random.default_rng()
        logits = -(row - row.min()) / temperature  # shift keeps exp() finite
        prob = np.exp(logits)
        prob /= prob.sum()
        # exp() can underflow to exactly 0 for very far classes; give them a floor so that
        # sampling without replacement always has enough candidates
        prob = np.maximum(prob, 1e-300)
        prob /= prob.sum()
        chosen = rng.choice(others, size=count - 1, replace=False, p=prob)
    return np.concatenate([[seed_class], chosen]).astype(np.int64)


def constraint_satisfaction(embeddings: torch.Tensor, labels: torch.Tensor,
                            rep_embeddings: torch.Tensor, rep_labels: torch.Tensor,
                            alpha: float, beta: float) -> tuple[float, float]:
    """Fractions of the relaxed set Theta_k's constraints that hold: (intra, inter).

    intra: d(f(x_i), r_{y_i}) <= alpha; inter: d(f(x_i), r_c) >= beta for c != y_i (Euclidean,
    on the embeddings as given). Shapes: (N, d), (N,), (C, d), (C,).
    """
    if beta < alpha:
        raise ValueError(f"need beta >= alpha, got alpha={alpha}, beta={beta}")
    d = torch.cdist(embeddings.double(), rep_embeddings.double())
    same = labels.view(-1, 1) == rep_labels.view(1, -1)
    intra = (d[same] <= alpha).double().mean().item() if same.any() else float("nan")
    inter = (d[~same] >= beta).double().mean().item() if (~same).any() else float("nan")
    return intra, inter


# ----------------------------------------------------------------------------- sampler

def _as_label_array(labels: Any) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) == 0:
        raise ValueError(f"labels must be a non-empty 1-D sequence, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {array.dtype}")
    return array.astype(np.int64)


def _positive_int(name: str, value: int, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


class RepresentativeBatchSampler:
    """Batches that share one fixed representative per class for `lifetime` (T) batches.

    Each round draws one representative r_c per class from a per-class shuffled queue (every
    sample serves once before any repeats), then yields T batches of P = classes_per_batch
    classes: the P representatives first (one per class, in the batch's class order), then
    M - 1 fresh non-representative samples of each class (M = samples_per_class; batch size P*M).
    Fresh samples are distinct within a batch unless the class has fewer than M - 1 other
    samples, in which case they are drawn with repetition.

    Classes per batch: drawn from a cycling queue of classes (each class once per cycle). With
    `hard_class_mining`, each batch takes a seed class from that queue plus its P - 1 nearest
    classes in D_rep (or sampled with `temperature`), where D_rep comes from `embed_fn` applied
    once per round to the representatives' dataset indices (a LongTensor (C,) -> (C, d)); the
    mined classes leave the queue as well (one pending entry each), so a class that is often
    mined is seeded less often.

    One pass yields `len(self)` batches, a multiple of T; rounds restart with each pass, the
    queues and the random generator persist. With `world_size` > 1 the classes are sharded
    across ranks by a permutation that depends only on `seed` (so all ranks agree); each rank
    samples its own shard with its own stream and all ranks yield the same number of batches.

    Reconstructed (docs/methods/apfs.md); the queue and class-cycling rules are ours, the
    "representatives first, kept for a lifetime" mechanics match the authors' later code.
    """

    def __init__(self, labels: Sequence[int] | np.ndarray | torch.Tensor, classes_per_batch: int,
                 samples_per_class: int, lifetime: int, hard_class_mining: bool = False,
                 seed: int = 0, *, batches_per_pass: int | None = None,
                 embed_fn: EmbedFn | None = None, temperature: float | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        self.labels = _as_label_array(labels)
        self.classes_per_batch = _positive_int("classes_per_batch", classes_per_batch, 2)
        self.samples_per_class = _positive_int(
            "samples_per_class (the representative plus at least one fresh sample)",
            samples_per_class, 2)
        self.lifetime = _positive_int("lifetime", lifetime, 1)
        self.world_size = _positive_int("world_size", world_size, 1)
        if isinstance(rank, bool) or int(rank) != rank or not 0 <= rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {rank!r}")
        self.rank = int(rank)
        if temperature is not None and temperature <= 0:
            raise ValueError(f"temperature must be > 0 (or None for nearest), got {temperature}")
        self.hard_class_mining = bool(hard_class_mining)
        self.temperature = temperature
        self.embed_fn = embed_fn
        self.seed = int(seed)

        classes, counts = np.unique(self.labels, return_counts=True)
        singles = classes[counts < 2]
        if len(singles):
            raise ValueError(
                f"classes {singles[:10].tolist()}{'...' if len(singles) > 10 else ''} have a "
                "single sample: a representative needs at least one other sample of its class; "
                "drop those classes first (e.g. dataset.subset_classes)")
        shard = np.random.default_rng(self.seed).permutation(classes)[self.rank::self.world_size]
        self.classes = np.sort(shard)
        if len(self.classes) < self.classes_per_batch:
            where = f" on rank {self.rank} of {self.world_size}" if self.world_size > 1 else ""
            raise ValueError(f"classes_per_batch={self.classes_per_batch} but only "
                             f"{len(self.classes)} classes{where}")
        self._members = [np.flatnonzero(self.labels == c) for c in self.classes]

        batch = self.batch_size
        if batches_per_pass is None:
            per_rank = len(self.labels) // (batch * self.world_size)
            batches_per_pass = max(self.lifetime, per_rank // self.lifetime * self.lifetime)
        batches_per_pass = _positive_int("batches_per_pass", batches_per_pass, 1)
        if batches_per_pass % self.lifetime:
            raise ValueError(f"batches_per_pass={batches_per_pass} must be a multiple of "
                             f"lifetime={self.lifetime}")
        self.batches_per_pass = batches_per_pass

        self._rng = np.random.default_rng([self.seed, self.rank])
        self._rep_queues = [self._rng.permutation(m) for m in self._members]
        self._rep_pos = [0] * len(self._members)
        self._class_queue: list[int] = []
        self.round_index = -1  # rounds started so far - 1
        self.representatives = np.full(len(self.classes), -1, dtype=np.int64)
        self.rep_distances: torch.Tensor | None = None
        self.representative_log: list[np.ndarray] = []

    @property
    def batch_size(self) -> int:
        return self.classes_per_batch * self.samples_per_class

    def __len__(self) -> int:
        return self.batches_per_pass

    # -- queues
    def _next_representative(self, position: int) -> int:
        if self._rep_pos[position] == len(self._rep_queues[position]):
            self._rep_queues[position] = self._rng.permutation(self._members[position])
            self._rep_pos[position] = 0
        index = self._rep_queues[position][self._rep_pos[position]]
        self._rep_pos[position] += 1
        return int(index)

    def _next_classes(self, count: int) -> list[int]:
        """`count` distinct class positions from the cycling class queue."""
        if len(self._class_queue) < count:
            self._class_queue += self._rng.permutation(len(self.classes)).tolist()
        chosen: list[int] = []
        rest: list[int] = []
        for position in self._class_queue:
            if len(chosen) < count and position not in chosen:
                chosen.append(position)
            else:
                rest.append(position)
        self._class_queue = rest
        return chosen

    def new_round(self) -> np.ndarray:
        """Draw the next representatives (dataset indices, one per class of this rank)."""
        self.round_index += 1
        self.representatives = np.array(
            [self._next_representative(p) for p in range(len(self.classes))], dtype=np.int64)
        self.representative_log.append(self.representatives.copy())
        self.rep_distances = None
        if self.hard_class_mining:
            if self.embed_fn is None:
                raise ValueError("hard_class_mining needs embed_fn (dataset indices -> "
                                 "embeddings), e.g. representative_embedder(model, images)")
            emb = self.embed_fn(torch.as_tensor(self.representatives))
            if emb.shape[0] != len(self.representatives):
                raise ValueError(f"embed_fn returned {emb.shape[0]} rows for "
                                 f"{len(self.representatives)} representatives")
            self.rep_distances = class_distance_matrix(emb)
        return self.representatives

    def _batch_classes(self) -> list[int]:
        if self.rep_distances is None:
            return self._next_classes(self.classes_per_batch)
        seed_class = self._next_classes(1)[0]
        chosen = mine_classes(self.rep_distances, seed_class, self.classes_per_batch,
                              self.temperature, self._rng).tolist()
        # "mark the chosen classes so they cycle" (the mining rule): a mined class has had its turn
        # too, so its next pending entry leaves the queue; else classes near many others (hubs)
        # would be seeded as often as any and mined on top of that
        for position in chosen[1:]:
            if position in self._class_queue:
                self._class_queue.remove(position)
        return chosen

    def _fresh(self, position: int) -> np.ndarray:
        members = self._members[position]
        others = members[members != self.representatives[position]]
        need = self.samples_per_class - 1
        return self._rng.choice(others, size=need, replace=len(others) < need)

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.batches_per_pass // self.lifetime):
            self.new_round()
            for _ in range(self.lifetime):
                positions = self._batch_classes()
                reps = self.representatives[positions]
                fresh = np.concatenate([self._fresh(p) for p in positions])
                yield np.concatenate([reps, fresh]).tolist()


def representative_embedder(model: nn.Module, images: torch.Tensor,
                            batch_size: int = 512) -> EmbedFn:
    """An `embed_fn` for hard class mining: embeds images[indices] in eval mode, no grad.

    Restores the model's train/eval mode afterwards; representatives get no augmentation
    (the authors' `preprocess_representative=False` default).
    """

    def embed_fn(indices: torch.Tensor) -> torch.Tensor:
        with eval_mode(model), torch.no_grad():
            device = next(model.parameters()).device
            index = indices.to(images.device)
            parts = [model_embedding(model, images[index[i:i + batch_size]].to(device))
                     for i in range(0, len(index), batch_size)]
        return torch.cat(parts).float()

    return embed_fn


# ----------------------------------------------------------------------------- losses

def model_embedding(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The embedding (B, d): `forward_all(x).embedding` for labkit Networks, else model(x)."""
    if hasattr(model, "forward_all"):
        return model.forward_all(images).embedding
    return model(images)


def base_loss(name: str, normalize: bool = True, miner: str | None = None,
              **options: float) -> tuple[nn.Module, nn.Module | None]:
    """A pytorch-metric-learning (loss, miner) pair for `name` in LOSS_NAMES.

    contrastive: [d - m_p]_+ for positives, [m_n - d]_+ for negatives (m_p=0, m_n=0.5 as in the
    authors' ccp-dml defaults); triplet: [d_ap - d_an + m]_+ (m=0.05, ccp-dml); multi_similarity:
    alpha=2, beta=50, base(lambda)=0.5. Distances are Euclidean on L2-normalised embeddings
    (cosine similarity for MS) unless normalize=False.

    miner=None (the default) keeps every pair, as ccp-dml does by default; "multi_similarity"
    adds PML's MultiSimilarityMiner (option epsilon, 0.1), which ccp-dml does not have.
    """
    if miner is not None and miner not in MINER_NAMES:
        raise ValueError(f"unknown miner {miner!r}; use None or one of {MINER_NAMES}")
    if miner is None and "epsilon" in options:
        # epsilon belongs to the miner: ignoring it would silently drop the mining asked for
        raise ValueError("epsilon is the multi-similarity miner's option; pass "
                         "miner='multi_similarity' with it")
    pair_miner = (miners.MultiSimilarityMiner(epsilon=options.get("epsilon", 0.1))
                  if miner == "multi_similarity" else None)
    if name == "contrastive":
        loss = losses.ContrastiveLoss(pos_margin=options.get("pos_margin", 0.0),
                                      neg_margin=options.get("neg_margin", 0.5),
                                      distance=distances.LpDistance(normalize_embeddings=normalize))
        return loss, pair_miner
    if name == "triplet":
        loss = losses.TripletMarginLoss(margin=options.get("margin", 0.05),
                                        distance=distances.LpDistance(normalize_embeddings=normalize))
        return loss, pair_miner
    if name == "multi_similarity":
        if not normalize:
            raise ValueError("multi_similarity works on cosine similarity; use normalize=True")
        loss = losses.MultiSimilarityLoss(alpha=options.get("alpha", 2.0),
                                          beta=options.get("beta", 50.0),
                                          base=options.get("base", 0.5))
        return loss, pair_miner
    raise ValueError(f"unknown loss {name!r}; use one of {LOSS_NAMES}")


def representative_loss(loss: nn.Module, embeddings: torch.Tensor, labels: torch.Tensor,
                        num_representatives: int, miner: nn.Module | None = None,
                        check: bool = True) -> torch.Tensor:
    """The loss on sample-to-representative pairs only (the relaxed set Theta_k's penalty L_k).

    embeddings (B, d), labels (B,): rows 0..P-1 are the representatives r_c (one per class), the
    rest are samples. Anchors are samples; positives and negatives come only from the
    representatives, via pytorch-metric-learning's ref_emb/ref_labels (a (B-P) x P matrix).
    `check` verifies the batch layout (it reads labels on the host, so it syncs on CUDA).
    """
    p = num_representatives
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(f"need embeddings (B, d) and labels (B,), got {tuple(embeddings.shape)} "
                         f"and {tuple(labels.shape)}")
    if not 1 <= p < len(labels):
        raise ValueError(f"num_representatives={p} must be in 1..{len(labels) - 1} for a batch "
                         f"of {len(labels)}")
    rep_emb, rep_labels = embeddings[:p], labels[:p]
    emb, lab = embeddings[p:], labels[p:]
    if check:
        reps = rep_labels.tolist()
        if len(set(reps)) != p:
            raise ValueError(f"the first {p} rows must be one representative per class, got "
                             f"labels {reps}")
        if not set(lab.tolist()) <= set(reps):
            raise ValueError("every sample's class needs a representative in the batch")
    indices = miner(emb, lab, rep_emb, rep_labels) if miner is not None else None
    return loss(emb, lab, indices, ref_emb=rep_emb, ref_labels=rep_labels)


class ProximalRegularizer:
    """(lambda / 2) * ||theta - theta_anchor||^2, the anchor reset to theta every `lifetime` steps.

    Use `penalty()` inside the loss and pass the object to `fit(..., callbacks=[...])`: its
    `on_step_end` counts optimiser steps and moves the anchor at each round boundary, which
    lines up with `RepresentativeBatchSampler`'s rounds because a pass is a multiple of T.
    Parameter-space form as in the authors' later code; UNVERIFIED for the APFS paper.

    `via_gradient=True` adds lambda * (theta - theta_anchor) to each parameter's gradient in a
    post-accumulate hook instead: the same update as the penalty with no extra autograd graph,
    so the step costs what the baseline's does, and the same pull as the authors'
    `DistanceRegularizer` for the same lambda. The loss value then excludes the penalty;
    `MetricLoss` checks `via_gradient` and does not add it.
    """

    def __init__(self, model: nn.Module, strength: float, lifetime: int,
                 via_gradient: bool = False) -> None:
        if strength < 0:
            raise ValueError(f"proximal strength lambda must be >= 0, got {strength}")
        self.model = model
        self.via_gradient = bool(via_gradient)
        self.strength = float(strength)
        self.lifetime = _positive_int("lifetime", lifetime, 1)
        self.steps = 0
        self.resets = 0
        self.round_distances: list[float] = []  # ||theta - theta_anchor|| at each round's end
        self.anchors: list[torch.Tensor] = []
        self.reset()
        if self.via_gradient:
            for i, p in enumerate(self._params()):
                p.register_post_accumulate_grad_hook(self._gradient_hook(i))

    def _gradient_hook(self, i: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            anchor = self.anchors[i]
            if anchor.device != param.device:
                anchor = self.anchors[i] = anchor.to(param.device)
            param.grad.add_(param.detach() - anchor, alpha=self.strength)
        return hook

    def _params(self) -> list[torch.Tensor]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def reset(self) -> None:
        """theta_anchor <- theta (the start of a new round)."""
        self.anchors = [p.detach().clone() for p in self._params()]
        self.resets += 1

    def penalty(self) -> torch.Tensor:
        params = self._params()
        if self.anchors and self.anchors[0].device != params[0].device:
            self.anchors = [a.to(params[0].device) for a in self.anchors]
        return proximal_penalty(params, self.anchors, self.strength)

    def distance(self) -> float:
        """||theta - theta_anchor|| now (how far the round has moved the weights)."""
        with torch.no_grad():
            return float(squared_distance(self._params(), self.anchors).sqrt())

    def on_step_end(self, state: Any = None) -> None:
        self.steps += 1
        if self.steps % self.lifetime == 0:
            self.round_distances.append(self.distance())  # one host sync per round, not per step
            self.reset()


class MetricLoss(nn.Module):
    """`loss_fn(model, images, labels)` for `fit`: a PML loss on the model's embeddings.

    representatives=0: the baseline, all pairs/triplets of the batch (m-per-class batches).
    representatives=P: APFS, sample-to-representative pairs (the first P rows are the
    representatives) plus the proximal term of `regularizer` if given. `miner` and `options`
    go to `base_loss` (no miner by default).
    """

    def __init__(self, name: str, representatives: int = 0,
                 regularizer: ProximalRegularizer | None = None, normalize: bool = True,
                 check: bool = True, miner: str | None = None, **options: float) -> None:
        super().__init__()
        if representatives < 0:
            raise ValueError(f"representatives must be >= 0, got {representatives}")
        self.name = name
        self.loss, self.miner = base_loss(name, normalize=normalize, miner=miner, **options)
        self.representatives = int(representatives)
        self.regularizer = regularizer
        self.check = check

    def forward(self, model: nn.Module, images: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        return self.from_outputs(self.outputs(model, images), labels)

    def outputs(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor]:
        """What the loss needs per sample: (embeddings (B, d) in float32,)."""
        return (model_embedding(model, images).float(),)

    def from_outputs(self, outputs: tuple[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """The loss of a batch's `outputs` (a distributed run gathers them from all ranks)."""
        emb = outputs[0]
        if self.representatives:
            value = representative_loss(self.loss, emb, labels, self.representatives,
                                        self.miner, check=self.check and not emb.is_cuda)
        else:
            indices = self.miner(emb, labels) if self.miner is not None else None
            value = self.loss(emb, labels, indices)
        if self.regularizer is not None and not self.regularizer.via_gradient:
            value = value + self.regularizer.penalty()
        return value


# ----------------------------------------------------------------------------- the 2-D run
# the tiny network (also the runner's), Θ_k's shares per round, and the 2-D feasible-set run

def tiny_network(widths: Sequence[int], dim: int, in_channels: int = 1,
                 image_size: int = 28) -> Network:
    """The small trunk ("tiny") + a linear embedding of its flattened map to `dim` (no head):
    images (B, in_channels, image_size, image_size) -> (B, dim)."""
    backbone = build_backbone("tiny", in_channels, image_size, widths=tuple(widths))
    c, h, w = map_shape(backbone, in_channels, image_size)
    return Network(backbone, FlattenLinear(c * h * w, dim), head=None)


def round_satisfaction(snapshots: Sequence[torch.Tensor], labels: torch.Tensor,
                       representatives: np.ndarray, alpha: float, beta: float,
                       ) -> list[dict[str, tuple[float, float]]]:
    """Per round k, the share of Θ_k's constraints (`constraint_satisfaction`) that hold at its
    start (snapshots[k]) and end (snapshots[k + 1]): [{"before"/"after": (intra, inter)}].
    Shapes: snapshots (N, d) each, at least rounds + 1 of them; labels (N,) in 0..C-1;
    representatives (rounds, C), class c's representative as a row index."""
    rep_labels = torch.arange(representatives.shape[1])
    out = []
    for k, rep in enumerate(representatives):
        index = torch.as_tensor(rep)
        out.append({when: constraint_satisfaction(emb, labels, emb[index], rep_labels, alpha,
                                                  beta)
                    for when, emb in (("before", snapshots[k]), ("after", snapshots[k + 1]))})
    return out


@dataclass(frozen=True)
class GeometrySettings(experiment.Settings):
    """A 2-D, unnormalised contrastive APFS run on mnist5k digits 0-4 whose margin balls can be
    drawn in the plane: every class in every batch, one sampler pass = one round."""

    per_class: int = 100  # training images per class
    rounds: int = 12
    lifetime: int = 10  # T
    samples_per_class: int = 6  # M
    alpha: float = 0.5  # positive margin: a sample belongs within alpha of its representative
    beta: float = 2.0  # negative margin: beyond beta of the other representatives
    strength: float = 2e-2  # λ, as the penalty (λ/2)||θ - θ_anchor||²
    lr: float = 3e-3
    widths: tuple[int, ...] = (16, 32, 64)
    seed: int = 0

    PROFILES: ClassVar = {"quick": dict(per_class=30, rounds=2, lifetime=5, samples_per_class=4)}

    def check(self) -> None:
        if self.beta < self.alpha:
            raise ValueError(f"need beta >= alpha, got alpha={self.alpha}, beta={self.beta}")


@dataclass
class GeometryResult:
    """The 2-D run: train-set embeddings (N, 2) at every round boundary (snapshots[k] = start
    of round k, rounds + 1 of them), labels (N,), the representatives (rounds, C) as dataset
    indices, the share of Θ_k's constraints met before and after round k (satisfaction[k] =
    {"before"/"after": (intra, inter)}), ||θ - θ_anchor|| at each round's end, class names."""

    settings: GeometrySettings
    snapshots: list[torch.Tensor]
    labels: torch.Tensor
    representatives: np.ndarray
    satisfaction: list[dict[str, tuple[float, float]]]
    round_distances: list[float]
    classes: list[str]


def _train_geometry(settings: GeometrySettings) -> GeometryResult:
    config.seed_everything(settings.seed)
    train, _ = class_disjoint_split("mnist5k", 28)
    train = train.k_per_class(settings.per_class, seed=settings.seed)
    model = tiny_network(settings.widths, 2)
    t = settings.lifetime
    sampler = RepresentativeBatchSampler(train.labels, train.num_classes,
                                         settings.samples_per_class, t, seed=settings.seed,
                                         batches_per_pass=t)
    reg = ProximalRegularizer(model, float(settings.strength), t)
    loss_fn = MetricLoss("contrastive", representatives=train.num_classes, regularizer=reg,
                         normalize=False, pos_margin=float(settings.alpha),
                         neg_margin=float(settings.beta))
    # one epoch = one pass = one round, so fit's per-epoch snapshots are the round boundaries
    history = fit(model, loss_fn, train, epochs=settings.rounds, optimizer="adam",
                  lr=float(settings.lr), batch_sampler=sampler, callbacks=[reg],
                  probe=train.images, device="cpu", seed=settings.seed, progress=False)
    reps = np.stack(sampler.representative_log)  # (rounds, C) dataset indices
    labels = train.labels.cpu()
    return GeometryResult(settings, history.snapshots, labels, reps,
                          round_satisfaction(history.snapshots, labels, reps, settings.alpha,
                                             settings.beta),
                          list(reg.round_distances), list(train.classes))


def geometry_run(settings: GeometrySettings | None = None) -> GeometryResult:
    """The cached 2-D run of `settings` (default: the active profile's)."""
    settings = settings if settings is not None else GeometrySettings.for_profile()
    return cached("apfs_geometry", settings.as_dict(), lambda: _train_geometry(settings))
