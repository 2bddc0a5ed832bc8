"""One training loop for every method (`fit`); its runs are cached by `labkit.core.cache`.

`fit` keeps in-memory datasets on the device and indexes them with tensors, never syncs with the
host inside an epoch (the loss is accumulated on the device), uses autocast on CUDA, records
per-epoch metrics and optional embedding snapshots of a probe set, and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from labkit.core import config
from labkit.core.cache import note_interruption
from labkit.core.data import ArrayDataset
from labkit.core.models import eval_mode

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")


@dataclass
class History:
    """What a run recorded: per-epoch metrics and embedding snapshots of a fixed probe set."""

    epochs: list[dict[str, float]] = field(default_factory=list)
    snapshots: list[torch.Tensor] = field(default_factory=list)  # each (N_probe, d), float32 CPU
    snapshot_epochs: list[int] = field(default_factory=list)
    interrupted: bool = False

    def metric(self, key: str) -> list[float]:
        """The values of `key` over the recorded epochs."""
        return [row[key] for row in self.epochs if key in row]

    @property
    def last(self) -> dict[str, float]:
        return self.epochs[-1] if self.epochs else {}


@dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    history: History
    epoch: int = 0
    step: int = 0
    loss: torch.Tensor | None = None  # the last step's loss, on the device (reading it syncs)


class Callback(Protocol):
    def on_step_end(self, state: TrainState) -> None: ...
    def on_epoch_end(self, state: TrainState) -> None: ...


def _make_optimizer(params, name: str, lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd', 'adam' or 'adamw'")


def _make_scheduler(optimizer, schedule: str | None, milestones: Sequence[int], gamma: float,
                    epochs: int, steps_per_epoch: int):
    """A per-step scheduler (so cosine is smooth); milestones are in epochs."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch))
    if schedule in (None, "step") and milestones:
        steps = [m * steps_per_epoch for m in milestones]
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, steps, gamma)
    if schedule not in (None, "step", "constant"):
        raise ValueError(f"unknown schedule {schedule!r}; use 'step', 'cosine' or 'constant'")
    return None


def record_snapshot(model: nn.Module, probe: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """Embeddings (N, d) of `probe` in eval mode, as float32 on the CPU."""
    with eval_mode(model), torch.no_grad():
        parts = [model.forward_all(probe[i:i + batch_size]).embedding.float()
                 for i in range(0, len(probe), batch_size)]
    return torch.cat(parts).cpu()


def _batches(num: int, batch_size: int, generator: torch.Generator, drop_last: bool):
    order = torch.randperm(num, generator=generator)
    stop = num - num % batch_size if drop_last and num >= batch_size else num
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


def fit(model: nn.Module, loss_fn: LossFn, data: ArrayDataset, *, epochs: int,
        batch_size: int = 128, optimizer: str = "sgd", lr: float = 0.01, momentum: float = 0.9,
        weight_decay: float = 0.0, schedule: str | None = None, milestones: Sequence[int] = (),
        gamma: float = 0.1, param_groups: list[dict[str, Any]] | None = None,
        batch_sampler: Iterable[Sequence[int]] | None = None, drop_last: bool = True,
        device: torch.device | str | None = None, probe: torch.Tensor | None = None,
        snapshot_every: int = 1, callbacks: Sequence[Any] = (),
        eval_fn: Callable[[nn.Module], Mapping[str, float]] | None = None, seed: int = 0,
        progress: bool = True, amp: bool | None = None, history: History | None = None,
        side_optimizers: Sequence[torch.optim.Optimizer] = ()) -> History:
    """Train `model` in place with `loss_fn(model, images, labels) -> scalar` and return its History.

    Parameters optimised: `param_groups` if given, else the model's (and `loss_fn`'s when it is an
    nn.Module). `side_optimizers` own parameters with an update rule of their own (Center Loss
    centres: plain SGD at a constant alpha): they step after the main optimiser on the same
    backward pass, outside its schedule, and their parameters are left out of the main groups.
    Batches come from `batch_sampler` (index lists) or a seeded shuffle. On CUDA the data live on
    the GPU and autocast (bfloat16) runs unless amp=False.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else config.get_device()
    use_amp = (device.type == "cuda") if amp is None else (amp and device.type == "cuda")
    model.to(device)
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
    data = data.to(device)
    probe = probe.to(device) if probe is not None else None
    if param_groups is None:
        params = list(model.parameters())
        if isinstance(loss_fn, nn.Module):
            params += list(loss_fn.parameters())
        param_groups = [{"params": [p for p in params if p.requires_grad]}]
    side_params = {id(p) for side in side_optimizers for group in side.param_groups
                   for p in group["params"]}
    if side_params:
        param_groups = [{**group, "params": [p for p in group["params"] if id(p) not in side_params]}
                        for group in param_groups]
    opt = _make_optimizer(param_groups, optimizer, lr, momentum, weight_decay)
    generator = torch.Generator().manual_seed(seed)
    config.seed_everything(seed)
    if batch_sampler is None:
        steps_per_epoch = max(1, len(data) // batch_size if drop_last else -(-len(data) // batch_size))
    else:
        steps_per_epoch = max(1, len(batch_sampler))  # type: ignore[arg-type]
    scheduler = _make_scheduler(opt, schedule, milestones, gamma, epochs, steps_per_epoch)
    history = history if history is not None else History()
    state = TrainState(model, opt, history)
    on_step = [cb.on_step_end for cb in callbacks if hasattr(cb, "on_step_end")]
    on_epoch = [cb.on_epoch_end for cb in callbacks if hasattr(cb, "on_epoch_end")]
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    if probe is not None and not history.snapshots:
        history.snapshots.append(record_snapshot(model, probe))
        history.snapshot_epochs.append(0)
    model.train()
    bar = config.progress_bar(range(1, epochs + 1), progress, desc="epochs", leave=False)
    try:
        for epoch in bar:
            state.epoch = epoch
            started = time.perf_counter()
            total = torch.zeros((), device=device)
            count = 0
            batches = batch_sampler if batch_sampler is not None else _batches(
                len(data), batch_size, generator, drop_last)
            for index in batches:
                index = torch.as_tensor(index, device=device)
                with autocast():
                    loss = loss_fn(model, data.images[index], data.labels[index])
                opt.zero_grad(set_to_none=True)
                for side in side_optimizers:
                    side.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                for side in side_optimizers:
                    side.step()
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach().float()
                count += 1
                state.step += 1
                state.loss = loss.detach()
                for hook in on_step:
                    hook(state)
            row = {"epoch": epoch, "loss": float(total) / max(count, 1),
                   "time": time.perf_counter() - started}
            if eval_fn is not None:
                row.update({k: float(v) for k, v in eval_fn(model).items()})
                model.train()
            history.epochs.append(row)
            if probe is not None and (epoch % snapshot_every == 0 or epoch == epochs):
                history.snapshots.append(record_snapshot(model, probe))
                history.snapshot_epochs.append(epoch)
            bar.set_postfix(loss=f"{row['loss']:.4f}")
            for hook in on_epoch:
                hook(state)
    except KeyboardInterrupt:
        note_interruption()
        history.interrupted = True
        warnings.warn(f"training interrupted at epoch {state.epoch}; keeping what was recorded",
                      stacklevel=2)
    finally:
        bar.close()
    model.eval()
    return history
