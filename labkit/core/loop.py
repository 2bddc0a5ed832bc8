"""The training loop behind `labkit train`: one process, or DDP under torchrun; checkpoints that
resume exactly.

A method hands the loop a `TrainJob`: its network, how a rank turns its images into per-sample
outputs (`forward`, run inside DDP), how the global batch's outputs become the loss (`loss`),
the optimiser (and side optimisers with update rules of their own) and a sampler of global
batches: m-per-class batches, of which each rank keeps whole classes
(`distributed.class_shards`), or `ShuffledBatches`, `fit`'s plain shuffled batches, of which each
rank keeps a contiguous slice (`distributed.contiguous_shards`). The outputs are gathered back
into the global order before the loss, and batch norm and dropout act on the global batch, so W
ranks take the step one process takes on the whole batch.

A checkpoint holds everything the next step depends on: the model, optimiser, side optimisers,
scheduler and any other `stateful` object, the step, the sampler as it was when its epoch began
with the batches drawn since, the values the sampler asked the model for (APFS's hard class
mining) and every rank's random generators. Resuming rebuilds the epoch's sampler, draws the
batches already trained again (replaying the model's answers instead of asking the model), then
restores the generators: the resumed run takes the same steps as the uninterrupted one.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from labkit.core import config
from labkit.core import distributed as D
from labkit.core.data import ArrayDataset
from labkit.core.train import _batches

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
Outputs = tuple[torch.Tensor, ...]
# buffers need no sync before each forward: GlobalBatchNorm gives all ranks the same running
# stats (torch 2.14 renamed the option)
_NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                   if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
                   else {"broadcast_buffers": False})


@dataclass
class TrainJob:
    """One method's training, as the loop runs it."""

    model: nn.Module
    forward: Callable[[nn.Module, torch.Tensor], Outputs]  # (model, images (b, ...)) -> (b, ...) each
    loss: Callable[[Outputs, torch.Tensor], torch.Tensor]  # (global outputs, labels (B,)) -> scalar
    optimizer: torch.optim.Optimizer
    batches: Any  # a batch sampler: iter() gives index lists, len() the steps of one epoch
    data: ArrayDataset  # the training set, on the training device
    epochs: int
    scheduler: Any = None  # stepped after every optimiser step, as `fit` steps its own
    stateful: dict[str, Any] = field(default_factory=dict)  # more state_dict() holders to save
    loss_parameters: Sequence[nn.Parameter] = ()  # trained parameters outside the model
    after_step: Callable[[], None] | None = None
    # rank 0 only, after an epoch's last step, before any checkpoint of that step: what `fit`'s
    # on_epoch_end callbacks record (snapshots, logs). It must not change what training reads,
    # nor run a collective (batch norm in train mode): the other ranks do not run it
    after_epoch: Callable[[int], None] | None = None
    find_unused_parameters: bool = False  # DDP: parameters that get no gradient in a step
    # (labels of a global batch, world size) -> each rank's positions in it
    shard: Callable[[Sequence[int], int], list[list[int]]] = D.class_shards
    # optimisers of parameters with an update rule of their own (Center Loss centres): zeroed
    # and stepped with the main one, after it, outside its schedule (`fit`'s side_optimizers)
    side_optimizers: Sequence[torch.optim.Optimizer] = ()

    @property
    def total_steps(self) -> int:
        return self.epochs * len(self.batches)


@dataclass
class LoopOptions:
    """Where and how long: stop after `steps` steps in all, checkpoint every `checkpoint_every`
    (0: only when stopping), flush metrics every `log_every` steps."""

    out: Path
    steps: int
    identity: dict[str, Any]  # what a checkpoint must match to be resumed (method, config)
    checkpoint_every: int = 0
    log_every: int = 10
    record_batches: bool = False  # write each rank's sample indices per step (tests)


@dataclass
class Outcome:
    """What was trained: per-step losses and seconds, per-epoch rows as `fit` records them."""

    steps: int
    losses: list[float]
    seconds: list[float]
    epochs: list[dict[str, float]]
    stopped: bool  # by a signal, before `steps`


class _Forward(nn.Module):
    """The model and its per-rank forward as one module, so DDP sees the forward it wraps."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, torch.Tensor], Outputs]):
        super().__init__()
        self.model, self._forward = model, forward

    def forward(self, images: torch.Tensor) -> Outputs:
        return tuple(self._forward(self.model, images))


class ShuffledBatches:
    """`fit`'s plain batches as a batch sampler: each epoch a permutation of the `num` training
    samples from one generator seeded once with `seed`, cut into batches of `batch_size`, the
    last partial batch dropped (`fit`'s drop_last=True); one batch of all `num` when fewer.
    Picklable (the generator with it), so a checkpoint holds its position."""

    def __init__(self, num: int, batch_size: int, seed: int) -> None:
        if num < 1 or batch_size < 1:
            raise ValueError(f"need samples and a batch size >= 1, got {num} and {batch_size}")
        self.num, self.requested = int(num), int(batch_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def batch_size(self) -> int:
        """The size of every batch it gives."""
        return min(self.requested, self.num)

    def __len__(self) -> int:
        return max(1, self.num // self.requested)

    def __iter__(self) -> Iterator[list[int]]:
        for index in _batches(self.num, self.requested, self.generator, drop_last=True):
            yield index.tolist()


class EpochBatches:
    """A batch sampler's epochs, with a position that a checkpoint can hold and restore.

    Each epoch starts by pickling the sampler and the random generators; `restore` goes back
    there and draws the batches already trained again. A sampler may call the model
    (`embed_fn`, APFS's hard class mining): those answers are recorded, rank 0's are broadcast
    (all ranks must draw the same batches), and a restore replays them."""

    def __init__(self, sampler: Any, device: torch.device, group: Any = None) -> None:
        self.sampler, self.device, self.group = sampler, device, group
        self.live_embed = getattr(sampler, "embed_fn", None)
        if self.live_embed is not None:
            sampler.embed_fn = self._embed
        self.taken, self.answers, self.replay = 0, [], []
        self.snapshot: dict[str, Any] | None = None
        self.iterator: Iterator[Sequence[int]] | None = None

    def __len__(self) -> int:
        return len(self.sampler)

    def _embed(self, indices: torch.Tensor) -> torch.Tensor:
        if self.replay:
            return self.replay.pop(0).to(self.device)
        out = self.live_embed(indices).contiguous()
        if self.group is not None:
            dist.broadcast(out, src=0, group=self.group)
        self.answers.append(out.cpu())
        return out

    def _pickled(self) -> bytes:
        if self.live_embed is None:
            return pickle.dumps(self.sampler)
        self.sampler.embed_fn = None
        try:
            return pickle.dumps(self.sampler)
        finally:
            self.sampler.embed_fn = self._embed

    def start_epoch(self) -> None:
        self.snapshot = {"sampler": self._pickled(), "rng": D.rng_state(self.device)}
        self.taken, self.answers = 0, []
        self.iterator = iter(self.sampler)

    def next(self) -> list[int]:
        self.taken += 1
        return list(next(self.iterator))

    def state(self) -> dict[str, Any]:
        return {"sampler": self.snapshot["sampler"], "taken": self.taken, "answers": self.answers}

    def restore(self, state: dict[str, Any], epoch_rng: dict[str, Any]) -> None:
        """Back to the epoch's start (sampler and this rank's generators), then redraw."""
        self.sampler.__dict__.update(pickle.loads(state["sampler"]).__dict__)
        if self.live_embed is not None:
            self.sampler.embed_fn = self._embed
        D.set_rng_state(epoch_rng, self.device)
        self.snapshot = {"sampler": state["sampler"], "rng": epoch_rng}
        self.answers, self.replay = list(state["answers"]), list(state["answers"])
        self.iterator = iter(self.sampler)
        self.taken = 0
        for _ in range(state["taken"]):
            self.next()


def _keep_rows(path: Path, last_step: int) -> None:
    """Drop the rows of a JSON-lines file after `last_step` (and evaluation rows): what a killed
    run logged past its checkpoint is trained again."""
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    kept = [r for r in rows if r["step"] <= last_step and "eval" not in r]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    os.replace(tmp, path)


def epoch_rows(losses: Sequence[float], seconds: Sequence[float],
               steps_per_epoch: int) -> list[dict[str, float]]:
    """`fit`'s history rows, {"epoch", "loss" (mean over its steps), "time"}, one per epoch.

    The losses are summed one by one in float32, as `fit` sums them on the device, so that one
    process's rows are `fit`'s to the bit."""
    rows = []
    for start in range(0, len(losses), steps_per_epoch):
        part = losses[start:start + steps_per_epoch]
        total = torch.zeros(())
        for value in torch.tensor(part, dtype=torch.float32):
            total += value
        rows.append({"epoch": start // steps_per_epoch + 1, "loss": float(total) / len(part),
                     "time": sum(seconds[start:start + steps_per_epoch])})
    return rows


def _step(job: TrainJob, net: nn.Module, batch: list[int], local: list[int],
          shards: list[list[int]] | None, rank: int, group: Any,
          autocast: Callable[[], Any]) -> torch.Tensor:
    """One optimiser step on the global `batch`, this rank embedding `local` (the samples at
    `shards[rank]`); returns the global batch's loss (detached on the caller's side)."""
    device = job.data.images.device
    images = job.data.images[torch.as_tensor(local, device=device)]
    if device.type == "cuda":
        images = images.contiguous(memory_format=torch.channels_last)
    layout = (D.batch_layout(len(batch), shards[rank], device) if shards is not None
              else contextlib.nullcontext())
    with autocast():
        with layout:
            outputs = net(images)
        if shards is not None:
            outputs = D.gather_batch(outputs, shards, group)
        loss = job.loss(outputs, job.data.labels[torch.as_tensor(batch, device=device)])
    job.optimizer.zero_grad(set_to_none=True)
    for side in job.side_optimizers:
        side.zero_grad(set_to_none=True)
    loss.backward()
    if shards is not None and job.loss_parameters:
        D.average_gradients(job.loss_parameters, group)
    job.optimizer.step()
    for side in job.side_optimizers:
        side.step()
    if job.scheduler is not None:
        job.scheduler.step()
    if job.after_step is not None:
        job.after_step()
    return loss


def load_checkpoint(out: Path) -> dict[str, Any]:
    """The checkpoint in `out` (a pickle: load only checkpoints you wrote)."""
    return torch.load(Path(out) / CHECKPOINT, map_location="cpu", weights_only=False)


def train(job: TrainJob, options: LoopOptions, ranks: D.Ranks, group: Any = None,
          should_stop: Callable[[], bool] = lambda: False,
          saved: dict[str, Any] | None = None) -> Outcome:
    """Run `job` to `options.steps` (or until `should_stop()` on some rank), continuing from the
    checkpoint `saved` if given; rank 0 writes metrics.jsonl and checkpoint.pt in `options.out`."""
    device = job.data.images.device
    world, rank = ranks.world_size, ranks.rank
    out = Path(options.out)
    module: nn.Module = _Forward(job.model, job.forward)
    if world > 1:
        D.convert_batchnorm(job.model, group)
        D.convert_dropout(job.model)
    if device.type == "cuda":
        module.to(memory_format=torch.channels_last)
    net = module
    if ranks.launched:
        net = DistributedDataParallel(module, device_ids=[device] if device.type == "cuda" else None,
                                      find_unused_parameters=job.find_unused_parameters,
                                      gradient_as_bucket_view=True,
                                      **_NO_BUFFER_SYNC)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" \
        else contextlib.nullcontext
    # one rank has no gradient to exchange: skip the reducer's all-reduce (its fixed cost per
    # step showed at APFS's 4 ms steps); the gradients are the same
    alone = net.no_sync if ranks.launched and world == 1 else contextlib.nullcontext
    stateful = {"model": job.model, "optimizer": job.optimizer, **job.stateful,
                **{f"side_optimizer{k}": side for k, side in enumerate(job.side_optimizers)}}
    if job.scheduler is not None:
        stateful["scheduler"] = job.scheduler
    labels_host = job.data.labels.cpu().tolist()
    batches = EpochBatches(job.batches, device, group)
    steps_per_epoch = len(batches)
    step, epoch, losses, seconds = 0, 0, [], []

    if saved is not None:
        check_resumable(saved, options.identity, world)
        for name, holder in stateful.items():
            holder.load_state_dict(saved["state"][name])
        step, epoch = saved["step"], saved["epoch"]
        losses, seconds = list(saved["losses"]), list(saved["seconds"])
        batches.restore(saved["batches"], saved["rng_epoch_start"][rank])
        D.set_rng_state(saved["rng"][rank], device)
        if ranks.is_main:
            _keep_rows(out / METRICS, step)
        _keep_rows(out / f"batches-rank{rank}.jsonl", step)  # each rank its own, before it appends
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / METRICS, "a") if ranks.is_main else None  # noqa: SIM115 - closed below
    record = open(out / f"batches-rank{rank}.jsonl", "a") if options.record_batches else None  # noqa: SIM115

    def save_checkpoint() -> None:
        # every rank's generators go in, so that each rank resumes its own streams
        states = D.gather_objects((D.rng_state(device), batches.snapshot["rng"]), ranks)
        if not ranks.is_main:
            return
        payload = {"identity": options.identity, "world_size": world, "step": step,
                   "epoch": epoch, "losses": losses, "seconds": seconds,
                   "state": {name: holder.state_dict() for name, holder in stateful.items()},
                   "batches": batches.state(), "rng": [s[0] for s in states],
                   "rng_epoch_start": [s[1] for s in states]}
        tmp = out / (CHECKPOINT + ".tmp")
        torch.save(payload, tmp)
        os.replace(tmp, out / CHECKPOINT)  # atomic: a kill leaves the old or the new one

    bar = config.progress_bar(None, ranks.is_main, total=options.steps, initial=step,
                              desc="steps", leave=False)
    pending: list[tuple[int, int, torch.Tensor, int]] = []
    window_started = time.perf_counter()

    def flush() -> bool:
        """Write the pending rows (loss averaged over ranks); True when some rank must stop."""
        nonlocal window_started
        values = torch.stack([p[2] for p in pending]
                             + [torch.tensor(float(should_stop()), device=device)])
        if ranks.launched:
            dist.all_reduce(values, group=group)  # one collective per window, the stop flag in it
            values /= world
        values = values.tolist()  # the host sync of the window
        elapsed = time.perf_counter() - window_started
        images = sum(p[3] for p in pending)
        for (s, e, _, _), loss in zip(pending, values[:-1], strict=True):
            losses.append(loss)
            seconds.append(elapsed / len(pending))
            if log is not None:
                log.write(json.dumps({"step": s, "epoch": e, "loss": loss,
                                      "images_per_s": images / elapsed}) + "\n")
        if log is not None:
            log.flush()
        bar.update(len(pending))
        bar.set_postfix(loss=f"{values[-2]:.4f}", images_per_s=f"{images / elapsed:.0f}")
        pending.clear()
        window_started = time.perf_counter()
        return values[-1] > 0

    stopped = False
    net.train()
    try:
        while step < options.steps:
            if epoch == 0 or batches.taken == steps_per_epoch:
                epoch += 1
                batches.start_epoch()
            batch = batches.next()
            step += 1
            shards = job.shard([labels_host[i] for i in batch], world) if world > 1 else None
            local = [batch[p] for p in shards[rank]] if shards else batch
            if record is not None:
                record.write(json.dumps({"step": step, "indices": local}) + "\n")
            with alone():
                loss = _step(job, net, batch, local, shards, rank, group, autocast)
            pending.append((step, epoch, loss.detach().float(), len(batch)))
            if job.after_epoch is not None and ranks.is_main and batches.taken == steps_per_epoch:
                job.after_epoch(epoch)
            checkpoint_now = bool(options.checkpoint_every) and step % options.checkpoint_every == 0
            if (step % options.log_every == 0 or checkpoint_now or step == options.steps
                    or (not ranks.launched and should_stop())):
                stopped = flush() and step < options.steps
                if checkpoint_now or stopped or step == options.steps:
                    save_checkpoint()
                if stopped:
                    break
    finally:
        bar.close()
        for handle in (log, record):
            if handle is not None:
                handle.close()
    job.model.eval()
    return Outcome(step, losses, seconds, epoch_rows(losses, seconds, steps_per_epoch), stopped)


def check_resumable(saved: dict[str, Any], identity: dict[str, Any], world_size: int) -> None:
    """Refuse a checkpoint of another run or another number of ranks, naming what differs."""
    old, new = saved["identity"], identity
    if old != new:
        diff = [k for k in sorted(set(old) | set(new)) if k != "config" and old.get(k) != new.get(k)]
        old_cfg, new_cfg = old.get("config", {}), new.get("config", {})
        diff += [f"config.{k}" for k in sorted(set(old_cfg) | set(new_cfg))
                 if old_cfg.get(k) != new_cfg.get(k)]
        raise ValueError(f"the checkpoint belongs to another run ({', '.join(diff)} differ): "
                         "resume with the settings it was written with, or choose another --out")
    if saved["world_size"] != world_size:
        raise ValueError(f"the checkpoint was written by {saved['world_size']} ranks, this run "
                         f"has {world_size}: resume with --nproc-per-node x --nnodes = "
                         f"{saved['world_size']}")
