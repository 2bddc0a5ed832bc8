"""`labkit bench train`: the step time of `labkit train` in one process, under DDP with one rank
and under DDP with two ranks (torchrun, gloo on the CPU), on the same config and global batch.

Each repeat runs the three side by side (in alternating order, as separate processes, each with
a throwaway cache); a run's step time is the median over its metrics.jsonl windows after the
first `--skip` steps (warm-up). Reported: min / median / max over repeats of each step time and
of the per-repeat ratios to the single process. Goal: DDP with one rank at most 1.05x. Every
process gets the same OMP_NUM_THREADS (--threads).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

VARIANTS = ("single", "ddp1", "ddp2")


def _command(variant: str, train_args: list[str]) -> list[str]:
    labkit = ["-m", "labkit.cli.main", "train", *train_args]
    if variant == "single":
        return [sys.executable, *labkit]
    ranks = variant[-1]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            ranks, *labkit]


def step_seconds(metrics: Path, batch: int, skip: int) -> float:
    """Median seconds per step of a run's rows after step `skip`, for a global batch of `batch`
    images (rows of one flush window share their window's rate: a median over windows)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    times = [batch / r["images_per_s"] for r in rows if "loss" in r and r["step"] > skip]
    if not times:
        raise ValueError(f"{metrics} has no steps after step {skip}: raise --steps")
    return statistics.median(times)


def _spread(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Time the three variants; print and return what was measured."""
    from labkit.cli.train import resolve_config
    from labkit.methods.train_jobs import batch_shape, total_steps

    parser = argparse.ArgumentParser(prog="labkit bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--method", default="gsp", choices=["gsp", "apfs"])
    parser.add_argument("--config", default="quick")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    parser.add_argument("--skip", type=int, default=10, help="warm-up steps left out")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1,
                        help="OMP_NUM_THREADS of every process (torchrun's default for several "
                             "ranks; equal threads keep the comparison about DDP, and two "
                             "threads on two shared cores stall when a core is busy)")
    args = parser.parse_args(argv)
    if args.steps <= args.skip or args.repeats < 1:
        raise ValueError("need --steps > --skip and --repeats >= 1")
    cfg = resolve_config(args.method, args.config, args.set)
    per_epoch = total_steps(args.method, cfg) // int(cfg["epochs"])
    epochs = max(int(cfg["epochs"]), math.ceil(args.steps / per_epoch))
    classes, per_class = batch_shape(args.method, cfg)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="labkit-bench-train-") as tmp:
        env = {**os.environ, "LABKIT_CACHE": str(Path(tmp) / "cache"), "LABKIT_PROGRESS": "0",
               "OMP_NUM_THREADS": str(args.threads)}
        for repeat in range(args.repeats):
            order = VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]
            for variant in order:
                out = Path(tmp) / f"{variant}-{repeat}"
                train_args = [args.method, "--config", args.config, "--out", str(out),
                              "--steps", str(args.steps), "--set", f"epochs={epochs}",
                              *[x for kv in args.set for x in ("--set", kv)]]
                done = subprocess.run(_command(variant, train_args), env=env,
                                      capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"{variant} run failed:\n{done.stderr[-3000:]}")
                times[variant].append(step_seconds(out / "metrics.jsonl", classes * per_class,
                                                    args.skip))
    res: dict[str, Any] = {"method": args.method, "config": args.config, "steps": args.steps,
                           "skip": args.skip, "repeats": args.repeats,
                           "batch": f"{classes} x {per_class}", "cpus": os.cpu_count(),
                           "threads": args.threads}
    for variant in VARIANTS:
        res[f"{variant}_ms"] = _spread([1e3 * t for t in times[variant]])
    for variant in VARIANTS[1:]:
        res[f"{variant}/single"] = _spread([a / b for a, b in zip(
            times[variant], times["single"], strict=True)])
    res["goal_met"] = res["ddp1/single"]["median"] <= 1.05

    def shown(d: dict[str, float], fmt: str) -> str:
        return " / ".join(format(d[k], fmt) for k in ("min", "median", "max"))

    print(f"labkit train {args.method} ({args.config}), global batch {classes} x {per_class}, "
          f"{args.steps} steps per run ({args.skip} warm-up), {args.repeats} repeats, "
          f"{res['cpus']} CPUs, {args.threads} thread(s) per process; min / median / max:")
    for variant, label in zip(VARIANTS, ("one process", "DDP, 1 rank", "DDP, 2 ranks"),
                              strict=True):
        print(f"  {label:13s} {shown(res[f'{variant}_ms'], '8.1f')} ms/step")
    print(f"  DDP 1 rank / one process  {shown(res['ddp1/single'], '.3f')} (goal <= 1.05 at the "
          f"median: {'met' if res['goal_met'] else 'NOT met'})")
    print(f"  DDP 2 ranks / one process {shown(res['ddp2/single'], '.3f')}")
    return res


if __name__ == "__main__":
    main()
