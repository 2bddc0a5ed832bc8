"""The interchangeable-embeddings runner (notebook 03; protocol and deviations in
docs/methods/interchange.md, the stored run's numbers in docs/findings/).

A run (`Settings` -> `Result`, `labkit.core.experiment`'s contract) trains one zoo member
(arch, seed, dim, kind, epochs) ending in embedding (d) -> Linear(d, C) with a bias: with
cross-entropy on all classes ("closed"), or with CosFace on the first classes only ("open"),
like a face network evaluated on new people. Its result keeps what the lab measures: train and
test embeddings, the logit layer and test accuracy (closed) or retrieval among the unseen
classes (open). `build_zoo` sweeps the profile's `grid()` (arch x seed) plus two control
members; `build_open_set_zoo` trains one open member per architecture. What is measured on a
zoo is in `labkit.methods.interchange_analysis`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from labkit.core import config, experiment
from labkit.core.data import ArrayDataset, load_memoised, zero_shot_split
from labkit.core.evaluate import embed, retrieval_metrics
from labkit.core.models import Network
from labkit.core.train import fit
from labkit.methods import interchange as ic
from labkit.methods.interchange import ZOO_ARCHS, CosFaceObjective, build_zoo_network

KINDS = ("closed", "open")
LOW_DIM = 4  # the control member's embedding: d < C, so no closed-form map into it is exact
# the lab profile's slim widths (its CPU budget); the quick and full profiles use the defaults
LAB_ARCH_OPTIONS = {"mobilenet": {"widths": (16, 32, 64, 64)}, "vgg": {"widths": (16, 32, 64)}}


def _options_table(table: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """`arch_options` checked and in one form ({arch: {option: value}}, lists as tuples), so
    settings from TOML equal those written in code."""
    if not isinstance(table, Mapping) or not set(table) <= set(ZOO_ARCHS) or not all(
            isinstance(v, Mapping) for v in table.values()):
        raise ValueError(f"arch_options maps architectures ({', '.join(ZOO_ARCHS)}) to their "
                         f"options, e.g. {{'vgg': {{'widths': (16, 32, 64)}}}}; got {table!r}")
    return {arch: {k: tuple(v) if isinstance(v, list) else v for k, v in sorted(opts.items())}
            for arch, opts in sorted(table.items())}


@dataclass(frozen=True)
class Settings(experiment.Settings):
    """One zoo member. Defaults: the lab profile (all of mnist5k, d = 32, 4 epochs of Adam with
    a cosine schedule); `PROFILES` holds what quick and full change. train_per_class and
    test_per_class apply to closed members, seen (the first `seen` classes train an open
    member), seen_per_class and unseen_per_class to open ones; None: every image. epochs = 0
    gives an untrained (randomly initialised) control."""

    arch: str = "mlp"
    seed: int = 0
    kind: str = "closed"  # "closed": cross-entropy, all classes; "open": CosFace, seen classes
    dim: int = 32
    epochs: int = 4
    dataset: str = "mnist5k"
    train_per_class: int | None = None
    test_per_class: int | None = None
    seen: int = 7
    seen_per_class: int | None = None
    unseen_per_class: int | None = None
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 3e-3
    schedule: str | None = "cosine"
    # {arch: options of core.models' backbone}: one table for the zoo, so a sweep over arch
    # gives every architecture its own options
    arch_options: Mapping[str, Mapping[str, Any]] = field(
        default_factory=lambda: dict(LAB_ARCH_OPTIONS))

    PROFILES: ClassVar = {
        "quick": dict(dim=16, epochs=3, train_per_class=150, test_per_class=30,
                      seen_per_class=150, unseen_per_class=40, lr=2e-3, schedule=None,
                      arch_options={}),
        "full": dict(dataset="cifar10", dim=64, epochs=30, unseen_per_class=300,
                     batch_size=128, optimizer="sgd", lr=0.05, arch_options={}),
    }

    def __post_init__(self) -> None:
        object.__setattr__(self, "arch_options", _options_table(self.arch_options))
        super().__post_init__()

    def check(self) -> None:
        if self.arch not in ZOO_ARCHS:
            raise ValueError(f"unknown zoo architecture {self.arch!r}; known: "
                             f"{', '.join(ZOO_ARCHS)}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be 'closed' or 'open', got {self.kind!r}")
        if self.dim < 1 or self.epochs < 0:
            raise ValueError(f"need dim >= 1 and epochs >= 0, got {self.dim} and {self.epochs}")

    @property
    def options(self) -> dict[str, Any]:
        """The backbone options of this member's architecture."""
        return dict(self.arch_options.get(self.arch, {}))


@dataclass
class Result(experiment.Result):
    """One trained zoo member, reduced to what the lab measures.

    train_emb / test_emb: float32 (N, d) embeddings of the train / test images (open: seen-class
    images / unseen-class images). head_weight (C, d), head_bias (C,): the logit layer (None for
    open members). metrics: test_acc, the network's own top-1 accuracy (closed), or recall@K,
    MAP@R and NMI among the unseen images (open). name: the member's label in a zoo.
    """

    settings: Settings
    metrics: dict[str, float]
    history: list[dict[str, float]]
    train_emb: torch.Tensor
    test_emb: torch.Tensor
    head_weight: torch.Tensor | None = None
    head_bias: torch.Tensor | None = None
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"{self.settings.arch}-s{self.settings.seed}"

    @property
    def arch(self) -> str:
        return self.settings.arch

    @property
    def dim(self) -> int:
        return self.settings.dim

    @property
    def test_acc(self) -> float:
        """Top-1 accuracy of the member's own head (NaN for an open member)."""
        return self.metrics.get("test_acc", math.nan)

    @property
    def head(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(weight (C, d), bias (C,)) of the logit layer."""
        if self.head_weight is None or self.head_bias is None:
            raise ValueError(f"zoo member {self.name!r} has no classification head (open-set "
                             "member)")
        return self.head_weight, self.head_bias


@dataclass
class Zoo:
    """Members trained on the same classes plus the shared labels of their embeddings; extras
    are control members that the map analyses read by name but do not sweep over."""

    members: list[Result]
    train_labels: torch.Tensor
    test_labels: torch.Tensor
    classes: list[str]
    extras: dict[str, Result] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.members]

    def member(self, name: str) -> Result:
        for m in [*self.members, *self.extras.values()]:
            if m.name == name:
                return m
        raise ValueError(f"no zoo member {name!r}; members: "
                         f"{self.names + [m.name for m in self.extras.values()]}")


def load_data(settings: Settings) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test): all classes (closed) or (seen, unseen) classes (open), subsampled per
    class with seed 0, so every member of a zoo sees the same images."""
    if settings.kind == "open":
        train, test = zero_shot_split(settings.dataset, settings.seen)
        counts = settings.seen_per_class, settings.unseen_per_class
    else:
        train = load_memoised(settings.dataset, "train")
        test = load_memoised(settings.dataset, "test")
        counts = settings.train_per_class, settings.test_per_class
    train = train.k_per_class(counts[0], seed=0) if counts[0] else train
    return train, test.k_per_class(counts[1], seed=0) if counts[1] else test


def _cross_entropy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(images), labels)


def build_member(settings: Settings, train: ArrayDataset
                 ) -> tuple[Network, Callable[..., torch.Tensor]]:
    """(network, fit's loss_fn), seeded with the member's seed: cross-entropy on a linear head
    (closed) or CosFace on the embedding (open). `run` and `labkit train` both build here."""
    channels, size = train.image_shape[0], train.image_shape[1]
    config.seed_everything(settings.seed)
    closed = settings.kind == "closed"
    net = build_zoo_network(settings.arch, channels, train.num_classes, settings.dim,
                            image_size=size, head="linear" if closed else None,
                            **settings.options)
    return net, _cross_entropy if closed else CosFaceObjective(train.num_classes, settings.dim)


def evaluate(settings: Settings, net: Network, train: ArrayDataset, test: ArrayDataset,
             history: Sequence[dict[str, float]], device: torch.device,
             threads: int | None = None) -> Result:
    """The `Result` of a trained network: its embeddings of train and test (under the thread
    cap `threads`), its head and test accuracy (closed) or retrieval among the unseen images
    (open); moves `net` to the CPU."""
    with config.cpu_threads(threads):
        train_emb = embed(net, train.images, device=device)
        test_emb = embed(net, test.images, device=device)
        net = net.cpu().eval()
        labels = test.labels.cpu()
        if settings.kind == "open":
            return Result(settings, retrieval_metrics(test_emb, labels, seed=settings.seed),
                          list(history), train_emb, test_emb)
        weight, bias = net.head.weight.detach().clone(), net.head.bias.detach().clone()
        logits = ic.head_logits((weight, bias), test_emb)
        metrics = {"test_acc": float((logits.argmax(1) == labels).float().mean())}
        return Result(settings, metrics, list(history), train_emb, test_emb, weight, bias)


class InterchangeExperiment(experiment.Experiment):
    """Zoo members over architectures and seeds; a summary is each member kind's accuracy."""

    cache_name = "interchange/member"
    settings_type = Settings
    group_by = ("kind", "arch", "dim", "epochs")
    metrics = ("test_acc", "recall@1", "map@r")

    def grid(self) -> dict[str, tuple]:
        return {"arch": config.pick(quick=("mlp", "lenet5"),
                                    lab=("mlp", "lenet5", "mobilenet", "vgg"), full=ZOO_ARCHS),
                "seed": config.pick(quick=(0, 1), lab=(0, 1), full=(0, 1, 2))}

    def train(self, settings: Settings, progress: bool) -> Result:
        train, test = load_data(settings)
        net, loss_fn = build_member(settings, train)
        device = config.get_device()
        # the zoo's nets are tiny: on a small shared CPU more intra-op threads only stall
        threads = config.small_cpu_thread_cap(device)
        with config.cpu_threads(threads):
            history = fit(net, loss_fn, train, epochs=settings.epochs,
                          batch_size=settings.batch_size, optimizer=settings.optimizer,
                          lr=settings.lr, schedule=settings.schedule, seed=settings.seed,
                          progress=progress)
        return evaluate(settings, net, train, test, history.epochs, device, threads)


EXPERIMENT = InterchangeExperiment()
run, sweep, summary, table, claims = experiment.bind(EXPERIMENT)


def control_arch() -> str:
    """The architecture of the closed zoo's two control members (the profile's)."""
    return config.pick(quick="mlp", lab="lenet5", full="resnet20")


def open_epochs() -> int:
    """The open-set members' epochs (the profile's)."""
    return config.pick(quick=3, lab=3, full=30)


def build_zoo(settings: Settings | None = None, *, control: str | None = None,
              progress: bool = True, **axes: Sequence[Any]) -> Zoo:
    """The closed-set zoo: `sweep(settings, **axes)` (default: the profile's arch x seed),
    plus two seed-0 members of the `control` architecture (default `control_arch()`):
    `extras["low_dim"]` (d = 4 < C: the closed-form map into it cannot be exact) and
    `extras["random_init"]` (untrained: a control source)."""
    base = settings if settings is not None else Settings.for_profile()
    if base.kind != "closed":
        raise ValueError("build_zoo builds closed members; use build_open_set_zoo for open ones")
    members = sweep(base, progress=progress, **axes)
    arch = control or control_arch()
    low = replace(run(base.replace(arch=arch, seed=0, dim=LOW_DIM)), name=f"{arch}-d{LOW_DIM}")
    untrained = replace(run(base.replace(arch=arch, seed=0, epochs=0)),
                        name=f"{arch}-untrained")
    train, test = load_data(base)
    return Zoo(members, train.labels.cpu().clone(), test.labels.cpu().clone(), list(train.classes),
               {"low_dim": low, "random_init": untrained})


def build_open_set_zoo(settings: Settings | None = None, *, archs: Sequence[str] | None = None,
                       seed: int | None = None, epochs: int | None = None,
                       progress: bool = True) -> Zoo:
    """One open member per architecture of `archs` (default: the grid's, with its first seed,
    for `open_epochs()`), trained on the seen classes only: train_emb are seen-class images
    (the maps are fitted on them), test_emb unseen-class images."""
    grid = EXPERIMENT.grid()
    base = (settings if settings is not None else Settings.for_profile()).replace(
        kind="open", seed=grid["seed"][0] if seed is None else seed,
        epochs=open_epochs() if epochs is None else epochs)
    members = sweep(base, progress=progress, arch=tuple(archs or grid["arch"]))
    seen, unseen = load_data(base)
    return Zoo(members, seen.labels.cpu().clone(), unseen.labels.cpu().clone(),
               [*seen.classes, *unseen.classes])
