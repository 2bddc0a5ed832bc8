"""One training loop for every method (`fit`) and a config-keyed cache (`cached`, `load_or_train`).

`fit` keeps in-memory datasets on the device and indexes them with tensors, never syncs with the
host inside an epoch (the loss is accumulated on the device), uses autocast on CUDA, records
per-epoch metrics and optional embedding snapshots of a probe set, and stops cleanly on Ctrl-C.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import json
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import torch
from torch import nn

import labkit
from labkit.core import config
from labkit.core.data import ArrayDataset
from labkit.core.models import eval_mode

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")
_interruptions = 0  # fits stopped by Ctrl-C in this process (see `cached`)


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
        global _interruptions
        _interruptions += 1
        history.interrupted = True
        warnings.warn(f"training interrupted at epoch {state.epoch}; keeping what was recorded",
                      stacklevel=2)
    finally:
        bar.close()
    model.eval()
    return history


# ----------------------------------------------------------------------------- cache

def normalized_source(text: str) -> str:
    """Python source as its syntax tree, without docstrings: comments, docstrings, layout and
    line numbers do not change it, any change to what the code does does."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.dump(tree)


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """A hash of the code whose results the cache holds: every module of labkit.core and
    labkit.methods, normalised (see `normalized_source`). Coarse on purpose: a change to any
    computation there invalidates every entry (a numerics fix cannot leave stale runs behind, as
    the version alone did), while editing prose or comments keeps them."""
    root = Path(labkit.__file__).parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("core/*.py"), *root.glob("methods/*.py")]):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(normalized_source(path.read_text(encoding="utf-8")).encode())
    return digest.hexdigest()[:16]


def _key_value(value: Any) -> Any:
    """JSON stand-in for a config value JSON cannot hold. Arrays by content (`str` abbreviates
    big ones with '...', so two differing tensors would share a key); functions are refused
    (`str` holds their address, so the key would change every process)."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
        array = np.ascontiguousarray(array)
        return {"array": hashlib.sha256(array.tobytes()).hexdigest(),
                "shape": list(array.shape), "dtype": str(array.dtype)}
    if callable(value) and not isinstance(value, type):
        raise TypeError(f"config value {value!r} is a function: put its name or settings in "
                        f"the config instead")
    return str(value)


def config_key(name: str, cfg: Mapping[str, Any]) -> str:
    """A stable hash of (name, config, labkit version, `code_fingerprint`)."""
    payload = json.dumps({"name": name, "config": cfg, "version": labkit.__version__,
                          "code": code_fingerprint()}, sort_keys=True, default=_key_value)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_path(name: str, cfg: Mapping[str, Any]) -> Path:
    return config.cache_root() / name / f"{config_key(name, cfg)}.pt"


def cached(name: str, cfg: Mapping[str, Any], compute: Callable[[], T]) -> T:
    """`compute()`'s result, stored under a hash of `cfg`; a corrupt entry is recomputed with a
    warning. A result whose training was interrupted (Ctrl-C inside `fit`) is returned, not
    stored: it is not the run `cfg` describes."""
    path = cache_path(name, cfg)
    if path.exists():
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001 - any unreadable entry is recomputed
            warnings.warn(f"cache entry {path} is unreadable ({error}); recomputing", stacklevel=2)
    interruptions = _interruptions
    result = compute()
    if _interruptions != interruptions:
        warnings.warn(f"{name}: training was interrupted, so this result is not cached",
                      stacklevel=2)
        return result
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(result, tmp)
    tmp.replace(path)
    return result


def load_or_train(name: str, cfg: Mapping[str, Any], build: Callable[[], nn.Module],
                  train: Callable[[nn.Module], History]) -> tuple[nn.Module, History]:
    """Build the model (seeded by cfg["seed"]); load its cached weights and history or train it.

    A stale or corrupt entry (unreadable, or weights that do not fit the built model) is retrained.
    """
    seed = int(cfg.get("seed", 0))

    def train_fresh() -> dict[str, Any]:
        config.seed_everything(seed)
        model = build()
        history = train(model)
        return {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "history": history}

    entry = cached(name, cfg, train_fresh)
    config.seed_everything(seed)
    model = build()
    try:
        model.load_state_dict(entry["state_dict"])
    except (RuntimeError, KeyError, TypeError) as error:
        warnings.warn(f"cached weights for {name!r} do not fit the model ({error}); retraining",
                      stacklevel=2)
        cache_path(name, cfg).unlink(missing_ok=True)
        entry = cached(name, cfg, train_fresh)
        model.load_state_dict(entry["state_dict"])
    model.eval()
    return model, entry["history"]
