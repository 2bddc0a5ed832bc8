"""APFS experiments: the loss x {baseline, +APFS, +APFS+mining} ablation on a zero-shot split.

Every run trains the same network with the same budget (steps, batch size P*M, optimiser) and
evaluates retrieval on the unseen classes with `labkit.core.evaluate.retrieval_metrics`:

- baseline: pytorch-metric-learning's m-per-class batches (P classes x M samples), the loss on
  all pairs/triplets of the batch;
- apfs: `RepresentativeBatchSampler` batches (P representatives + P*(M-1) samples), the loss on
  sample-to-representative pairs, plus the proximal term with the anchor reset every T steps;
- apfs+mining: the same with hard class mining from the representatives' embeddings.

Runs are cached by config (`labkit.core.cache.cached`), so a notebook re-draws without retraining.
The protocol, the defaults per profile and the deviations from the paper: docs/methods/apfs.md;
what was measured: docs/findings/05_alternating_projections.md.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from labkit.core import config
from labkit.core.cache import cached
from labkit.core.data import ArrayDataset, MPerClassBatches, class_disjoint_split
from labkit.core.evaluate import embed, retrieval_metrics
from labkit.core.models import FlattenLinear, Network, PooledLinear, build_backbone, map_shape
from labkit.core.train import fit
from labkit.methods.apfs import (
    LOSS_NAMES,
    MINER_NAMES,
    MetricLoss,
    ProximalRegularizer,
    RepresentativeBatchSampler,
    constraint_satisfaction,
    representative_embedder,
)

VARIANTS = ("baseline", "apfs", "apfs+mining")
FOLDER_SETS = ("cub200", "cars196", "sop")


# ----------------------------------------------------------------------------- configuration

def profile_settings() -> dict[str, Any]:
    """Sizes for the active profile. T, lambda, P and M of the paper are UNVERIFIED
    (docs/methods/apfs.md); lambda is in the authors' convention, a gradient pull of
    lambda * (theta - theta_anchor)."""
    return config.pick(
        quick=dict(dataset="mnist5k", arch="tiny", widths=(8, 16, 32), dim=32, epochs=1,
                   batches_per_pass=10, lifetime=5, classes_per_batch=3, samples_per_class=6,
                   strength=2e-1, temperature=None, lr=1e-3, train_per_class=30,
                   test_per_class=20, image_size=28, seeds=(0,), losses=("contrastive",)),
        lab=dict(dataset="mnist5k", arch="tiny", widths=(16, 32, 64), dim=64, epochs=5,
                 batches_per_pass=60, lifetime=10, classes_per_batch=3, samples_per_class=10,
                 strength=2e-1, temperature=None, lr=1e-3, train_per_class=None,
                 test_per_class=None, image_size=28, seeds=(0, 1, 2), losses=LOSS_NAMES),
        # paper scale (untested here): the CCP follow-up's protocol, 32 = 8 classes x 4 per batch,
        # and its regularization_coeff as lambda
        full=dict(dataset="cub200", arch="resnet50", widths=None, dim=128, epochs=60,
                  batches_per_pass=180, lifetime=20, classes_per_batch=8, samples_per_class=4,
                  strength=2e-4, temperature=None, lr=1e-5, train_per_class=None,
                  test_per_class=None, image_size=224, seeds=(0, 1, 2), losses=LOSS_NAMES),
    )


def run_config(loss: str, variant: str, seed: int = 0, **overrides: Any) -> dict[str, Any]:
    """One run's configuration (its cache key): the profile's sizes + method settings.

    miner: None (the authors' setting) or one of MINER_NAMES, the pair miner of `base_loss`."""
    if loss not in LOSS_NAMES:
        raise ValueError(f"unknown loss {loss!r}; choose from {', '.join(LOSS_NAMES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
    cfg = {k: v for k, v in profile_settings().items() if k not in ("seeds", "losses")}
    # proximal="gradient": the term is applied as lambda*(theta - anchor) in gradient hooks
    cfg.update(loss=loss, variant=variant, seed=int(seed), proximal="gradient", miner=None)
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown config keys {sorted(unknown)}; known: {sorted(cfg)}")
    cfg.update(overrides)
    if cfg["miner"] is not None and cfg["miner"] not in MINER_NAMES:
        raise ValueError(f"unknown miner {cfg['miner']!r}; use None or one of {MINER_NAMES}")
    if cfg["batches_per_pass"] % cfg["lifetime"]:
        raise ValueError(f"batches_per_pass={cfg['batches_per_pass']} must be a multiple of "
                         f"lifetime={cfg['lifetime']} (rounds restart with each pass)")
    return cfg


def load_split(cfg: Mapping[str, Any]) -> tuple[ArrayDataset, ArrayDataset]:
    """(train, test) with disjoint classes: mnist5k digits 0-4 / 5-9, or a folder set's halves."""
    train, test = class_disjoint_split(cfg["dataset"], int(cfg["image_size"]))
    if cfg.get("train_per_class"):
        train = train.k_per_class(int(cfg["train_per_class"]), seed=int(cfg["seed"]))
    if cfg.get("test_per_class"):
        test = test.k_per_class(int(cfg["test_per_class"]), seed=int(cfg["seed"]))
    return train, test


def build_model(cfg: Mapping[str, Any], in_channels: int, image_size: int) -> Network:
    """Backbone + linear embedding of `dim` (no classifier head)."""
    if cfg["arch"] == "tiny":
        backbone = build_backbone("tiny", in_channels, image_size, widths=tuple(cfg["widths"]))
        c, h, w = map_shape(backbone, in_channels, image_size)
        return Network(backbone, FlattenLinear(c * h * w, int(cfg["dim"])), head=None)
    options = {"widths": tuple(cfg["widths"])} if cfg.get("widths") else {}
    backbone = build_backbone(cfg["arch"], in_channels, image_size, **options)
    return Network(backbone, PooledLinear(backbone.out_channels, int(cfg["dim"])), head=None)


def make_training(cfg: Mapping[str, Any], model: nn.Module, train: ArrayDataset,
                  ) -> tuple[MetricLoss, Any, list[Any]]:
    """(loss_fn, batch_sampler, callbacks) of cfg's variant, with the same budget for all."""
    p, m = int(cfg["classes_per_batch"]), int(cfg["samples_per_class"])
    steps = int(cfg["batches_per_pass"])
    miner = cfg.get("miner")
    if cfg["variant"] == "baseline":
        return (MetricLoss(cfg["loss"], miner=miner), MPerClassBatches(train.labels, m, p, steps),
                [])
    mining = cfg["variant"] == "apfs+mining"
    sampler = RepresentativeBatchSampler(
        train.labels, p, m, int(cfg["lifetime"]), hard_class_mining=mining,
        seed=int(cfg["seed"]), batches_per_pass=steps, temperature=cfg["temperature"],
        embed_fn=representative_embedder(model, train.images) if mining else None)
    # gradient form of the proximal term (the authors' code works on gradients too): the same
    # update as the penalty, no extra graph; the sampler guarantees the batch layout, so the
    # per-step host check is skipped
    reg = ProximalRegularizer(model, float(cfg["strength"]), int(cfg["lifetime"]),
                              via_gradient=True)
    return (MetricLoss(cfg["loss"], representatives=p, regularizer=reg, check=False,
                       miner=miner), sampler, [reg])


def train_run(cfg: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Train one configuration and evaluate retrieval on the unseen classes (not cached)."""
    seed = int(cfg["seed"])
    config.seed_everything(seed)
    train, test = load_split(cfg)
    device = config.get_device()
    train = train.to(device)
    c, h, _ = train.image_shape
    model = build_model(cfg, c, h).to(device)
    loss_fn, sampler, callbacks = make_training(cfg, model, train)
    started = time.perf_counter()
    history = fit(model, loss_fn, train, epochs=int(cfg["epochs"]), optimizer="adam",
                  lr=float(cfg["lr"]), batch_sampler=sampler, callbacks=callbacks,
                  device=device, seed=seed, progress=progress)
    seconds = time.perf_counter() - started
    metrics = retrieval_metrics(embed(model, test.images), test.labels.cpu(), seed=seed)
    reg = callbacks[0] if callbacks else None
    return {"config": dict(cfg), "metrics": metrics, "history": history.epochs,
            "seconds_per_step": seconds / max(1, int(cfg["epochs"]) * len(sampler)),
            "round_distances": list(reg.round_distances) if reg is not None else []}


def run(loss: str, variant: str, seed: int = 0, progress: bool = False,
        **overrides: Any) -> dict[str, Any]:
    """A cached run: {"config", "metrics", "history", "seconds_per_step", "round_distances"}."""
    cfg = run_config(loss, variant, seed, **overrides)
    return cached("apfs", cfg, lambda: train_run(cfg, progress=progress))


def run_ablation(losses: Sequence[str] | None = None, variants: Sequence[str] = VARIANTS,
                 seeds: Sequence[int] | None = None, progress: bool = True,
                 **overrides: Any) -> list[dict[str, Any]]:
    """Every (loss, variant, seed) run (cached); rows of {loss, variant, seed, **metrics}.

    losses and seeds default to the profile's (quick: contrastive only, one seed)."""
    seeds = tuple(profile_settings()["seeds"]) if seeds is None else tuple(seeds)
    losses = tuple(profile_settings()["losses"]) if losses is None else tuple(losses)
    jobs = [(lo, v, s) for lo in losses for v in variants for s in seeds]
    rows = []
    for lo, v, s in config.progress_bar(jobs, progress, desc="APFS ablation", leave=False):
        result = run(lo, v, s, **overrides)
        rows.append({"loss": lo, "variant": v, "seed": s, **result["metrics"],
                     "ms_per_step": 1e3 * result["seconds_per_step"]})
    return rows


def summarize(rows: Sequence[Mapping[str, Any]],
              metrics: Sequence[str] = ("recall@1", "recall@2", "recall@4", "nmi", "map@r"),
              ) -> dict[tuple[str, str], dict[str, tuple[float, float, int]]]:
    """(loss, variant) -> metric -> (mean, sample std, number of seeds)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["loss"], row["variant"]), []).append(row)
    out = {}
    for key, group in groups.items():
        out[key] = {}
        for m in metrics:
            values = [float(r[m]) for r in group]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            out[key][m] = (statistics.fmean(values), spread, len(values))
    return out


def ablation_table(rows: Sequence[Mapping[str, Any]],
                   metrics: Sequence[str] = ("recall@1", "recall@4", "nmi", "map@r")):
    """A pandas DataFrame: rows (loss, variant), cells "mean ± std" in percent over seeds."""
    import pandas as pd

    summary = summarize(rows, metrics)
    records = []
    for (loss, variant), values in summary.items():
        record = {"loss": loss, "variant": variant, "seeds": values[metrics[0]][2]}
        for m in metrics:
            mean, std, _ = values[m]
            record[m] = f"{100 * mean:.1f} ± {100 * std:.1f}"
        records.append(record)
    return pd.DataFrame(records).set_index(["loss", "variant"])


class PairedGain(NamedTuple):
    """A variant against a reference on the same seeds: gain = mean(variant - reference)."""

    gain: float  # mean over seeds of the paired difference, in the metric's units
    spread: float  # sample std of the paired differences (0 for one seed)
    wins: int  # seeds on which the variant scores strictly higher
    seeds: int  # seeds both were run with


def paired_gain(rows: Sequence[Mapping[str, Any]], loss: str, variant: str, reference: str,
                metric: str = "recall@1") -> PairedGain:
    """``variant`` minus ``reference`` for ``loss``, paired by seed (seeds run by both only)."""
    def by_seed(name: str) -> dict[Any, float]:
        return {r["seed"]: float(r[metric]) for r in rows
                if r["loss"] == loss and r["variant"] == name}

    ours, theirs = by_seed(variant), by_seed(reference)
    diffs = [ours[s] - theirs[s] for s in ours if s in theirs]
    if not diffs:
        return PairedGain(0.0, 0.0, 0, 0)
    spread = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    return PairedGain(statistics.fmean(diffs), spread, sum(d > 0 for d in diffs), len(diffs))


def claim_checks(rows: Sequence[Mapping[str, Any]], metric: str = "recall@1",
                 ) -> dict[str, dict[str, PairedGain]]:
    """Per loss, the abstract's two claims as paired gains over seeds: apfs over baseline, and
    apfs+mining over apfs. No yes/no verdict: with three seeds a one-point gain and noise look
    alike, so read the gain with its spread and the seeds won."""
    return {loss: {"apfs > baseline": paired_gain(rows, loss, "apfs", "baseline", metric),
                   "mining > apfs": paired_gain(rows, loss, "apfs+mining", "apfs", metric)}
            for loss in dict.fromkeys(r["loss"] for r in rows)}


# ----------------------------------------------------------------------------- sweeps

def sweep_values() -> dict[str, tuple]:
    """The lambda and T values the notebook's sliders offer (each must divide batches_per_pass)."""
    return config.pick(quick={"strength": (0.0, 0.2), "lifetime": (1, 5)},
                       lab={"strength": (0.0, 0.02, 0.2, 2.0), "lifetime": (1, 5, 10, 30)})


def sweep(parameter: str, values: Sequence[Any], loss: str = "contrastive",
          variant: str = "apfs", seeds: Sequence[int] = (0,), progress: bool = True,
          **overrides: Any) -> list[dict[str, Any]]:
    """Cached APFS runs over `parameter` ("strength" = lambda, or "lifetime" = T)."""
    if parameter not in ("strength", "lifetime"):
        raise ValueError(f"sweep over 'strength' (lambda) or 'lifetime' (T), got {parameter!r}")
    rows = []
    jobs = [(v, s) for v in values for s in seeds]
    for value, seed in config.progress_bar(jobs, progress, desc=f"sweep {parameter}",
                                           leave=False):
        result = run(loss, variant, seed, **{**overrides, parameter: value})
        rows.append({"parameter": parameter, "value": value, "seed": seed,
                     **result["metrics"], "round_distances": result["round_distances"]})
    return rows


# ----------------------------------------------------------------------------- geometry

def geometry_settings() -> dict[str, Any]:
    """A 2-D, unnormalised contrastive APFS run whose margin balls can be drawn in the plane."""
    return config.pick(
        quick=dict(per_class=30, rounds=2, lifetime=5, samples_per_class=4),
        lab=dict(per_class=100, rounds=12, lifetime=10, samples_per_class=6),
    ) | dict(alpha=0.5, beta=2.0, strength=2e-2, lr=3e-3, widths=(16, 32, 64), seed=0)


def _geometry_run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    config.seed_everything(int(cfg["seed"]))
    train, _ = class_disjoint_split("mnist5k", 28)
    train = train.k_per_class(int(cfg["per_class"]), seed=int(cfg["seed"]))
    model = build_model({"arch": "tiny", "widths": cfg["widths"], "dim": 2}, 1, 28)
    t = int(cfg["lifetime"])
    sampler = RepresentativeBatchSampler(train.labels, train.num_classes,
                                         int(cfg["samples_per_class"]), t,
                                         seed=int(cfg["seed"]), batches_per_pass=t)
    reg = ProximalRegularizer(model, float(cfg["strength"]), t)
    loss_fn = MetricLoss("contrastive", representatives=train.num_classes, regularizer=reg,
                         normalize=False, pos_margin=float(cfg["alpha"]),
                         neg_margin=float(cfg["beta"]))
    # one epoch = one pass = one round, so fit's per-epoch snapshots are the round boundaries
    history = fit(model, loss_fn, train, epochs=int(cfg["rounds"]), optimizer="adam",
                  lr=float(cfg["lr"]), batch_sampler=sampler, callbacks=[reg],
                  probe=train.images, device="cpu", seed=int(cfg["seed"]), progress=False)
    snaps = history.snapshots
    reps = np.stack(sampler.representative_log)  # (rounds, C) dataset indices
    labels = train.labels.cpu()
    rep_labels = torch.arange(train.num_classes)
    sat = []
    for k in range(len(reps)):
        row = {}
        for when, emb in (("before", snaps[k]), ("after", snaps[k + 1])):
            idx = torch.as_tensor(reps[k])
            row[when] = constraint_satisfaction(emb, labels, emb[idx], rep_labels,
                                                cfg["alpha"], cfg["beta"])
        sat.append(row)
    return {"config": dict(cfg), "snapshots": snaps, "labels": labels,
            "representatives": reps, "satisfaction": sat,
            "round_distances": list(reg.round_distances), "classes": list(train.classes)}


def geometry_run(**overrides: Any) -> dict[str, Any]:
    """Cached: train-set embeddings at every round boundary (snapshots[k] = start of round k),
    the representatives of each round, and the fraction of Theta_k's constraints that hold
    before and after round k ("satisfaction": list of {"before"/"after": (intra, inter)})."""
    cfg = {**geometry_settings(), **overrides}
    return cached("apfs_geometry", cfg, lambda: _geometry_run(cfg))


# ----------------------------------------------------------------------------- step cost

def step_cost(loss: str = "contrastive", steps: int | None = None, repeats: int = 5,
              **overrides: Any) -> dict[str, float]:
    """Milliseconds per training step of baseline, APFS and APFS+mining, timed side by side.

    Blocks of `steps` steps (default: one pass of the sampler, so each block holds whole rounds
    and the baseline's once-per-pass index building) alternate between the variants `repeats`
    times, in alternating order, after a warm-up block each, so machine noise hits all alike.
    Ratios `<variant>/baseline` are total time over total time; `<variant>/baseline (median
    block)` is the median of per-block ratios, as a second estimator: when the two disagree
    about a threshold, the machine was too noisy to decide. A step = next batch + forward +
    loss + backward + Adam step + callbacks.
    """
    cfg = run_config(loss, "baseline", 0, **overrides)
    train, _ = load_split(cfg)
    device = config.get_device()
    train = train.to(device)
    c, h, _ = train.image_shape
    runners = {}
    for variant in VARIANTS:
        config.seed_everything(0)
        model = build_model(cfg, c, h).to(device).train()
        loss_fn, sampler, callbacks = make_training({**cfg, "variant": variant}, model, train)
        opt = torch.optim.Adam(model.parameters(), lr=float(cfg["lr"]))
        runners[variant] = (model, loss_fn, _cycle(sampler), callbacks, opt)

    def block(variant: str) -> float:
        model, loss_fn, batches, callbacks, opt = runners[variant]
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for _ in range(steps):
            index = torch.as_tensor(next(batches), device=device)
            value = loss_fn(model, train.images[index], train.labels[index])
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            for cb in callbacks:
                cb.on_step_end(None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    steps = int(cfg["batches_per_pass"]) if steps is None else int(steps)
    for variant in VARIANTS:
        block(variant)  # warm-up
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for r in range(repeats):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for variant in order:
            times[variant].append(block(variant))
    out = {f"{v}_ms": 1e3 * statistics.fmean(times[v]) for v in VARIANTS}
    for v in VARIANTS[1:]:
        out[f"{v}/baseline"] = sum(times[v]) / sum(times["baseline"])
        out[f"{v}/baseline (median block)"] = statistics.median(
            a / b for a, b in zip(times[v], times["baseline"], strict=True))
    return out


def _cycle(sampler: Any) -> Iterator[list[int]]:
    while True:
        yield from sampler
