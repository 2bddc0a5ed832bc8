"""The `labkit` command: reproduce, lab, bench, download, train."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

BENCHMARKS = {
    "retrieval": "labkit.cli.bench_core:retrieval",
    "fit": "labkit.cli.bench_core:fit_overhead",
    "gsp": "labkit.cli.bench_gsp:main",
    "train": "labkit.cli.bench_train:main",
}


def _load(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """`labkit train`'s options (here, so that other commands need not import torch)."""
    parser.add_argument("method", help="reponet, fdl, interchange, gsp or apfs")
    parser.add_argument("--config", default="quick",
                        help="a bundled config (quick, lab, paper, ...: labkit/configs/METHOD) or a "
                             ".toml file (default quick)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change one config key (repeatable; the value is read as TOML)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default labkit-train/METHOD-CONFIG)")
    parser.add_argument("--steps", type=int, default=None,
                        help="train at most N optimiser steps (default: the config's budget)")
    parser.add_argument("--checkpoint-every", type=int, default=0, metavar="K",
                        help="write checkpoint.pt every K steps (also at the end and on SIGTERM "
                             "or Ctrl-C)")
    parser.add_argument("--resume", action="store_true", help="continue from --out's checkpoint")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="labkit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    rep = sub.add_parser("reproduce", help="execute the notebooks headless; collect notebooks + figures")
    rep.add_argument("notebooks", nargs="*", help="name prefixes, e.g. 00 01 (default: all)")
    rep.add_argument("--profile", default=None, help="quick | lab | full (default: LABKIT_PROFILE or lab)")
    rep.add_argument("--out", type=Path, default=Path("labkit-output"))
    rep.add_argument("--inplace", action="store_true", help="overwrite notebooks/ (maintainers)")
    rep.add_argument("--check", action="store_true",
                     help="re-execute in each notebook's stored profile and list every printed "
                          "line that differs from the stored notebook (timings excepted)")
    rep.add_argument("--timeout", type=int, default=None,
                     help="seconds per cell (default: 900 in quick, 3600 in lab and full)")

    lab = sub.add_parser("lab", help="open JupyterLab on a working copy of the notebooks")
    lab.add_argument("--dir", type=Path, default=None,
                     help="where the working copy lives (default: labkit-lab/ in the checkout)")
    lab.add_argument("--fresh", action="store_true", help="overwrite the copies with the stored notebooks")
    lab.add_argument("jupyter_args", nargs="*",
                     help="passed on to `jupyter lab` (e.g. --no-browser --port=8899)")

    bench = sub.add_parser("bench", help="run a benchmark and print what it measured")
    bench.add_argument("name", choices=sorted(BENCHMARKS))
    bench.add_argument("args", nargs=argparse.REMAINDER)

    download = sub.add_parser("download", help="download a torchvision dataset to LABKIT_DATA")
    download.add_argument("name", choices=["mnist", "fashion_mnist", "cifar10", "cifar100"])

    train = sub.add_parser("train", help="train a method from a TOML config, in one process or "
                                         "under torchrun (DDP), resumable")
    add_train_arguments(train)

    # `jupyter lab` options look like ours, so the lab command takes the ones it does not know
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "lab":
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command == "lab":
        args.jupyter_args = [*args.jupyter_args, *unknown]
    if args.command == "reproduce":
        from labkit.cli.reproduce import run
        from labkit.core import config

        if args.check and args.inplace:
            parser.error("--check compares with the stored notebooks: it cannot overwrite them")
        profile = args.profile or (None if args.check else os.environ.get("LABKIT_PROFILE", "lab"))
        if profile is not None:
            os.environ["LABKIT_PROFILE"] = profile
            config.profile()  # validates
        return run(args.notebooks, args.out, profile, args.inplace, args.timeout, check=args.check)
    if args.command == "lab":
        from labkit.cli import lab as lab_command

        return lab_command.main(args.dir or lab_command.DEFAULT_COPY, args.fresh, args.jupyter_args)
    if args.command == "bench":
        _load(BENCHMARKS[args.name])(args.args)
        return 0
    if args.command == "train":
        from labkit.cli.train import run as train_run

        return train_run(args)
    if args.command == "download":
        from labkit.core.data import load_dataset

        for split in ("train", "test"):
            dataset = load_dataset(args.name, split, download=True)
            print(f"{args.name} {split}: {len(dataset)} images")
        return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
