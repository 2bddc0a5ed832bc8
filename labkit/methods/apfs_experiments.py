"""APFS experiments: the loss x {baseline, +APFS, +APFS+mining} ablation on a zero-shot split.

Every run trains the same network with the same budget (steps, batch size P*M, optimiser) and
evaluates retrieval on the unseen classes with `labkit.core.evaluate.retrieval_metrics`:
baseline: pytorch-metric-learning's m-per-class batches (P classes x M samples), the loss on all
pairs/triplets; apfs: `RepresentativeBatchSampler` batches (P representatives + P*(M-1)
samples), the loss on sample-to-representative pairs plus the proximal term (anchor reset every
T steps); apfs+mining: the same with hard class mining from the representatives' embeddings.

The runner follows `labkit.core.experiment`; the λ and T sweeps are `sweep(settings,
strength=...)` / `sweep(settings, lifetime=...)`; `step_cost` times the variants' steps side by
side. The 2-D feasible-set run is `labkit.methods.apfs.geometry_run`. Protocol, defaults and
deviations: docs/methods/apfs.md; measurements: docs/findings/05_alternating_projections.md.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any, ClassVar

import torch
from torch import nn

from labkit.core import config, experiment
from labkit.core.data import ArrayDataset, MPerClassBatches, class_disjoint_split
from labkit.core.evaluate import embed, retrieval_metrics
from labkit.core.experiment import Comparison
from labkit.core.models import Network, PooledLinear, build_backbone, map_shape
from labkit.core.train import fit
from labkit.methods import gsp
from labkit.methods.apfs import (
    LOSS_NAMES,
    MINER_NAMES,
    MetricLoss,
    ProximalRegularizer,
    RepresentativeBatchSampler,
    representative_embedder,
    tiny_network,
)

VARIANTS = ("baseline", "apfs", "apfs+mining")
PROXIMAL_FORMS = ("gradient", "penalty")
POOLINGS = (None, "gap", "gsp")


@dataclass(frozen=True)
class Settings(experiment.Settings):
    """One APFS run. Defaults: the lab profile (mnist5k digits 0-4 train, 5-9 test, a small
    3-block CNN); `PROFILES` holds what quick and full change. T, λ, P and M of the paper are
    UNVERIFIED (docs/methods/apfs.md); λ is in the authors' convention, a gradient pull of
    λ (θ - θ_anchor)."""

    loss: str = "contrastive"
    variant: str = "apfs"  # "baseline", "apfs", "apfs+mining"
    seed: int = 0
    dataset: str = "mnist5k"
    arch: str = "tiny"
    widths: tuple[int, ...] | None = (16, 32, 64)
    dim: int = 64
    epochs: int = 5  # passes of the sampler
    batches_per_pass: int = 60  # a multiple of lifetime: rounds restart with each pass
    lifetime: int = 10  # T: steps a round keeps its representatives
    classes_per_batch: int = 3  # P
    samples_per_class: int = 10  # M
    strength: float = 0.2  # λ of the proximal term
    temperature: float | None = None  # None: nearest-class mining, else softmax over -D_rep/τ
    lr: float = 1e-3
    train_per_class: int | None = None  # None: every training image
    test_per_class: int | None = None
    image_size: int = 28
    # "gradient": the proximal pull λ(θ - θ_anchor) added in gradient hooks (the authors' code
    # works on gradients too: no extra graph); "penalty": (λ/2)||θ - θ_anchor||² in the loss
    proximal: str = "gradient"
    miner: str | None = None  # None (the authors' setting) or a pair miner of MINER_NAMES
    # None: the trunk's own neck (tiny: flatten + linear, others: average + linear); "gsp" or
    # "gap" (exactly GAP: mu = 1): the GSP runner's layer on the full-resolution map
    pooling: str | None = None
    num_prototypes: int = 16  # K, mu (transport ratio) and gamma of the GSP layer
    mu: float = 0.3
    gamma: float = 5.0

    PROFILES: ClassVar = {
        "quick": dict(widths=(8, 16, 32), dim=32, epochs=1, batches_per_pass=10, lifetime=5,
                      samples_per_class=6, train_per_class=30, test_per_class=20),
        # paper scale (untested here): the CCP follow-up's protocol, 32 = 8 classes x 4 per
        # batch, and its regularization_coeff as λ
        "full": dict(dataset="cub200", arch="resnet50", widths=None, dim=128, epochs=60,
                     batches_per_pass=180, lifetime=20, classes_per_batch=8,
                     samples_per_class=4, strength=2e-4, lr=1e-5, image_size=224),
    }

    def check(self) -> None:
        for name, value, allowed in (("loss", self.loss, LOSS_NAMES), ("variant", self.variant,
                                     VARIANTS), ("miner", self.miner, (None, *MINER_NAMES)),
                                     ("pooling", self.pooling, POOLINGS),
                                     ("proximal form", self.proximal, PROXIMAL_FORMS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; use one of {allowed}")
        if self.batches_per_pass % self.lifetime:
            raise ValueError(f"batches_per_pass={self.batches_per_pass} must be a multiple of "
                             f"lifetime={self.lifetime} (rounds restart with each pass)")


@dataclass
class Result(experiment.Result):
    """A trained run: retrieval metrics on the unseen classes, per-epoch history, the mean
    seconds per step, ||θ - θ_anchor|| at each round's end (empty for the baseline), weights."""

    settings: Settings
    metrics: dict[str, float]
    history: list[dict[str, float]]
    seconds_per_step: float
    round_distances: list[float]
    image_shape: tuple[int, int, int] = (1, 28, 28)
    state_dict: dict[str, torch.Tensor] | None = None  # None: a result written by hand

    def model(self) -> Network:
        """The trained network, rebuilt (eval mode, CPU)."""
        if self.state_dict is None:
            raise ValueError("this result holds no weights")
        model = build_model(self.settings, self.image_shape[0], self.image_shape[1])
        model.load_state_dict(self.state_dict)
        return model.eval()


def load_split(settings: Settings) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) with disjoint classes: mnist5k digits 0-4 / 5-9, or a folder set's halves."""
    return class_disjoint_split(settings.dataset, settings.image_size,
                                train_per_class=settings.train_per_class,
                                test_per_class=settings.test_per_class, seed=settings.seed)


def build_model(settings: Settings, in_channels: int, image_size: int) -> Network:
    """Backbone + embedding of `dim` (no classifier head): the trunk's own neck, or GSP."""
    options: dict[str, Any] = {"widths": tuple(settings.widths)} if settings.widths else {}
    if settings.pooling is None:
        if settings.arch == "tiny":
            return tiny_network(settings.widths, settings.dim, in_channels, image_size)
        backbone = build_backbone(settings.arch, in_channels, image_size, **options)
        return Network(backbone, PooledLinear(backbone.out_channels, settings.dim), head=None)
    backbone = build_backbone(settings.arch, in_channels, image_size, **options,
                              **({"pool_last": False} if settings.arch == "vgg" else {}))
    neck = gsp.GSP(map_shape(backbone, in_channels, image_size)[0], settings.dim,
                   settings.num_prototypes, mu=1.0 if settings.pooling == "gap" else settings.mu,
                   gamma=settings.gamma)
    return Network(backbone, neck, head=None)


def make_training(settings: Settings, model: nn.Module, train: ArrayDataset,
                  ) -> tuple[MetricLoss, Any, list[Any]]:
    """(loss_fn, batch_sampler, callbacks) of the settings' variant, with the same budget for
    all; sets a GSP layer's prototypes. `run` and `labkit train` both build their training here."""
    p, m, steps, miner = (settings.classes_per_batch, settings.samples_per_class,
                          settings.batches_per_pass, settings.miner)
    if settings.pooling is not None:  # k-centres of one batch's worth of seeded train images
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(settings.seed))
        gsp.prime_prototypes(model, train.images[pick[:p * m]])
    if settings.variant == "baseline":
        return (MetricLoss(settings.loss, miner=miner), MPerClassBatches(train.labels, m, p, steps),
                [])
    mining = settings.variant == "apfs+mining"
    sampler = RepresentativeBatchSampler(
        train.labels, p, m, settings.lifetime, hard_class_mining=mining, seed=settings.seed,
        batches_per_pass=steps, temperature=settings.temperature,
        embed_fn=representative_embedder(model, train.images) if mining else None)
    reg = ProximalRegularizer(model, float(settings.strength), settings.lifetime,
                              via_gradient=settings.proximal == "gradient")
    # the sampler guarantees the batch layout, so the per-step host check is skipped
    return (MetricLoss(settings.loss, representatives=p, regularizer=reg, check=False,
                       miner=miner), sampler, [reg])


class APFSExperiment(experiment.RetrievalExperiment):
    """Baseline vs APFS vs APFS + hard class mining per loss, over seeds."""

    cache_name = "apfs"
    settings_type = Settings
    losses, variants = LOSS_NAMES, VARIANTS
    comparisons = (Comparison("apfs > baseline", "variant", "apfs", "baseline", "recall@1"),
                   Comparison("mining > apfs", "variant", "apfs+mining", "apfs", "recall@1"))

    def train(self, settings: Settings, progress: bool) -> Result:
        config.seed_everything(settings.seed)
        train, test = load_split(settings)
        device = config.get_device()
        train = train.to(device)
        c, h, _ = train.image_shape
        model = build_model(settings, c, h).to(device)
        loss_fn, sampler, callbacks = make_training(settings, model, train)
        started = time.perf_counter()
        history = fit(model, loss_fn, train, epochs=settings.epochs, optimizer="adam",
                      lr=settings.lr, batch_sampler=sampler, callbacks=callbacks,
                      device=device, seed=settings.seed, progress=progress)
        seconds = (time.perf_counter() - started) / max(1, settings.epochs * len(sampler))
        return evaluate(settings, model, test, history.epochs, seconds, callbacks)


def evaluate(settings: Settings, model: Network, test: ArrayDataset,
             history: list[dict[str, float]], seconds_per_step: float,
             callbacks: list[Any]) -> Result:
    """The run's `Result`: retrieval on the unseen classes, and the weights on the CPU."""
    metrics = retrieval_metrics(embed(model, test.images), test.labels.cpu(), seed=settings.seed)
    return Result(settings, metrics, list(history), seconds_per_step,
                  list(callbacks[0].round_distances) if callbacks else [],
                  tuple(test.image_shape), {k: v.cpu() for k, v in model.state_dict().items()})


EXPERIMENT = APFSExperiment()
run, sweep, summary, table, claims = experiment.bind(EXPERIMENT)


def sweep_values() -> dict[str, tuple]:
    """The λ (strength) and T (lifetime) values the notebook sweeps (each T divides
    batches_per_pass): `sweep(settings, strength=sweep_values()["strength"])`."""
    return config.pick(quick={"strength": (0.0, 0.2), "lifetime": (1, 5)},
                       lab={"strength": (0.0, 0.02, 0.2, 2.0), "lifetime": (1, 5, 10, 30)})


# ----------------------------------------------------------------------------- step cost

@dataclass
class StepCost:
    """Seconds per training step of each variant in each timed block, blocks side by side.
    A step = next batch + forward + loss + backward + Adam step + callbacks."""

    settings: Settings
    steps: int  # steps per block
    blocks: dict[str, list[float]]  # variant -> seconds per step of each block

    def ms(self, variant: str) -> float:
        """Mean milliseconds per step over the blocks."""
        return 1e3 * statistics.fmean(self.blocks[variant])

    def ratio(self, variant: str) -> float:
        """`variant`'s time over the baseline's, total over total."""
        return sum(self.blocks[variant]) / sum(self.blocks["baseline"])

    def median_ratio(self, variant: str) -> float:
        """The median of the per-block ratios: when it and `ratio` disagree about a threshold,
        the machine was too noisy to decide."""
        return statistics.median(a / b for a, b in zip(self.blocks[variant],
                                                       self.blocks["baseline"], strict=True))

    def as_dict(self) -> dict[str, float]:
        """{"<variant>_ms", "<variant>/baseline", "<variant>/baseline (median block)"}."""
        out = {f"{v}_ms": self.ms(v) for v in self.blocks}
        for v in [v for v in self.blocks if v != "baseline"]:
            out[f"{v}/baseline"] = self.ratio(v)
            out[f"{v}/baseline (median block)"] = self.median_ratio(v)
        return out


def step_cost(settings: Settings | None = None, steps: int | None = None,
              repeats: int = 5) -> StepCost:
    """Baseline, APFS and APFS+mining steps of `settings` (default: the profile's), timed:
    blocks of `steps` steps (default: one sampler pass: whole rounds and the baseline's
    once-per-pass index building) alternate between the variants `repeats` times, in alternating
    order, after a warm-up block each, so machine noise hits all alike."""
    settings = settings if settings is not None else Settings.for_profile()
    train, _ = load_split(settings)
    device = config.get_device()
    train = train.to(device)
    c, h, _ = train.image_shape
    runners = {}
    for variant in VARIANTS:
        config.seed_everything(settings.seed)
        model = build_model(settings, c, h).to(device).train()
        loss_fn, sampler, callbacks = make_training(settings.replace(variant=variant), model,
                                                    train)
        opt = torch.optim.Adam(model.parameters(), lr=settings.lr)
        batches = chain.from_iterable(repeat(sampler))
        runners[variant] = (model, loss_fn, batches, callbacks, opt)
    steps = settings.batches_per_pass if steps is None else int(steps)

    def block(variant: str) -> float:
        model, loss_fn, batches, callbacks, opt = runners[variant]
        config.synchronize(device)
        started = time.perf_counter()
        for _ in range(steps):
            index = torch.as_tensor(next(batches), device=device)
            value = loss_fn(model, train.images[index], train.labels[index])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            for cb in callbacks:
                cb.on_step_end(None)
        config.synchronize(device)
        return (time.perf_counter() - started) / steps

    for variant in VARIANTS:
        block(variant)  # warm-up
    blocks: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        for variant in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
            blocks[variant].append(block(variant))
    return StepCost(settings, steps, blocks)
