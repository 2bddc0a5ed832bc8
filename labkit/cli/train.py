"""`labkit train METHOD`: a method's run from a TOML config, in one process or under torchrun.

    labkit train gsp --config quick --out runs/gsp-quick
    torchrun --standalone --nproc-per-node 2 -m labkit.cli.main train gsp --config lab --out ...

A config holds the runner's config keys (`labkit/configs/<method>/<name>.toml`, or any TOML
file); `--set key=value` changes one (the value is read as TOML, else taken as a string; "none"
is None). Everything that can be checked is checked before training: the method, the keys
(unknown ones fail, naming the valid ones), the batch against the number of ranks, the dataset
(a missing one says where it was looked for) and whether it fills a batch.

Outputs in --out: metrics.jsonl (one row per step: step, epoch, loss averaged over ranks,
images_per_s; an evaluation row at the end), checkpoint.pt (every --checkpoint-every steps, on
SIGTERM or Ctrl-C, and at the end; --resume continues from it exactly) and run.json. A finished
run is also stored in the cache the notebooks read, under the runner's key: with the config's
full step budget exactly where the runner's `run` looks for it; with a smaller --steps under the
config plus "train_steps", so that it never stands in for a run of the full budget.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from labkit.core import distributed as D
from labkit.core import loop
from labkit.core.cache import cache_path, cached, config_key
from labkit.methods import train_jobs
from labkit.methods.train_jobs import BUILDERS, CACHE_NAMES, IDENTITY

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomllib is 3.11's; tomli is the same parser
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

METHODS = ("reponet", "fdl", "interchange", "gsp", "apfs")
RECORD_ENV = "LABKIT_TRAIN_RECORD_BATCHES"  # set to 1: each rank logs its sample indices per step


def check_method(method: str) -> str:
    """`method` if `labkit train` can train it, else a ValueError saying what can."""
    if method in BUILDERS:
        return method
    raise ValueError(f"unknown method {method!r}; the methods are {', '.join(METHODS)}")


def bundled_configs(method: str) -> list[str]:
    """Names of the configs shipped for `method` (labkit/configs/<method>/<name>.toml)."""
    folder = resources.files("labkit") / "configs" / method
    if not folder.is_dir():
        return []
    return sorted(item.name[:-5] for item in folder.iterdir() if item.name.endswith(".toml"))


def read_config(method: str, name_or_path: str) -> dict[str, Any]:
    """The TOML table of a bundled config name or of a file."""
    if tomllib is None:
        raise ValueError("labkit train reads TOML configs with tomllib (Python 3.11+); on "
                         "Python 3.10 `pip install tomli`")
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} not found")
        text = path.read_text(encoding="utf-8")
    elif name_or_path in bundled_configs(method):
        text = (resources.files("labkit") / "configs" / method / f"{name_or_path}.toml").read_text(
            encoding="utf-8")
    else:
        raise ValueError(f"no config {name_or_path!r} for {method}: bundled ones are "
                         f"{', '.join(bundled_configs(method))}, or give a .toml file")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"config {name_or_path}: {error}") from None


def parse_set(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value): the value as TOML (1e-3, [8, 16], true), else a string."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(f"--set takes key=value, got {text!r}")
    try:
        parsed = tomllib.loads(f"value = {value}")["value"]
    except tomllib.TOMLDecodeError:
        parsed = value.strip()  # a bare word such as contrastive or cub200
    return key.strip(), parsed


def _none(value: Any) -> Any:
    return None if isinstance(value, str) and value.lower() == "none" else value


def _checked_types(cfg: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """cfg, each value of its default's kind (number, string, list, bool, table): a whole float
    where an int belongs is that int, an int where a float belongs that float, so that the
    cache key is the one the runner's own call would give; None is always allowed (the runners
    read it as "not set")."""
    out = dict(cfg)
    for key, value in cfg.items():
        default = defaults.get(key)
        if value is None or default is None:
            continue
        if isinstance(default, bool) or isinstance(value, bool):
            ok = isinstance(value, bool) and isinstance(default, bool)
        elif isinstance(default, int):
            ok = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
            if ok:
                out[key] = int(value)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float))
            if ok:
                out[key] = float(value)
        elif isinstance(default, (list, tuple)):
            ok = isinstance(value, (list, tuple))
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(f"config key {key} = {value!r} should be like its default "
                             f"{default!r}")
    return out


def resolve_config(method: str, name_or_path: str, sets: Sequence[str] = ()) -> dict[str, Any]:
    """The run config of a config file or bundled name plus --set overrides, checked and
    completed by the runner's own config function (no data is read)."""
    raw = read_config(method, name_or_path)
    for text in sets:
        key, value = parse_set(text)
        raw[key] = value
    raw = {key: _none(value) for key, value in raw.items()}
    try:
        cfg = train_jobs.configure(method, raw)
        # the runner's defaults for this config's identity (its config function's arguments)
        defaults = train_jobs.configure(method, {k: raw[k] for k in IDENTITY[method] if k in raw})
        cfg = _checked_types(cfg, defaults)
        train_jobs.check_config(method, cfg)
    except (ValueError, TypeError) as error:
        raise ValueError(f"config {name_or_path} for {method}: {error}") from None
    return cfg


def check_world(method: str, cfg: Mapping[str, Any], world_size: int) -> None:
    """Each rank takes an equal share of every global batch (whole classes of an m-per-class
    batch): the batch, and its classes, must divide by the world."""
    size, classes = train_jobs.global_batch(method, cfg)
    if classes is None:
        if size % world_size:
            raise ValueError(f"the global batch of {size} (batch_size) does not divide by the "
                             f"world size {world_size}: every rank takes an equal share of each "
                             "batch")
        return
    if size % world_size:
        raise ValueError(f"the global batch of {size} ({classes} classes x "
                         f"{size // classes}) does not divide by the world size {world_size}")
    if classes % world_size:
        raise ValueError(f"classes_per_batch={classes} does not divide by the world size "
                         f"{world_size}: every rank takes whole classes of each batch")


class StopSignals:
    """SIGTERM and SIGINT (Ctrl-C) ask the loop to stop at its next check, where it writes a
    checkpoint; a second signal of the same kind acts as it would have without this."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self.previous: dict[int, Any] = {}

    def requested(self) -> bool:
        return self.signal is not None

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum
        signal.signal(signum, self.previous[signum])

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers; signals then act as usual
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)


def run(args: argparse.Namespace) -> int:
    """`labkit train` with parsed arguments; returns the exit status."""
    ranks = D.ranks_from_env()
    say = print if ranks.is_main else (lambda *a, **k: None)
    try:
        method = check_method(args.method)
        cfg = resolve_config(method, args.config, args.set)
        check_world(method, cfg, ranks.world_size)
        if args.steps is not None and args.steps < 1 or args.checkpoint_every < 0:
            raise ValueError("--steps must be >= 1 and --checkpoint-every >= 0")
        out = args.out or Path("labkit-train") / f"{method}-{Path(args.config).stem}"
        identity = {"method": method, "config": cfg}
        saved = None
        if args.resume:
            # every rank reads it: on several nodes --out must be on storage they all see
            if not (out / loop.CHECKPOINT).exists():
                raise FileNotFoundError(f"--resume: no {loop.CHECKPOINT} in {out}")
            saved = loop.load_checkpoint(out)
            loop.check_resumable(saved, identity, ranks.world_size)
        elif (out / loop.CHECKPOINT).exists():
            raise ValueError(f"{out} already holds a run ({loop.CHECKPOINT}): pass --resume to "
                             "continue it, or choose another --out")
        device = D.device_for(ranks)
        training = BUILDERS[method](cfg, device)  # reads the data: a missing dataset fails here
        size = training.global_batch
        if size is not None and size % ranks.world_size:
            raise ValueError(f"a global batch of {size} (all of the training set: it is smaller "
                             f"than batch_size) does not divide by the world size "
                             f"{ranks.world_size}")
        budget = training.job.total_steps
        steps = budget if args.steps is None else min(args.steps, budget)
    except (ValueError, FileNotFoundError) as error:
        say(f"labkit train: error: {error}", file=sys.stderr)
        return 2
    # a shorter run is another run: its key says so, and a runner's full-budget run never
    # finds it (nor the reverse)
    key_cfg = cfg if steps == budget else {**cfg, "train_steps": steps}
    options = loop.LoopOptions(out, steps, identity, args.checkpoint_every,
                               record_batches=os.environ.get(RECORD_ENV, "0") not in ("", "0"))
    say(f"labkit train {method} ({args.config}): {steps} of {budget} steps on {device}, "
        f"{ranks.world_size} rank(s); writing {out}")
    with StopSignals() as stop, D.process_group(ranks, device) as group, training.cpu_threads():
        outcome = loop.train(training.job, options, ranks, group, stop.requested, saved)
    if outcome.stopped:
        cause = signal.Signals(stop.signal).name if stop.signal else "a signal to another rank"
        say(f"stopped at step {outcome.steps} by {cause}; {out / loop.CHECKPOINT} holds it: run "
            "the same command with --resume to continue")
        return 128 + (stop.signal or signal.SIGTERM)
    if not ranks.is_main:
        return 0
    result = training.finish(outcome)
    metrics = training.metrics(result)
    with open(out / loop.METRICS, "a") as log:
        log.write(json.dumps({"step": outcome.steps, "eval": metrics}) + "\n")
    name = CACHE_NAMES[method]
    path = cache_path(name, key_cfg)
    existed = path.exists()
    cached(name, key_cfg, lambda: result)
    (out / "run.json").write_text(json.dumps(
        {"method": method, "config": key_cfg, "steps": outcome.steps, "world_size":
         ranks.world_size, "device": str(device), "cache": str(path),
         "cache_key": config_key(name, key_cfg)}, indent=1, default=str) + "\n")
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
    say(f"done: {shown}\n{'kept the entry already cached at' if existed else 'cached at'} {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """`labkit train ...` from a list of arguments."""
    from labkit.cli.main import add_train_arguments

    parser = argparse.ArgumentParser(prog="labkit train", description=__doc__.split("\n")[0])
    add_train_arguments(parser)
    return run(parser.parse_args(argv))
