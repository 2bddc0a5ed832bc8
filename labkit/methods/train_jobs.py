"""What `labkit train` trains for each method: a `core.loop.TrainJob` made of the runner's own
pieces (`load_split`, `build_model`, `make_training`, the loss's `outputs`/`from_outputs`), built
in the order the runner's `train_run` builds them, and the runner's result of the trained model.

In one process the job takes the steps the runner's `fit` takes; `finish` returns the dict the
runner's `run` caches, so a notebook reads a `labkit train` run like its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from labkit.core import config
from labkit.core.data import ArrayDataset
from labkit.core.evaluate import embed, retrieval_metrics
from labkit.core.loop import Outcome, TrainJob
from labkit.methods import apfs_experiments, gsp_experiments

# the config keys of a method's m-per-class batch: (classes per batch, samples per class)
BATCH_KEYS = {"gsp": ("classes_per_batch", "m"), "apfs": ("classes_per_batch", "samples_per_class")}
RUNNERS = {"gsp": gsp_experiments, "apfs": apfs_experiments}
CACHE_NAMES = {"gsp": "gsp_run", "apfs": "apfs"}  # the namespaces the runners' `run` caches in


@dataclass
class MethodTraining:
    """A job for the loop, and how to turn its outcome into the runner's result."""

    job: TrainJob
    finish: Callable[[Outcome], dict[str, Any]]


def batch_shape(method: str, cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(classes per batch, samples per class) of cfg's batches."""
    classes, per_class = BATCH_KEYS[method]
    return int(cfg[classes]), int(cfg[per_class])


def total_steps(method: str, cfg: Mapping[str, Any]) -> int:
    """Optimiser steps of cfg's full budget (epochs x batches per epoch)."""
    per_epoch = cfg["batches_per_epoch"] if method == "gsp" else cfg["batches_per_pass"]
    return int(cfg["epochs"]) * int(per_epoch)


def check_batches_fill(train: ArrayDataset, classes: int, per_class: int, dataset: str,
                       distinct: bool) -> None:
    """Fail when the training split cannot give a batch of `classes` x `per_class`."""
    counts = train.class_counts()
    counts = counts[counts > 0]
    if len(counts) < classes:
        raise ValueError(f"a batch of {classes} classes x {per_class} cannot be filled from "
                         f"{dataset}: its training split has {len(counts)} classes; lower "
                         f"classes_per_batch")
    if distinct and int(counts.min()) < per_class:
        raise ValueError(f"a batch of {classes} classes x {per_class} cannot be filled from "
                         f"{dataset}: its smallest training class has {int(counts.min())} "
                         f"samples and a class's samples in a batch are distinct; lower the "
                         f"samples per class or raise train_per_class")


def gsp_training(cfg: Mapping[str, Any], device: torch.device) -> MethodTraining:
    """GSP's run of cfg (`gsp_experiments.train_run` without its `fit`)."""
    G = gsp_experiments
    seed = int(cfg["seed"])
    config.seed_everything(seed)
    train, test = G.load_split(cfg)
    check_batches_fill(train, *batch_shape("gsp", cfg), cfg["dataset"], distinct=True)
    c, h, w = train.image_shape
    model = G.build_model(cfg, c, h)
    loss_fn, groups, sampler = G.make_training(cfg, model, train, device)
    loss_fn.to(device)
    optimizer = torch.optim.Adam(groups, lr=float(cfg["lr"]), weight_decay=0.0)  # fit's "adam"
    config.seed_everything(seed)  # fit seeds again just before its first step
    job = TrainJob(model, loss_fn.outputs, loss_fn.from_outputs, optimizer, sampler,
                   train.to(device), int(cfg["epochs"]), stateful={"loss": loss_fn},
                   loss_parameters=list(loss_fn.parameters()),
                   # GAP (mu = 1) never reads the prototypes
                   find_unused_parameters=cfg["variant"] == "gap")

    def finish(outcome: Outcome) -> dict[str, Any]:
        metrics = retrieval_metrics(embed(model, test.images), test.labels, seed=seed)
        return {"config": dict(cfg), "metrics": metrics, "history": outcome.epochs,
                "image_shape": (c, h, w),
                "state_dict": {k: v.cpu() for k, v in model.state_dict().items()}}

    return MethodTraining(job, finish)


class _RegularizerState:
    """state_dict()/load_state_dict() for APFS's proximal term: its anchor and step count."""

    def __init__(self, regularizer: Any) -> None:
        self.regularizer = regularizer

    def state_dict(self) -> dict[str, Any]:
        reg = self.regularizer
        return {"steps": reg.steps, "resets": reg.resets,
                "round_distances": list(reg.round_distances),
                "anchors": [a.detach().cpu().clone() for a in reg.anchors]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        reg = self.regularizer
        reg.steps, reg.resets = int(state["steps"]), int(state["resets"])
        reg.round_distances = list(state["round_distances"])
        params = [p for p in reg.model.parameters() if p.requires_grad]
        reg.anchors = [a.to(p.device) for a, p in zip(state["anchors"], params, strict=True)]


def apfs_training(cfg: Mapping[str, Any], device: torch.device) -> MethodTraining:
    """APFS's run of cfg (`apfs_experiments.train_run` without its `fit`)."""
    A = apfs_experiments
    seed = int(cfg["seed"])
    config.seed_everything(seed)
    train, test = A.load_split(cfg)
    # only the classes must suffice: both samplers repeat samples of a class that is too small
    check_batches_fill(train, *batch_shape("apfs", cfg), cfg["dataset"], distinct=False)
    train = train.to(device)
    c, h, _ = train.image_shape
    model = A.build_model(cfg, c, h).to(device)
    loss_fn, sampler, callbacks = A.make_training(cfg, model, train)
    loss_fn.to(device)
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": params}], lr=float(cfg["lr"]), weight_decay=0.0)
    config.seed_everything(seed)
    regularizer = callbacks[0] if callbacks else None
    stateful: dict[str, Any] = {"loss": loss_fn}
    if regularizer is not None:
        stateful["regularizer"] = _RegularizerState(regularizer)
    job = TrainJob(model, loss_fn.outputs, loss_fn.from_outputs, optimizer, sampler, train,
                   int(cfg["epochs"]), stateful=stateful,
                   loss_parameters=list(loss_fn.parameters()),
                   after_step=regularizer.on_step_end if regularizer is not None else None)

    def finish(outcome: Outcome) -> dict[str, Any]:
        metrics = retrieval_metrics(embed(model, test.images), test.labels.cpu(), seed=seed)
        return {"config": dict(cfg), "metrics": metrics, "history": outcome.epochs,
                "seconds_per_step": sum(outcome.seconds) / max(1, len(outcome.seconds)),
                "round_distances": list(regularizer.round_distances) if regularizer else []}

    return MethodTraining(job, finish)


BUILDERS: dict[str, Callable[[Mapping[str, Any], torch.device], MethodTraining]] = {
    "gsp": gsp_training, "apfs": apfs_training}
