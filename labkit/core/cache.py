"""The config-keyed cache of runs: `cached`, `load_or_train`, and the keys behind them.

An entry is keyed by a hash of (name, config, labkit version, `code_fingerprint`), so a numerics
fix in `labkit.core` or `labkit.methods` can never leave stale runs behind; a corrupt entry is
recomputed, and a run interrupted by Ctrl-C (`note_interruption`) is returned but never stored.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import torch
from torch import nn

import labkit
from labkit.core import config

if TYPE_CHECKING:
    from labkit.core.train import History

T = TypeVar("T")
_interruptions = 0  # trainings stopped by Ctrl-C in this process (see `cached`)


def note_interruption() -> None:
    """Record that a training in this process was interrupted: `cached` will not store the
    result it is computing."""
    global _interruptions
    _interruptions += 1


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
