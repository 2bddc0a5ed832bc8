"""Profiles, device, paths and seeding: the one place that turns the environment into settings.

`LABKIT_PROFILE` = quick (tests/CI: tiny), lab (default: embedded data, CPU-friendly) or full
(paper scale, GPU recommended). Method code asks `pick(quick=..., lab=..., full=...)` for its
own knobs, so notebooks never branch on the profile themselves. `LABKIT_PROGRESS=0` turns every
progress bar off (`labkit reproduce` sets it, so stored notebooks carry no frozen bars).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

if TYPE_CHECKING:
    from tqdm.auto import tqdm

PROFILES = ("quick", "lab", "full")
T = TypeVar("T")
_UNSET = object()


def profile() -> str:
    """The active profile name, from `LABKIT_PROFILE` (default "lab")."""
    name = os.environ.get("LABKIT_PROFILE", "lab").strip().lower() or "lab"
    if name not in PROFILES:
        raise ValueError(f"LABKIT_PROFILE={name!r} is not a profile; use one of {PROFILES}")
    return name


def pick(*, quick: T, lab: T, full: T = _UNSET) -> T:  # type: ignore[assignment]
    """The value for the active profile; `full` falls back to `lab` when not given."""
    name = profile()
    if name == "quick":
        return quick
    if name == "full" and full is not _UNSET:
        return full
    return lab


def progress_bar(items: Iterable[T], progress: bool = True, **options) -> tqdm[T]:
    """`items` wrapped in a tqdm bar (`options` go to tqdm), shown only when `progress` and
    `LABKIT_PROGRESS` is not 0."""
    from tqdm.auto import tqdm  # noqa: F811 - the runtime import of the annotation's class

    shown = progress and os.environ.get("LABKIT_PROGRESS", "1").strip() != "0"
    return tqdm(items, disable=not shown, **options)


def get_device() -> torch.device:
    """`LABKIT_DEVICE` if set, else CUDA when available, else CPU."""
    requested = os.environ.get("LABKIT_DEVICE", "").strip()
    if requested:
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"LABKIT_DEVICE={requested!r} but CUDA is not available here")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for `device`'s queued kernels (CUDA), so that a timer reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def small_cpu_thread_cap(device: torch.device) -> int | None:
    """1 on a CPU of at most 4 cores, else None (no cap): the lab's tiny convolutions gain
    nothing from more intra-op threads there, and OpenMP threads spinning against other
    processes made steps about 10x slower."""
    return 1 if device.type == "cpu" and (os.cpu_count() or 1) <= 4 else None


@contextlib.contextmanager
def cpu_threads(count: int | None) -> Iterator[int]:
    """torch's intra-op threads capped at `count` inside the block (None: left as they are),
    restored afterwards; yields the count in force."""
    before = torch.get_num_threads()
    if count:
        torch.set_num_threads(int(count))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def seed_everything(seed: int) -> None:
    """Seed python, numpy's global generator (pytorch-metric-learning samples with it) and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def _user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "labkit"


def cache_root() -> Path:
    """Where checkpoints and recorded histories live (`LABKIT_CACHE`)."""
    return Path(os.environ.get("LABKIT_CACHE") or _user_cache_dir() / "runs").expanduser()


def data_root() -> Path:
    """Where downloadable and local datasets live (`LABKIT_DATA`)."""
    return Path(os.environ.get("LABKIT_DATA") or _user_cache_dir() / "data").expanduser()


def describe() -> str:
    """One line for a notebook's first cell: profile, device, torch version."""
    return f"labkit profile={profile()} device={get_device()} torch={torch.__version__}"
