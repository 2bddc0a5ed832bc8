"""What `labkit train` trains for each method: a `core.loop.TrainJob` made of the runner's own
pieces (data, model, training setup, loss), built in the order the runner builds them, and the
runner's result of the trained model.

GSP and APFS draw m-per-class batches (each rank takes whole classes of a batch); RePoNet, FDL
and interchange train classifiers on `fit`'s plain shuffled batches (`loop.ShuffledBatches`,
each rank a contiguous slice). In one process the job takes the steps the runner's `fit` takes
(same batches from the same generator, the same optimiser, per-step scheduler and side
optimiser, the same generators' state at every step), and `finish` returns what the runner's
`run` caches, so a notebook reads a `labkit train` run like its own. What `fit`'s epoch
callbacks record comes from `TrainJob.after_epoch` on rank 0: RePoNet's probe snapshots and
neural-collapse rows, FDL's per-epoch loss parts. FDL trains its members in the loop and its
fusion head after it, on rank 0 in `finish`, from the generators' state at the loop's end, as
the runner does right after training the members.

Not exact, and why. Durations ("time", "train_seconds", "train_time", "seconds_per_step") are
wall clock; FDL's "train_time" is the loop's (the runner's also counts building the members).
Under W ranks a step is the one-process step up to float32 rounding (batch norm's statistics
combined over ranks, sums in another order), and the losses of a step agree to about 1e-7; but
some gradients are ill-conditioned in float32, in one process as much as in W: a convolution
followed by batch norm (LeNet++) has a gradient whose rounding error is far above 1e-7, and a
bias followed by batch norm (FDL's dense layer) has a zero gradient plus rounding noise, which
Adam turns into steps of the learning rate's size. Runs that round differently therefore drift
apart after some steps (RePoNet's LeNet++ soonest); FDL's descriptor, which keeps the
positions strictly above a map's mean, can also flip a position on a rounding difference. A run
shortened by --steps may end inside an epoch, which `fit` never does: RePoNet then records the
snapshot and collapse measures of that last, partial epoch at the end.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from labkit.core import config
from labkit.core import distributed as D
from labkit.core.data import ArrayDataset
from labkit.core.loop import Outcome, ShuffledBatches, TrainJob
from labkit.core.models import NetworkOutput
from labkit.core.train import History, _make_optimizer, _make_scheduler, record_snapshot
from labkit.methods import (
    apfs_experiments,
    fdl,
    fdl_experiments,
    gsp_experiments,
    interchange_experiments,
    reponet_experiments,
)

# the config keys of a method's m-per-class batch: (classes per batch, samples per class)
BATCH_KEYS = {"gsp": ("classes_per_batch", "m"), "apfs": ("classes_per_batch", "samples_per_class")}
RUNNERS = {"gsp": gsp_experiments, "apfs": apfs_experiments, "reponet": reponet_experiments,
           "fdl": fdl_experiments, "interchange": interchange_experiments}
# the namespaces the runners' `run` caches in
CACHE_NAMES = {"gsp": "gsp_run", "apfs": "apfs", "reponet": "reponet", "fdl": "fdl_fewshot",
               "interchange": "interchange/member"}
# the keys a config must have, and those the runner's config function takes as arguments (the
# rest are overrides): a config of only these keys is the runner's default for them
REQUIRED = {"gsp": ("loss", "variant"), "apfs": ("loss", "variant"), "reponet": ("head",),
            "fdl": ("k",), "interchange": ("arch",)}
IDENTITY = {"gsp": ("loss", "variant", "seed"), "apfs": ("loss", "variant", "seed"),
            "reponet": ("head", "classes", "feat_dim", "margin", "seed"),
            "fdl": ("dataset", "k", "seed", "use_fdl"),
            "interchange": ("arch", "seed", "dim", "kind", "epochs")}


@dataclass
class MethodTraining:
    """A job for the loop, and how to turn its outcome into the runner's result."""

    job: TrainJob
    finish: Callable[[Outcome], Any]  # the runner's cached, typed `Result`
    # the evaluation row of metrics.jsonl, from the result
    metrics: Callable[[Any], dict[str, float]] = lambda result: dict(result.metrics)
    global_batch: int | None = None  # plain batches: the size of every batch (<= the config's)
    cpu_threads: Callable[[], Any] = contextlib.nullcontext  # the runner's thread cap, around the loop


# ----------------------------------------------------------------------------- configs

def _settings_config(method: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A runner on the experiment contract: the table is its `Settings` (fields not given keep
    their defaults, the lab profile's), as the dict its `run` caches under."""
    def configure(table: dict[str, Any]) -> dict[str, Any]:
        return RUNNERS[method].Settings.build(**table).as_dict()
    return configure


def _reponet_config(table: dict[str, Any]) -> dict[str, Any]:
    """RePoNet's `Settings` of the table, as the dict its `run` caches under (a fixed head's own
    feat_dim reads None there)."""
    return reponet_experiments.Settings.build(**table).as_dict()


def _interchange_config(table: dict[str, Any]) -> dict[str, Any]:
    """The table is one member's `interchange_experiments.Settings` (fields not given keep
    their defaults, the lab profile's)."""
    return interchange_experiments.Settings.build(**table).as_dict()


CONFIGURE: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "gsp": _settings_config("gsp"), "apfs": _settings_config("apfs"), "reponet": _reponet_config,
    "fdl": _settings_config("fdl"), "interchange": _interchange_config}


def configure(method: str, table: Mapping[str, Any]) -> dict[str, Any]:
    """The runner's full config of a config table (the REQUIRED keys, the IDENTITY keys the
    runner's config function takes, any other key as an override of its default); the runner's
    own checks raise ValueError (unknown keys list the known ones). Reads no data."""
    missing = [key for key in REQUIRED[method] if key not in table]
    if missing:
        raise ValueError(f"needs {' and '.join(missing)}")
    return CONFIGURE[method](dict(table))


def check_config(method: str, cfg: Mapping[str, Any]) -> None:
    """Refuse a config that trains nothing or whose batches cannot hold a class's pairs."""
    if method in BATCH_KEYS:
        classes, per_class = batch_shape(method, cfg)
        if classes < 1 or per_class < 2:
            raise ValueError(f"a batch needs at least 1 class and 2 samples per class, got "
                             f"{classes} x {per_class}")
        if total_steps(method, cfg) < 1:
            raise ValueError("the config trains no step: epochs and batches per epoch must be "
                             ">= 1")
        return
    budget = "steps" if method == "fdl" else "epochs"
    if int(cfg[budget]) < 1:
        raise ValueError(f"the config trains no step: {budget} must be >= 1")
    if int(cfg["batch_size"]) < 1:
        raise ValueError(f"batch_size must be >= 1, got {cfg['batch_size']}")


def batch_shape(method: str, cfg: Mapping[str, Any]) -> tuple[int, int]:
    """(classes per batch, samples per class) of cfg's m-per-class batches (gsp, apfs)."""
    classes, per_class = BATCH_KEYS[method]
    return int(cfg[classes]), int(cfg[per_class])


def global_batch(method: str, cfg: Mapping[str, Any]) -> tuple[int, int | None]:
    """(samples in a global batch, classes in it for m-per-class batches, else None). A plain
    batch is the config's batch_size, or the whole training set when that is smaller."""
    if method in BATCH_KEYS:
        classes, per_class = batch_shape(method, cfg)
        return classes * per_class, classes
    return int(cfg["batch_size"]), None


def total_steps(method: str, cfg: Mapping[str, Any]) -> int | None:
    """Optimiser steps of cfg's full budget (epochs x batches per epoch) for gsp and apfs; None
    for the plain-batch methods, whose batches per epoch depend on the training set's size (a
    built job's `total_steps` has it)."""
    if method not in BATCH_KEYS:
        return None
    per_epoch = cfg["batches_per_epoch"] if method == "gsp" else cfg["batches_per_pass"]
    return int(cfg["epochs"]) * int(per_epoch)


# ----------------------------------------------------------------------------- jobs


def check_batches_fill(train: ArrayDataset, classes: int, per_class: int, dataset: str) -> None:
    """Fail when the training split has fewer classes than a batch of `classes` x `per_class`
    (a class with fewer samples than `per_class` repeats some, as the samplers do)."""
    counts = train.class_counts()
    present = int((counts > 0).sum())
    if present < classes:
        raise ValueError(f"a batch of {classes} classes x {per_class} cannot be filled from "
                         f"{dataset}: its training split has {present} classes; lower "
                         f"classes_per_batch")


def gsp_training(cfg: Mapping[str, Any], device: torch.device) -> MethodTraining:
    """GSP's run of cfg (`gsp_experiments.GSPExperiment.train` without its `fit`)."""
    G = gsp_experiments
    settings = G.Settings.build(**cfg)
    config.seed_everything(settings.seed)
    train, test = G.load_split(settings)
    check_batches_fill(train, *batch_shape("gsp", cfg), settings.dataset)
    c, h, _ = train.image_shape
    model = G.build_model(settings, c, h)
    loss_fn, groups, sampler = G.make_training(settings, model, train, device)
    loss_fn.to(device)
    optimizer = torch.optim.Adam(groups, lr=settings.lr, weight_decay=0.0)  # fit's "adam"
    config.seed_everything(settings.seed)  # fit seeds again just before its first step
    job = TrainJob(model, loss_fn.outputs, loss_fn.from_outputs, optimizer, sampler,
                   train.to(device), settings.epochs, stateful={"loss": loss_fn},
                   loss_parameters=list(loss_fn.parameters()),
                   # GAP (mu = 1) never reads the prototypes
                   find_unused_parameters=settings.variant == "gap")
    return MethodTraining(job, lambda outcome: G.evaluate(settings, model, test, outcome.epochs))


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
    """APFS's run of cfg (`apfs_experiments.APFSExperiment.train` without its `fit`)."""
    A = apfs_experiments
    settings = A.Settings.build(**cfg)
    config.seed_everything(settings.seed)
    train, test = A.load_split(settings)
    check_batches_fill(train, *batch_shape("apfs", cfg), settings.dataset)
    train = train.to(device)
    c, h, _ = train.image_shape
    model = A.build_model(settings, c, h).to(device)
    loss_fn, sampler, callbacks = A.make_training(settings, model, train)
    loss_fn.to(device)
    params = [p for p in [*model.parameters(), *loss_fn.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam([{"params": params}], lr=settings.lr, weight_decay=0.0)
    config.seed_everything(settings.seed)
    regularizer = callbacks[0] if callbacks else None
    stateful: dict[str, Any] = {"loss": loss_fn}
    if regularizer is not None:
        stateful["regularizer"] = _RegularizerState(regularizer)
    job = TrainJob(model, loss_fn.outputs, loss_fn.from_outputs, optimizer, sampler, train,
                   settings.epochs, stateful=stateful,
                   loss_parameters=list(loss_fn.parameters()),
                   after_step=regularizer.on_step_end if regularizer is not None else None,
                   find_unused_parameters=settings.pooling == "gap")  # GAP never reads prototypes

    def finish(outcome: Outcome) -> Any:
        return A.evaluate(settings, model, test, outcome.epochs,
                          sum(outcome.seconds) / max(1, len(outcome.seconds)), callbacks)

    return MethodTraining(job, finish)


class _Rows:
    """state_dict()/load_state_dict() for rows an after_epoch hook records (FDL's log)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(r) for r in self.rows]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.rows = [dict(r) for r in state["rows"]]


class _Snapshots:
    """`fit`'s probe snapshots for RePoNet: the probe's embeddings (N, d) before training and
    after every epoch, and `CollapseTracker`'s measures of each, keyed by epoch."""

    def __init__(self, model: torch.nn.Module, probe: torch.Tensor, tracker: Any) -> None:
        self.model, self.probe, self.tracker = model, probe, tracker
        self.snapshots = [record_snapshot(model, probe)]
        self.epochs = [0]
        self.measures: dict[int, dict[str, float]] = {}

    def record(self, epoch: int) -> None:
        self.snapshots.append(record_snapshot(self.model, self.probe))
        self.epochs.append(epoch)
        self.measures[epoch] = self.tracker.measures(self.snapshots[-1])

    def state_dict(self) -> dict[str, Any]:
        return {"snapshots": list(self.snapshots), "epochs": list(self.epochs),
                "measures": dict(self.measures)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.snapshots, self.epochs = list(state["snapshots"]), list(state["epochs"])
        self.measures = dict(state["measures"])


def reponet_training(cfg: Mapping[str, Any], device: torch.device) -> MethodTraining:
    """RePoNet's run of cfg (`reponet_experiments.RePoNetExperiment.train`, its `fit` taken
    apart)."""
    R = reponet_experiments
    settings = R.Settings.build(**cfg)
    seed = settings.seed
    train, test, probe = R.load_data(settings)
    config.seed_everything(seed)
    model = R.build_model(settings)
    groups, center = R.make_training(settings, model, device)
    side = [center.optimizer()] if center is not None else []
    tracker = R.rp.CollapseTracker(model, probe.labels)
    model.to(device)
    sampler = ShuffledBatches(len(train), settings.batch_size, seed)
    optimizer = _make_optimizer(groups, settings.optimizer, float(settings.lr), 0.9,
                                float(settings.weight_decay))
    scheduler = _make_scheduler(optimizer, "cosine", (), 0.1, settings.epochs, len(sampler))
    config.seed_everything(seed)  # fit seeds again before its first step
    snapshots = _Snapshots(model, probe.images.to(device), tracker)
    stateful: dict[str, Any] = {"snapshots": snapshots}
    if center is not None:
        stateful["center"] = center

    def loss(outputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        return R.rp.embedding_loss(model.head, outputs[0], labels, center)

    job = TrainJob(model, lambda net, images: (net.neck(net.backbone(images)),), loss, optimizer,
                   sampler, train.to(device), settings.epochs, scheduler=scheduler,
                   stateful=stateful,
                   loss_parameters=list(center.parameters()) if center is not None else [],
                   after_epoch=snapshots.record, shard=D.contiguous_shards, side_optimizers=side)

    def finish(outcome: Outcome) -> reponet_experiments.Result:
        rows = [dict(row) for row in outcome.epochs]
        if rows and snapshots.epochs[-1] < rows[-1]["epoch"]:
            snapshots.record(rows[-1]["epoch"])  # a run stopped inside its last epoch
        for row in rows:
            row.update(snapshots.measures.get(row["epoch"], {}))
        history = History(epochs=rows, snapshots=list(snapshots.snapshots),
                          snapshot_epochs=list(snapshots.epochs))
        return R.evaluate(settings, model, center, history, test, probe, device)

    return MethodTraining(job, finish, global_batch=sampler.batch_size)


def fdl_training(cfg: Mapping[str, Any], device: torch.device) -> MethodTraining:
    """FDL's run of cfg (`fdl_experiments.FDLExperiment.train`: the members' joint training in
    the loop, the fusion head and the evaluation in `finish`)."""
    FE = fdl_experiments
    settings = FE.Settings.build(**cfg)
    train, test = FE.load_split(settings)
    config.seed_everything(settings.seed)
    ensemble = FE.build_ensemble(settings, train.image_shape, train.num_classes)
    loss_fn = fdl.JointLoss(settings.lambda_cos, settings.lambda_euc, use_fdl=settings.use_fdl)
    epochs, batch = fdl.epochs_for(settings.steps, len(train), settings.batch_size)
    ensemble.to(device)
    params = [p for p in ensemble.parameters() if p.requires_grad]
    optimizer = _make_optimizer([{"params": params}], "adam", settings.lr, 0.9, 0.0)
    sampler = ShuffledBatches(len(train), batch, settings.seed)
    config.seed_everything(settings.seed)
    log = _Rows()

    def forward(net: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outs = net.member_outputs(images)  # maps (b, C, H, W) of every member, then logits (b, K)
        return (*[o.feature_map for o in outs], *[o.logits for o in outs])

    def loss(outputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
        m = len(outputs) // 2
        return loss_fn.from_outputs([NetworkOutput(f, None, z) for f, z in
                                     zip(outputs[:m], outputs[m:], strict=True)], labels)

    def after_epoch(epoch: int) -> None:
        log.rows.append({"epoch": epoch, **loss_fn.last})  # `fdl.train_jointly`'s epoch log

    job = TrainJob(ensemble, forward, loss, optimizer, sampler, train.to(device), epochs,
                   stateful={"log": log}, after_epoch=after_epoch, shard=D.contiguous_shards)

    def finish(outcome: Outcome) -> fdl_experiments.Result:
        with config.cpu_threads(config.small_cpu_thread_cap(device)):
            return FE.evaluate(settings, ensemble, train, test, [dict(r) for r in log.rows],
                               sum(outcome.seconds), device)

    return MethodTraining(job, finish, global_batch=sampler.batch_size,
                          cpu_threads=lambda: config.cpu_threads(config.small_cpu_thread_cap(device)))


def interchange_training(cfg: Mapping[str, Any], device: torch.device) -> MethodTraining:
    """One zoo member of cfg (`interchange_experiments.InterchangeExperiment.train` without its
    `fit`)."""
    IE = interchange_experiments
    settings = IE.Settings.build(**cfg)
    train, test = IE.load_data(settings)
    net, objective = IE.build_member(settings, train)
    closed = settings.kind == "closed"
    net.to(device)
    params = list(net.parameters())
    if not closed:
        objective.to(device)
        params += list(objective.parameters())
    optimizer = _make_optimizer([{"params": [p for p in params if p.requires_grad]}],
                                settings.optimizer, float(settings.lr), 0.9, 0.0)
    sampler = ShuffledBatches(len(train), settings.batch_size, settings.seed)
    scheduler = _make_scheduler(optimizer, settings.schedule, (), 0.1, settings.epochs,
                                len(sampler))
    config.seed_everything(settings.seed)
    threads = config.small_cpu_thread_cap(device)  # the runner's cap

    if closed:
        def forward(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor]:
            return (model(images),)  # logits (b, C)

        def loss(outputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(outputs[0], labels)
    else:
        def forward(model: torch.nn.Module, images: torch.Tensor) -> tuple[torch.Tensor]:
            return (model.forward_all(images).embedding,)  # (b, d)

        def loss(outputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> torch.Tensor:
            return objective.from_embedding(outputs[0], labels)

    stateful = {} if closed else {"objective": objective}
    job = TrainJob(net, forward, loss, optimizer, sampler, train.to(device), settings.epochs,
                   scheduler=scheduler, stateful=stateful,
                   loss_parameters=[] if closed else list(objective.parameters()),
                   shard=D.contiguous_shards)

    def finish(outcome: Outcome) -> interchange_experiments.Result:
        return IE.evaluate(settings, net, train, test, outcome.epochs, device, threads)

    return MethodTraining(job, finish, global_batch=sampler.batch_size,
                          cpu_threads=lambda: config.cpu_threads(threads))


BUILDERS: dict[str, Callable[[Mapping[str, Any], torch.device], MethodTraining]] = {
    "gsp": gsp_training, "apfs": apfs_training, "reponet": reponet_training,
    "fdl": fdl_training, "interchange": interchange_training}
