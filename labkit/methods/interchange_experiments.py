"""Experiments of the interchangeable-embeddings lab: the model zoo and what is measured on it
(E1-E4 of notebook 03; the protocol and its deviations from the paper are described in
docs/methods/interchange.md, the stored run's numbers in
docs/findings/03_embedding_interchangeability.md).

The zoo: several small architectures x seeds, all ending in
embedding (d) -> Linear(d, C) with a bias, trained with cross-entropy on the same classes
(`mnist5k` in the quick/lab profiles, CIFAR-10 in full). Each member's train and test
embeddings are cached (`labkit.core.cache.cached`), so re-running a notebook re-draws without
retraining. The open-set zoo is trained with a CosFace head (pytorch-metric-learning) on the
first classes only and evaluated on the others, like a face-recognition network on new people.
The zoo's small backbones (MLP, LeNet-5, MobileNet-lite) are core's (`core.models`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations, permutations
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import config
from labkit.core.cache import cached
from labkit.core.data import ArrayDataset, load_memoised, zero_shot_split
from labkit.core.evaluate import embed
from labkit.core.models import (
    FlattenLinear,
    Network,
    PooledLinear,
    build_backbone,
    build_network,
    map_shape,
)
from labkit.core.train import fit
from labkit.methods import interchange as ic

__all__ = [
    "ZOO_ARCHS",
    "build_zoo_network",
    "zoo_settings",
    "ZooMember",
    "Zoo",
    "train_member",
    "build_zoo",
    "build_open_set_zoo",
    "synthetic_zoo",
    "fit_pair",
    "evaluate_map",
    "retention_matrix",
    "closed_form_matrix",
    "closed_form_checks",
    "off_diagonal_median",
    "controls",
    "retention_vs_pairs",
    "retention_vs_rank",
    "SIMILARITY_INDICES",
    "similarity_rows",
    "spearman",
    "open_set_results",
    "roc_on_grid",
]

ZOO_ARCHS = ("mlp", "lenet5", "mobilenet", "vgg", "resnet20")


# ----------------------------------------------------------------------------- zoo networks

def build_zoo_network(arch: str, in_channels: int = 1, num_classes: int = 10, feat_dim: int = 32,
                      *, image_size: int = 28, head: str | None = "linear",
                      **arch_options: Any) -> Network:
    """A zoo `Network`: backbone -> embedding (feat_dim) -> Linear(feat_dim, C) *with* a bias
    (the closed-form map carries biases), or no head (`head=None`, open-set training).

    arch: "mlp", "lenet5", "mobilenet", "vgg" or "resnet20" (`core.models.build_backbone`).
    """
    if arch not in ZOO_ARCHS:
        raise ValueError(f"unknown zoo architecture {arch!r}; known: {', '.join(ZOO_ARCHS)}")
    if head not in ("linear", None):
        raise ValueError(f"head must be 'linear' or None, got {head!r}")
    head_module = nn.Linear(feat_dim, num_classes, bias=True) if head == "linear" else None
    if arch in ("vgg", "resnet20"):
        return build_network(arch, in_channels, num_classes, feat_dim, image_size=image_size,
                             head=head_module, **arch_options)
    backbone = build_backbone(arch, in_channels, image_size, **arch_options)
    channels, height, width = map_shape(backbone, in_channels, image_size)
    if arch == "lenet5":
        neck: nn.Module = FlattenLinear(channels * height * width, feat_dim)
    else:
        neck = PooledLinear(channels, feat_dim)
    return Network(backbone, neck, head_module)


# ----------------------------------------------------------------------------- settings

def zoo_settings() -> dict[str, Any]:
    """The zoo and training knobs of the active profile (quick / lab / full).

    cpu_threads (quick, lab): the zoo's nets are tiny, so intra-op threads gain little, while on a
    shared CPU an oversubscribed thread pool made training ~10x slower in our measurements.
    """
    return config.pick(
        quick=dict(dataset="mnist5k", archs=("mlp", "lenet5"), seeds=(0, 1), dim=16, epochs=3,
                   train_per_class=150, test_per_class=30, batch_size=64, optimizer="adam", lr=2e-3,
                   schedule=None, arch_options={}, low_dim=4, low_dim_arch="mlp",
                   open_seen=7, open_seen_per_class=150, open_unseen_per_class=40, open_epochs=3,
                   cpu_threads=1),
        lab=dict(dataset="mnist5k", archs=("mlp", "lenet5", "mobilenet", "vgg"), seeds=(0, 1),
                 dim=32, epochs=4, train_per_class=None, test_per_class=None, batch_size=64,
                 optimizer="adam", lr=3e-3, schedule="cosine",
                 arch_options={"vgg": {"widths": (16, 32, 64)},
                               "mobilenet": {"widths": (16, 32, 64, 64)}},
                 low_dim=4, low_dim_arch="lenet5",
                 open_seen=7, open_seen_per_class=None, open_unseen_per_class=None, open_epochs=3,
                 cpu_threads=1),
        full=dict(dataset="cifar10", archs=ZOO_ARCHS, seeds=(0, 1, 2), dim=64, epochs=30,
                  train_per_class=None, test_per_class=None, batch_size=128, optimizer="sgd",
                  lr=0.05, schedule="cosine", arch_options={}, low_dim=4, low_dim_arch="resnet20",
                  open_seen=7, open_seen_per_class=None, open_unseen_per_class=300, open_epochs=30,
                  cpu_threads=None),
    )


def _member_config(settings: Mapping[str, Any], arch: str, seed: int, dim: int, kind: str,
                   epochs: int) -> dict[str, Any]:
    keys = ("dataset", "batch_size", "optimizer", "lr", "schedule")
    cfg = {k: settings[k] for k in keys}
    if kind == "open":
        cfg.update(seen=settings["open_seen"], seen_per_class=settings["open_seen_per_class"],
                   unseen_per_class=settings["open_unseen_per_class"])
    else:
        cfg.update(train_per_class=settings["train_per_class"], test_per_class=settings["test_per_class"])
    cfg.update(arch=arch, seed=seed, dim=dim, kind=kind, epochs=epochs,
               arch_options=dict(settings["arch_options"].get(arch, {})))
    return cfg


# ----------------------------------------------------------------------------- zoo members

@dataclass
class ZooMember:
    """One trained network, reduced to what the lab measures.

    train_emb / test_emb: float32 (N, d) embeddings of the zoo's train / test images (open set:
    seen-class images / unseen-class images). head_weight (C, d), head_bias (C,): the logit layer
    (None for the open-set members). test_acc: the network's own top-1 accuracy.
    """

    name: str
    arch: str
    seed: int
    dim: int
    train_emb: torch.Tensor
    test_emb: torch.Tensor
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    test_acc: float = math.nan
    epochs: list[dict[str, float]] = field(default_factory=list)

    @property
    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.head_weight is None or self.head_bias is None:
            raise ValueError(f"zoo member {self.name!r} has no classification head (open-set member)")
        return self.head_weight, self.head_bias


@dataclass
class Zoo:
    """Members trained on the same classes plus the shared labels of their embeddings."""

    members: list[ZooMember]
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    extras: dict[str, ZooMember] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> ZooMember:
        for m in list(self.members) + list(self.extras.values()):
            if m.name == name:
                return m
        raise ValueError(f"no zoo member {name!r}; members: {self.names + list(self.extras)}")


def _closed_data(settings: Mapping[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    train = load_memoised(settings["dataset"], "train")
    test = load_memoised(settings["dataset"], "test")
    if settings["train_per_class"]:
        train = train.k_per_class(settings["train_per_class"], seed=0)
    if settings["test_per_class"]:
        test = test.k_per_class(settings["test_per_class"], seed=0)
    return train, test


def _open_data(settings: Mapping[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    seen, unseen = zero_shot_split(settings["dataset"], settings["open_seen"])
    if settings["open_seen_per_class"]:
        seen = seen.k_per_class(settings["open_seen_per_class"], seed=0)
    if settings["open_unseen_per_class"]:
        unseen = unseen.k_per_class(settings["open_unseen_per_class"], seed=0)
    return seen, unseen


def _cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


class _CosFaceObjective(nn.Module):
    """CosFace on the embedding (pytorch-metric-learning); its class weights are trained too."""

    def __init__(self, num_classes: int, dim: int, margin: float = 0.2, scale: float = 16.0) -> None:
        super().__init__()
        from pytorch_metric_learning.losses import CosFaceLoss

        self.loss = CosFaceLoss(num_classes, dim, margin=margin, scale=scale)

    def forward(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.from_embedding(model.forward_all(images).embedding, labels)

    def from_embedding(self, embedding: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss of a batch's embeddings (B, d) with labels (B,)."""
        return self.loss(embedding.float(), labels)


def member_config(arch: str, seed: int, *, settings: Mapping[str, Any] | None = None,
                  dim: int | None = None, kind: str = "closed", epochs: int | None = None
                  ) -> dict[str, Any]:
    """A member's config, its cache key: the settings' data and training knobs for `kind`
    (default: the active profile's `zoo_settings()`), arch, seed, dim and epochs."""
    settings = dict(settings if settings is not None else zoo_settings())
    if kind not in ("closed", "open"):
        raise ValueError(f"kind must be 'closed' or 'open', got {kind!r}")
    if arch not in ZOO_ARCHS:
        raise ValueError(f"unknown zoo architecture {arch!r}; known: {', '.join(ZOO_ARCHS)}")
    dim = int(settings["dim"] if dim is None else dim)
    if epochs is None:
        epochs = settings["open_epochs"] if kind == "open" else settings["epochs"]
    return _member_config(settings, arch, seed, dim, kind, int(epochs))


def member_data(cfg: Mapping[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) of a member config: all classes (closed) or seen / unseen classes (open)."""
    if cfg["kind"] == "open":
        return _open_data({"dataset": cfg["dataset"], "open_seen": cfg["seen"],
                           "open_seen_per_class": cfg["seen_per_class"],
                           "open_unseen_per_class": cfg["unseen_per_class"]})
    return _closed_data(cfg)


def build_member(cfg: Mapping[str, Any], train: ArrayDataset
                 ) -> tuple[Network, Callable[..., torch.Tensor]]:
    """(network, fit's loss_fn) of a member config, seeded with its seed: cross-entropy on a
    linear head (closed) or CosFace on the embedding (open, `_CosFaceObjective`)."""
    channels, size = train.image_shape[0], train.image_shape[1]
    config.seed_everything(cfg["seed"])
    closed = cfg["kind"] == "closed"
    net = build_zoo_network(cfg["arch"], channels, train.num_classes, cfg["dim"], image_size=size,
                            head="linear" if closed else None, **cfg["arch_options"])
    return net, _cross_entropy if closed else _CosFaceObjective(train.num_classes, cfg["dim"])


def member_result(cfg: Mapping[str, Any], net: Network, train: ArrayDataset, test: ArrayDataset,
                  epochs: Sequence[dict[str, float]], name: str, device: torch.device,
                  threads: int | None = None) -> ZooMember:
    """The `ZooMember` of a trained network: its embeddings of train and test (under the thread
    cap `threads`), its head and test accuracy (closed); moves `net` to the CPU."""
    with config.cpu_threads(threads):
        member = ZooMember(name, cfg["arch"], cfg["seed"], cfg["dim"],
                           embed(net, train.images, device=device),
                           embed(net, test.images, device=device), epochs=list(epochs))
        net = net.cpu().eval()
    if cfg["kind"] == "closed":
        member.head_weight = net.head.weight.detach().clone()
        member.head_bias = net.head.bias.detach().clone()
        logits = ic.head_logits(member.head, member.test_emb)
        member.test_acc = float((logits.argmax(1) == test.labels.cpu()).float().mean())
    return member


def train_member(arch: str, seed: int, *, settings: Mapping[str, Any] | None = None,
                 dim: int | None = None, kind: str = "closed", epochs: int | None = None,
                 name: str | None = None, progress: bool = True) -> ZooMember:
    """Train (or load from the cache) one zoo member and extract its embeddings.

    kind: "closed" (cross-entropy, linear head with bias, all classes) or "open" (CosFace, no
    head, seen classes only). epochs=0 gives an untrained (randomly initialised) control.
    """
    settings = dict(settings if settings is not None else zoo_settings())
    cfg = member_config(arch, seed, settings=settings, dim=dim, kind=kind, epochs=epochs)
    name = name or f"{arch}-s{seed}"

    def compute() -> ZooMember:
        train, test = member_data(cfg)
        net, loss_fn = build_member(cfg, train)
        threads = settings.get("cpu_threads") if config.get_device().type == "cpu" else None
        with config.cpu_threads(threads):
            history = fit(net, loss_fn, train, epochs=cfg["epochs"], batch_size=settings["batch_size"],
                          optimizer=settings["optimizer"], lr=settings["lr"],
                          schedule=settings["schedule"], seed=seed, progress=progress)
        device = config.get_device()  # where `fit` trained it; embed returns CPU tensors
        return member_result(cfg, net, train, test, history.epochs, name, device, threads)

    member = cached("interchange/member", cfg, compute)
    member.name = name
    return member


def _labels_of(data: ArrayDataset) -> torch.Tensor:
    return data.labels.cpu().clone()


def build_zoo(settings: Mapping[str, Any] | None = None, *, progress: bool = True) -> Zoo:
    """The closed-set zoo: archs x seeds (dim d), plus two extras used by the lab:
    `extras["low_dim"]` (d < C: the closed-form map into it cannot be exact) and
    `extras["random_init"]` (an untrained network: a control source)."""
    settings = dict(settings if settings is not None else zoo_settings())
    members = [train_member(arch, seed, settings=settings, progress=progress)
               for arch in settings["archs"] for seed in settings["seeds"]]
    low_arch, low_dim = settings["low_dim_arch"], settings["low_dim"]
    extras = {
        "low_dim": train_member(low_arch, 0, settings=settings, dim=low_dim,
                                name=f"{low_arch}-d{low_dim}", progress=progress),
        "random_init": train_member(low_arch, 0, settings=settings, epochs=0,
                                    name=f"{low_arch}-untrained", progress=progress),
    }
    train, test = _closed_data(settings)
    return Zoo(members, _labels_of(train), _labels_of(test), list(train.classes), extras, settings)


def build_open_set_zoo(settings: Mapping[str, Any] | None = None, *, progress: bool = True) -> Zoo:
    """One CosFace network per architecture (first seed), trained on the seen classes only.

    train_emb: seen-class images (used to fit maps); test_emb: unseen-class images."""
    settings = dict(settings if settings is not None else zoo_settings())
    members = [train_member(arch, settings["seeds"][0], settings=settings, kind="open",
                            progress=progress) for arch in settings["archs"]]
    seen, unseen = _open_data(settings)
    return Zoo(members, _labels_of(seen), _labels_of(unseen), list(seen.classes) + list(unseen.classes),
               {}, settings)


def synthetic_zoo(n_members: int = 3, dim: int = 8, num_classes: int = 4, n_train: int = 240,
                  n_test: int = 120, noise: float = 0.3, seed: int = 0) -> Zoo:
    """A toy zoo without training, for tests and demos: every member sees the same latent class
    structure z (class centre + noise) through its own random invertible linear map plus a little
    member-specific noise, so the spaces really are affine images of each other. Heads are
    least-squares fits to one-hot labels (with a bias)."""
    if n_members < 2 or dim < 1 or num_classes < 2:
        raise ValueError("need n_members >= 2, dim >= 1 and num_classes >= 2")
    g = torch.Generator().manual_seed(seed)
    centres = 2.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(n_train + n_test) % num_classes
    z = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    members = []
    for k in range(n_members):
        mixing = torch.randn(dim, dim, generator=g) + 2.0 * torch.eye(dim)
        emb = z @ mixing + 0.1 * noise * torch.randn(len(labels), dim, generator=g) + torch.randn(dim, generator=g)
        head = ic.fit_map(emb[:n_train].double(), F.one_hot(labels[:n_train], num_classes).double())
        member = ZooMember(f"toy{k}", f"toy{k % 2}", k // 2, dim, emb[:n_train].float(),
                           emb[n_train:].float(), head.weight.float(), head.bias.float())
        logits = ic.head_logits(member.head, member.test_emb)
        member.test_acc = float((logits.argmax(1) == labels[n_train:]).float().mean())
        members.append(member)
    return Zoo(members, labels[:n_train].clone(), labels[n_train:].clone(),
               [str(c) for c in range(num_classes)])


# ----------------------------------------------------------------------------- closed-set measures

def _subset(n_total: int, n: int | None, seed: int) -> torch.Tensor | None:
    if n is None or n >= n_total:
        return None
    if n < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n}")
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n]


def fit_pair(zoo: Zoo, src: str, dst: str, method: str = "affine", *, n_pairs: int | None = None,
             seed: int = 0, split: str = "train", **options: Any) -> ic.EmbeddingMap:
    """Fit `method` from member `src`'s to member `dst`'s embeddings (float64) on `n_pairs`
    seeded random images of `split` (default: all training images)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    a, b = zoo.member(src), zoo.member(dst)
    x, y = (a.train_emb, b.train_emb) if split == "train" else (a.test_emb, b.test_emb)
    index = _subset(len(x), n_pairs, seed)
    if index is not None:
        x, y = x[index], y[index]
    return ic.fit_map(x.double(), y.double(), method, **options)


def evaluate_map(zoo: Zoo, src: str, dst: str, emb_map: ic.EmbeddingMap) -> dict[str, float]:
    """Held-out (test) accuracy of B's head on A's mapped embeddings, B's own accuracy, the
    retention acc(A -> B) / acc(B) and the R^2 of the mapped embeddings against B's."""
    a, b = zoo.member(src), zoo.member(dst)
    mapped_acc = ic.mapped_accuracy(emb_map, a.test_emb.double(), b.head, zoo.test_labels)
    return {"accuracy": mapped_acc, "target_accuracy": b.test_acc,
            "retention": ic.retention(mapped_acc, b.test_acc),
            "r2": ic.r2_score(emb_map(a.test_emb.double()), b.test_emb.double())}


def off_diagonal_median(matrix: np.ndarray) -> float:
    """Median over the ordered pairs (i != j) of a square matrix."""
    m = np.asarray(matrix, dtype=float)
    return float(np.median(m[~np.eye(len(m), dtype=bool)]))


def retention_matrix(zoo: Zoo, method: str = "affine", *, names: Sequence[str] | None = None,
                     n_pairs: int | None = None, seed: int = 0, split: str = "train",
                     **options: Any) -> dict[str, Any]:
    """Source x target matrices (NaN diagonal) of retention, mapped accuracy and R^2 for maps
    fitted by `method`; `median` is over all ordered pairs of distinct members."""
    names = list(names if names is not None else zoo.names)
    k = len(names)
    out = {key: np.full((k, k), np.nan) for key in ("retention", "accuracy", "r2")}
    for (i, src), (j, dst) in permutations(enumerate(names), 2):
        emb_map = fit_pair(zoo, src, dst, method, n_pairs=n_pairs, seed=seed + 7919 * i + j,
                           split=split, **options)
        result = evaluate_map(zoo, src, dst, emb_map)
        for key in out:
            out[key][i, j] = result[key]
    return {"names": names, **out, "median": off_diagonal_median(out["retention"]),
            "own_accuracy": [zoo.member(n).test_acc for n in names]}


def closed_form_matrix(zoo: Zoo, names: Sequence[str] | None = None) -> dict[str, Any]:
    """The closed-form map (from the logit layers) for every ordered pair.

    agreement[i, j]: share of test images where B's head on the mapped embedding predicts what
    A predicts (1.0 exactly when rank(W_B) = C); exact[i, j]: rank(W_B) = C; accuracy[i, j]: B's
    head on the mapped embeddings; max_logit_error[i, j]: largest |mapped logit - A's logit|.
    """
    if names is None:
        names = zoo.names + ([zoo.extras["low_dim"].name] if "low_dim" in zoo.extras else [])
    names = list(names)
    k = len(names)
    out = {key: np.full((k, k), np.nan) for key in ("agreement", "accuracy", "max_logit_error")}
    exact = np.zeros((k, k), dtype=bool)
    for (i, src), (j, dst) in permutations(enumerate(names), 2):
        a, b = zoo.member(src), zoo.member(dst)
        w_a, b_a = (t.double() for t in a.head)
        w_b, b_b = (t.double() for t in b.head)
        emb_map = ic.map_from_heads(w_a, b_a, w_b, b_b)
        f_a = a.test_emb.double()
        source_logits = ic.head_logits((w_a, b_a), f_a)
        mapped_logits = ic.head_logits((w_b, b_b), emb_map(f_a))
        out["agreement"][i, j] = float((mapped_logits.argmax(1) == source_logits.argmax(1)).double().mean())
        out["accuracy"][i, j] = float((mapped_logits.argmax(1) == zoo.test_labels).double().mean())
        out["max_logit_error"][i, j] = float((mapped_logits - source_logits).abs().max())
        exact[i, j] = emb_map.info["exact"]
    return {"names": names, **out, "exact": exact,
            "dims": [zoo.member(n).dim for n in names], "num_classes": len(zoo.classes)}


def closed_form_checks(result: Mapping[str, Any]) -> dict[str, bool]:
    """The two facts of E1 read off `closed_form_matrix`: every map into a target whose
    embedding dim d >= C is exact (rank(W_B) = C) and reproduces A's predictions on every test
    image; no map into a target with d < C is exact (its logits differ from A's) and such maps
    change some predictions (agreement below 1 for at least one pair: a low-rank head can still
    preserve every argmax by luck)."""
    dims, c = np.asarray(result["dims"]), result["num_classes"]
    off = ~np.eye(len(dims), dtype=bool)
    wide = off & (dims[None, :] >= c)
    narrow = off & (dims[None, :] < c)
    checks = {"exact_when_target_dim_ge_classes": bool(result["exact"][wide].all()
                                                       and (result["agreement"][wide] == 1.0).all())}
    if narrow.any():
        checks["inexact_when_target_dim_lt_classes"] = bool(
            not result["exact"][narrow].any() and (result["max_logit_error"][narrow] > 1e-6).all()
            and (result["agreement"][narrow] < 1.0).any())
    return checks


def controls(zoo: Zoo, method: str = "affine", seed: int = 0) -> dict[str, Any]:
    """Median retention of the controls beside the fitted map's (not in the paper; see
    docs/methods/interchange.md).

    identity: the identity map between two seeds of one architecture (both directions);
    shuffled: `method` fitted on shuffled correspondences (all ordered pairs);
    random_init: `method` from an untrained network's embedding into each trained member;
    fit_on_test: `method` fitted on the test images it is evaluated on (in-sample)."""
    names = zoo.names
    by_arch: dict[str, list[str]] = {}
    for m in zoo.members:
        by_arch.setdefault(m.arch, []).append(m.name)
    identity = []
    for group in by_arch.values():
        for src, dst in permutations(group, 2):
            emb_map = ic.identity_map(zoo.member(src).dim, torch.float64)
            identity.append(evaluate_map(zoo, src, dst, emb_map)["retention"])
    shuffled = []
    for k, (src, dst) in enumerate(permutations(names, 2)):
        a, b = zoo.member(src), zoo.member(dst)
        emb_map = ic.shuffled_fit(a.train_emb.double(), b.train_emb.double(), method, seed=seed + k)
        shuffled.append(evaluate_map(zoo, src, dst, emb_map)["retention"])
    random_init = []
    if "random_init" in zoo.extras:
        source = zoo.extras["random_init"].name
        random_init = [evaluate_map(zoo, source, dst, fit_pair(zoo, source, dst, method))["retention"]
                       for dst in names]
    fitted = retention_matrix(zoo, method)
    on_test = retention_matrix(zoo, method, split="test")
    return {
        "fitted": fitted["median"],
        "fit_on_test": on_test["median"],
        "identity": float(np.median(identity)) if identity else math.nan,
        "shuffled": float(np.median(shuffled)),
        "random_init": float(np.median(random_init)) if random_init else math.nan,
        "chance": 1.0 / len(zoo.classes) / float(np.median([m.test_acc for m in zoo.members])),
        "n_identity_pairs": len(identity),
        "n_pairs": len(shuffled),
    }


def retention_vs_pairs(zoo: Zoo, ns: Sequence[int],
                       methods: Mapping[str, tuple[str, dict[str, Any]]] | None = None,
                       names: Sequence[str] | None = None, seed: int = 0) -> dict[str, list[float]]:
    """Median retention over ordered pairs vs the number of fitting pairs N, per method.

    methods: label -> (method, options); default affine, ridge (alpha = 1) and Procrustes."""
    methods = methods or {"affine (OLS)": ("affine", {}), "ridge (alpha=1)": ("ridge", {"alpha": 1.0}),
                          "Procrustes": ("procrustes", {})}
    return {label: [retention_matrix(zoo, method, names=names, n_pairs=n, seed=seed, **opts)["median"]
                    for n in ns] for label, (method, opts) in methods.items()}


def retention_vs_rank(zoo: Zoo, ranks: Sequence[int], names: Sequence[str] | None = None,
                      alpha: float = 0.0) -> list[float]:
    """Median retention over ordered pairs of reduced-rank maps, for each rank k."""
    return [retention_matrix(zoo, "reduced_rank", names=names, rank=k, alpha=alpha)["median"]
            for k in ranks]


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation (scipy)."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


SIMILARITY_INDICES: dict[str, Callable[[torch.Tensor, torch.Tensor], float]] = {
    "cka": ic.linear_cka,
    "cka_debiased": functools.partial(ic.linear_cka, debiased=True),
    "mean_cca": ic.mean_cca,
    "svcca": ic.svcca,
    "procrustes": ic.procrustes_distance,
}


def similarity_rows(zoo: Zoo, method: str = "affine", *, seed: int = 0
                    ) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per unordered member pair: each of `SIMILARITY_INDICES` on the test embeddings (linear CKA
    biased and debiased, mean CCA, SVCCA, Procrustes distance), the same index with B's rows
    shuffled (`<index>_shuffled`, seed `seed` + pair number: the pairing broken, i.e. what the
    index gives by chance), and the mean retention of the two fitted maps (A->B, B->A).

    Returns (rows, Spearman rho of each index with retention)."""
    matrix = retention_matrix(zoo, method)
    index = {n: i for i, n in enumerate(matrix["names"])}
    rows = []
    for k, (src, dst) in enumerate(combinations(zoo.names, 2)):
        x, y = zoo.member(src).test_emb.double(), zoo.member(dst).test_emb.double()
        shuffled = ic.shuffled_rows(y, seed + k)
        i, j = index[src], index[dst]
        row: dict[str, Any] = {"pair": f"{src} / {dst}",
                               "same_arch": zoo.member(src).arch == zoo.member(dst).arch}
        for key, similarity in SIMILARITY_INDICES.items():
            row[key] = similarity(x, y)
            row[f"{key}_shuffled"] = similarity(x, shuffled)
        row["retention"] = float((matrix["retention"][i, j] + matrix["retention"][j, i]) / 2)
        rows.append(row)
    rhos = {key: spearman([r[key] for r in rows], [r["retention"] for r in rows])
            for key in SIMILARITY_INDICES}
    return rows, rhos


# ----------------------------------------------------------------------------- open set

def roc_on_grid(far: np.ndarray, tar: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """TAR at each FAR of `grid` (the best TAR with FAR <= grid value): a compact ROC to store."""
    far, tar = np.asarray(far), np.asarray(tar)
    best = np.maximum.accumulate(tar)  # FAR is non-decreasing along the ROC
    pos = np.searchsorted(far, np.asarray(grid), side="right") - 1
    return np.where(pos >= 0, best[np.clip(pos, 0, None)], 0.0)


def open_set_results(zoo: Zoo, method: str = "affine", *, normalize: bool = True,
                     fars: Sequence[float] = (1e-2, 1e-3), controls_pair: int = 0,
                     **options: Any) -> dict[str, Any]:
    """Verification and rank-1 retrieval on the unseen classes, native vs mapped.

    For every member: its native metrics (its own embeddings of the unseen images, all pairs of
    distinct images). For every ordered pair of members: the map fitted on seen-class images only,
    then probes M f_A(x) against B's gallery f_B(y). `normalize` L2-normalises embeddings before
    fitting (the scores are cosines, so only directions matter). Also a shuffled-map control for
    one pair, and ROC curves on a log FAR grid for plotting.
    """
    grid = np.logspace(-4, 0, 60)

    def prep(t: torch.Tensor) -> torch.Tensor:
        t = t.double()
        return F.normalize(t, dim=1) if normalize else t

    labels = zoo.test_labels
    native, curves = {}, {}
    for m in zoo.members:
        test = prep(m.test_emb)
        native[m.name], far, tar = ic.score_protocol(test, test, labels, fars)
        curves[f"{m.name} native"] = roc_on_grid(far, tar, grid)
    pairs = []
    for src, dst in permutations(zoo.names, 2):
        a, b = zoo.member(src), zoo.member(dst)
        emb_map = ic.fit_map(prep(a.train_emb), prep(b.train_emb), method, **options)
        metrics, far, tar = ic.score_protocol(emb_map(prep(a.test_emb)), prep(b.test_emb),
                                              labels, fars)
        pairs.append({"source": src, "target": dst, **metrics})
        curves[f"{src} -> {dst} mapped"] = roc_on_grid(far, tar, grid)
    src, dst = list(permutations(zoo.names, 2))[controls_pair]
    a, b = zoo.member(src), zoo.member(dst)
    shuffled = ic.shuffled_fit(prep(a.train_emb), prep(b.train_emb), method, **options)
    metrics, far, tar = ic.score_protocol(shuffled(prep(a.test_emb)), prep(b.test_emb), labels,
                                          fars)
    control = {"source": src, "target": dst, **metrics}
    curves[f"{src} -> {dst} shuffled control"] = roc_on_grid(far, tar, grid)
    return {"native": native, "pairs": pairs, "shuffled_control": control, "grid": grid,
            "curves": curves, "n_unseen": int(len(labels)), "fars": tuple(fars)}
