"""`labkit train`: configs, bad input, DDP against one process, exact resume, kills, the cache.

Runs on the CPU (gloo). The single-process runs go through `labkit.cli.train.main` in this
process; the two-rank runs through torchrun (`python -m torch.distributed.run --standalone`),
the killed one as a plain subprocess.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from labkit.cli import train as cli
from labkit.core import loop
from labkit.core.cache import cache_path
from labkit.core.train import _batches
from labkit.methods import (
    fdl_experiments,
    interchange_experiments,
    reponet_experiments,
    train_jobs,
)

PROFILE_OF = {"quick": "quick", "lab": "lab", "paper": "full"}
# the other methods' bundled configs: name -> (the runner's profile, its overrides of the
# profile's defaults beyond the config's identity keys)
BUNDLED = {
    "reponet": {"quick": ("quick", {}), "lab": ("lab", {}), "paper": ("full", {}),
                "cifar10": ("full", {"dataset": "cifar10", "arch": "resnet20", "backbone": {}})},
    "fdl": {"quick": ("quick", {}), "lab": ("lab", {}), "paper": ("full", {}),
            "cifar10": ("full", {"dataset": "cifar10",
                                 "widths": fdl_experiments.CIFAR_WIDTHS})},
    "interchange": {"quick": ("quick", {}), "quick-open": ("quick", {}), "lab": ("lab", {}),
                    "paper": ("full", {}), "paper-open": ("full", {})},
}
# RePoNet with Center Loss (its side optimiser) on 12 digits per class: 3 steps per epoch
CENTER = ["--set", "head=center", "--set", "margin=false", "--set", "feat_dim=2",
          "--set", "train_per_class=12"]
# small runs of each method that two ranks can share (apfs quick has 3 classes per batch; fdl
# quick is one step per epoch, with dropout and batch norm)
DDP_RUNS = {"gsp": ["--set", "batches_per_epoch=4"],
            "apfs": ["--set", "classes_per_batch=4", "--steps", "6"],
            "fdl": ["--steps", "8"]}
DURATIONS = {"time", "train_seconds", "train_time", "seconds_per_step"}  # wall clock


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    monkeypatch.setenv("LABKIT_PROGRESS", "0")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", cli.RECORD_ENV):
        monkeypatch.delenv(name, raising=False)


def train(*args: str) -> None:
    assert cli.main(list(args)) == 0


def rows(out: Path, name: str = loop.METRICS) -> list[dict]:
    return [json.loads(line) for line in (out / name).read_text().splitlines()]


def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in rows(out) if "loss" in r}


def sub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "LABKIT_CACHE": str(tmp_path / "cache"), "LABKIT_DEVICE": "cpu",
            "LABKIT_PROGRESS": "0", "OMP_NUM_THREADS": "1", **extra}


# ----------------------------------------------------------------------------- configs

@pytest.mark.parametrize("method", ["gsp", "apfs"])
def test_bundled_configs_are_the_runners_profiles_whatever_the_active_profile(method, monkeypatch):
    assert cli.bundled_configs(method) == sorted(PROFILE_OF)
    runner = train_jobs.RUNNERS[method]
    for name, profile in PROFILE_OF.items():
        resolved = []
        for active in ("quick", "lab", "full"):
            monkeypatch.setenv("LABKIT_PROFILE", active)
            resolved.append(cli.resolve_config(method, name))
        assert resolved[0] == resolved[1] == resolved[2], f"{name} depends on LABKIT_PROFILE"
        cfg = resolved[0]
        monkeypatch.setenv("LABKIT_PROFILE", profile)
        expected = runner.Settings.for_profile(profile, loss=cfg["loss"], variant=cfg["variant"],
                                               seed=cfg["seed"]).as_dict()
        # a TOML array is a list where the runner writes a tuple; the cache key is the same
        assert _plain(cfg) == _plain(expected), name
        cli.check_world(method, cfg, 1)
        assert train_jobs.total_steps(method, cfg) >= 1


def _plain(value):
    """Tuples as lists, all the way down (TOML has no tuples; the cache key is the same)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _runner_config(method: str, cfg: dict, extra: dict) -> dict:
    """The runner's own config for cfg's identity under the active profile (+ extra)."""
    if method == "reponet":
        identity = {k: cfg[k] for k in ("head", "classes", "feat_dim", "margin", "seed")}
        return reponet_experiments.Settings.for_profile(**identity, **extra).as_dict()
    if method == "fdl":
        return fdl_experiments.Settings.for_profile(k=cfg["k"], seed=cfg["seed"],
                                                    use_fdl=cfg["use_fdl"], **extra).as_dict()
    identity = {key: cfg[key] for key in train_jobs.IDENTITY["interchange"]}
    return interchange_experiments.Settings.for_profile(**identity, **extra).as_dict()


@pytest.mark.parametrize("method", sorted(BUNDLED))
def test_every_bundled_config_is_a_runner_profile_and_is_valid(method, monkeypatch):
    """Parsed and checked without training: the config of every bundled name is the runner's
    config of its profile, whatever profile is active, and fits one rank."""
    assert cli.bundled_configs(method) == sorted(BUNDLED[method])
    for name, (profile, extra) in BUNDLED[method].items():
        resolved = []
        for active in ("quick", "lab", "full"):
            monkeypatch.setenv("LABKIT_PROFILE", active)
            resolved.append(cli.resolve_config(method, name))
        assert resolved[0] == resolved[1] == resolved[2], f"{name} depends on LABKIT_PROFILE"
        monkeypatch.setenv("LABKIT_PROFILE", profile)
        assert _plain(resolved[0]) == _plain(_runner_config(method, resolved[0], extra)), name
        cli.check_world(method, resolved[0], 1)


def test_set_overrides_are_read_as_toml_and_none_is_none(tmp_path):
    assert cli.parse_set("lr=1e-4") == ("lr", 1e-4)
    assert cli.parse_set("widths=[8, 16]") == ("widths", [8, 16])
    assert cli.parse_set("loss=triplet") == ("loss", "triplet")
    cfg = cli.resolve_config("gsp", "quick", ["train_per_class=none", "loss=proxy_anchor"])
    assert cfg["train_per_class"] is None
    assert train_jobs.RUNNERS["gsp"].Settings.build(**cfg).transport_gamma == 0.5  # the loss's
    path = tmp_path / "mine.toml"
    path.write_text('loss = "triplet"\nvariant = "gap"\nm = 4\n')
    assert cli.resolve_config("gsp", str(path))["m"] == 4


@pytest.mark.parametrize(("args", "env", "message"), [
    (["foo"], {}, "unknown method 'foo'"),
    (["reponet", "--set", "bogus=1"], {}, "unknown settings ['bogus']; the settings of"),
    (["fdl", "--set", "ks=[3]"], {}, "unknown settings ['ks']; the settings of"),
    (["interchange", "--config", "quick-open", "--set", "open_seen=9"], {},
     "unknown settings ['open_seen']; the settings of"),
    (["interchange", "--set", "arch_options={widths=[8]}"], {},
     "arch_options maps architectures"),
    (["interchange", "--set", "arch=resnet"], {}, "unknown zoo architecture 'resnet'"),
    (["reponet", "--set", "head=center"], {}, "the angular margin applies to fixed polytopes"),
    (["reponet", "--set", "epochs=0"], {}, "the config trains no step: epochs must be >= 1"),
    (["fdl", "--set", "k=500"], {}, "k=500 per class is more than available"),
    (["reponet"], {"WORLD_SIZE": "3"}, "the global batch of 32 (batch_size) does not divide by "
                                       "the world size 3"),
    (["fdl"], {"WORLD_SIZE": "3"}, "the global batch of 16 (batch_size) does not divide"),
    (["interchange"], {"WORLD_SIZE": "5"}, "the global batch of 64 (batch_size) does not divide"),
    # 10 classes x k = 1 is a training set smaller than a batch: the batch is all of it
    (["fdl", "--set", "k=1"], {"WORLD_SIZE": "4"}, "a global batch of 10 (all of the training "
                                                   "set"),
    (["gsp", "--set", "bogus=1"], {}, "unknown settings ['bogus']; the settings of"),
    (["gsp", "--set", "lr=fast"], {}, "lr = 'fast' should be like its default"),
    (["gsp", "--config", "nope"], {}, "bundled ones are lab, paper, quick"),
    (["gsp", "--set", "dataset=cub200"], {"LABKIT_DATA": "{tmp}"}, "looked in {tmp}/CUB_200_2011"),
    (["gsp"], {"WORLD_SIZE": "3"}, "global batch of 32 (4 classes x 8) does not divide by the "
                                   "world size 3"),
    (["apfs"], {"WORLD_SIZE": "2"}, "classes_per_batch=3 does not divide by the world size 2"),
    (["gsp", "--set", "classes_per_batch=6"], {}, "its training split has 5 classes"),
    (["apfs", "--set", "classes_per_batch=6"], {}, "its training split has 5 classes"),
    (["apfs", "--resume"], {}, "--resume: no checkpoint.pt in"),
])
def test_bad_input_fails_before_training(args, env, message, tmp_path, monkeypatch, capsys):
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(tmp=tmp_path))
    out = tmp_path / "out"
    assert cli.main([*args, "--out", str(out)]) == 2
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not out.exists()


def test_an_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    train("gsp", "--steps", "1", "--out", str(out))
    assert cli.main(["gsp", "--out", str(out)]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert cli.main(["gsp", "--set", "lr=0.1", "--resume", "--out", str(out)]) == 2
    assert "config.lr differ" in capsys.readouterr().err


# ----------------------------------------------------------------------------- DDP

def _labels(method: str, args: list[str]) -> list[int]:
    sets = [a for flag, a in zip(args, args[1:], strict=False) if flag == "--set"]
    cfg = cli.resolve_config(method, "quick", sets)
    runner = train_jobs.RUNNERS[method]
    return runner.load_split(runner.Settings.build(**cfg))[0].labels.tolist()


@pytest.mark.parametrize("method", ["gsp", "apfs", "fdl"])
def test_two_ranks_take_disjoint_shares_and_the_one_process_steps(method, tmp_path, monkeypatch):
    """The ranks' shares make up each global batch, and the losses are one process's: for FDL
    with its dropout masks and batch norm statistics those of the global batch."""
    args = DDP_RUNS[method]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", "-m", "labkit.cli.main", "train", method, *args, "--out", str(ddp)]
    env = sub_env(tmp_path, **{cli.RECORD_ENV: "1", "LABKIT_CACHE": str(tmp_path / "ddp-cache")})
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    monkeypatch.setenv(cli.RECORD_ENV, "1")
    train(method, *args, "--out", str(single))

    one, two = losses(single), losses(ddp)
    assert sorted(one) == sorted(two) == list(range(1, len(one) + 1)) and len(one) >= 4
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=0), step
    whole = {r["step"]: r["indices"] for r in rows(single, "batches-rank0.jsonl")}
    parts = [{r["step"]: r["indices"] for r in rows(ddp, f"batches-rank{k}.jsonl")}
             for k in range(2)]
    for step, batch in whole.items():
        r0, r1 = parts[0][step], parts[1][step]
        assert len(r0) == len(r1) == len(batch) // 2
        assert not set(r0) & set(r1), "ranks shared a sample"
        assert Counter(r0 + r1) == Counter(batch), "the ranks' shares are not the global batch"
    if method == "fdl":  # plain batches: rank 0 the first half, rank 1 the second
        assert all(parts[0][s] + parts[1][s] == batch for s, batch in whole.items())
        # rank 0's per-epoch log is one process's
        key = {**cli.resolve_config(method, "quick"), "train_steps": 8}
        monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "ddp-cache"))
        apart = torch.load(cache_path("fdl_fewshot", key), weights_only=False)
        monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
        together = torch.load(cache_path("fdl_fewshot", key), weights_only=False)
        assert [r["epoch"] for r in apart.log] == [r["epoch"] for r in together.log] == \
            list(range(1, 9))
        for a, b in zip(apart.log, together.log, strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-6)
        return
    labels = _labels(method, args)
    for step in whole:
        r0, r1 = parts[0][step], parts[1][step]
        assert not {labels[i] for i in r0} & {labels[i] for i in r1}, "ranks shared a class"
    # rank 0 took the classes 0, 2, ... of the batch in batch order, rank 1 the others
    first = list(dict.fromkeys(labels[i] for i in whole[1]))
    assert [i for i in whole[1] if first.index(labels[i]) % 2 == 0] == parts[0][1]


# ----------------------------------------------------------------------------- resume

LONG_APFS = ["--set", "epochs=100"]  # a budget of 1,000 steps, so a signal lands mid-run


@pytest.fixture(scope="module")
def apfs_16_steps(tmp_path_factory) -> dict[int, float]:
    """Losses of an uninterrupted 16-step run of LONG_APFS: rounds of 5 steps with hard class
    mining. A cap does not change the steps before it, so shorter runs compare with its start."""
    out = tmp_path_factory.mktemp("apfs-16")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LABKIT_CACHE", str(out / "cache"))
        patch.setenv("LABKIT_DEVICE", "cpu")
        train("apfs", *LONG_APFS, "--steps", "16", "--out", str(out / "run"))
    return losses(out / "run")


def first(reference: dict[int, float], steps: int) -> dict[int, float]:
    assert steps <= max(reference)
    return {s: reference[s] for s in range(1, steps + 1)}


def test_gsp_stopped_at_4_and_resumed_to_8_equals_8_steps(tmp_path):
    sets = ["--set", "epochs=3"]  # 3 steps per epoch: the resumed run crosses epochs
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train("gsp", *sets, "--steps", "8", "--out", str(whole))
    train("gsp", *sets, "--steps", "4", "--out", str(parts))
    assert max(losses(parts)) == 4
    train("gsp", *sets, "--steps", "8", "--resume", "--out", str(parts))
    assert losses(parts) == losses(whole)
    assert [r["step"] for r in rows(parts) if "eval" in r] == [8]
    cfg = cli.resolve_config("gsp", "quick", sets[1::2])
    # capped runs are keyed with their cap, never as the config's full budget
    assert cache_path("gsp_run", {**cfg, "train_steps": 8}).exists()
    assert not cache_path("gsp_run", cfg).exists()


def test_reponet_center_loss_stopped_at_4_and_resumed_to_8_equals_8_steps(tmp_path, monkeypatch):
    """3 steps per epoch: the stop falls inside epoch 2, after one epoch's records; the centres
    and their own optimiser, the schedule and the probe snapshots come back."""
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    train("reponet", *CENTER, "--steps", "8", "--out", str(whole))
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "resumed-cache"))
    train("reponet", *CENTER, "--steps", "4", "--out", str(parts))
    saved = loop.load_checkpoint(parts)
    assert {"center", "side_optimizer0", "scheduler", "snapshots"} <= set(saved["state"])
    train("reponet", *CENTER, "--steps", "8", "--resume", "--out", str(parts))
    assert losses(parts) == losses(whole)
    key = {**cli.resolve_config("reponet", "quick", CENTER[1::2]), "train_steps": 8}
    resumed = torch.load(cache_path("reponet", key), weights_only=False)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    assert_same(resumed, torch.load(cache_path("reponet", key), weights_only=False))


def test_apfs_stopped_at_4_and_resumed_to_8_equals_8_steps(tmp_path, apfs_16_steps):
    parts = tmp_path / "parts"
    train("apfs", *LONG_APFS, "--steps", "4", "--out", str(parts))  # inside the first round
    train("apfs", *LONG_APFS, "--steps", "8", "--resume", "--out", str(parts))
    assert losses(parts) == first(apfs_16_steps, 8)


def test_sigkill_then_resume_loses_only_the_steps_since_the_checkpoint(tmp_path, apfs_16_steps):
    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "labkit.cli.main", "train", "apfs", *LONG_APFS,
               "--checkpoint-every", "4", "--out", str(killed)]
    process = subprocess.Popen(command, env=sub_env(tmp_path), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not (killed / loop.CHECKPOINT).exists():
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.01)
    process.kill()
    process.wait()
    checkpoint_step = loop.load_checkpoint(killed)["step"]
    kept = losses(killed)
    assert checkpoint_step % 4 == 0 and checkpoint_step <= max(kept) <= checkpoint_step + 4
    assert checkpoint_step < 16, "the kill came too late to resume anything"

    train("apfs", *LONG_APFS, "--steps", "16", "--resume", "--out", str(killed))
    resumed = losses(killed)
    assert all(resumed[s] == kept[s] for s in range(1, checkpoint_step + 1))
    assert resumed == apfs_16_steps


def test_sigterm_writes_a_checkpoint_and_resumes_exactly(tmp_path, apfs_16_steps):
    stopped = tmp_path / "stopped"

    def terminate_after_first_checkpoint() -> None:
        while not (stopped / loop.CHECKPOINT).exists():
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=terminate_after_first_checkpoint, daemon=True).start()
    status = cli.main(["apfs", *LONG_APFS, "--checkpoint-every", "3", "--out", str(stopped)])
    assert status == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored
    stop_step = loop.load_checkpoint(stopped)["step"]
    assert stop_step == max(losses(stopped)) and 3 <= stop_step <= 13
    train("apfs", *LONG_APFS, "--steps", str(stop_step + 3), "--resume", "--out", str(stopped))
    assert losses(stopped) == first(apfs_16_steps, stop_step + 3)


# ----------------------------------------------------------------------------- the cache

def assert_same(mine, theirs, where: str = "result") -> None:
    """Equal to the bit, tensors and dataclasses included, but for wall-clock durations."""
    if isinstance(mine, torch.Tensor):
        assert torch.equal(mine, theirs), where
    elif isinstance(mine, dict):
        assert set(mine) == set(theirs), (where, set(mine) ^ set(theirs))
        for key in set(mine) - DURATIONS:
            assert_same(mine[key], theirs[key], f"{where}.{key}")
    elif isinstance(mine, (list, tuple)):
        assert len(mine) == len(theirs), where
        for k, (a, b) in enumerate(zip(mine, theirs, strict=True)):
            assert_same(a, b, f"{where}[{k}]")
    elif hasattr(mine, "__dataclass_fields__"):
        assert type(mine) is type(theirs), where
        assert_same(vars(mine), vars(theirs), where)
    elif isinstance(mine, float) and math.isnan(mine):
        assert math.isnan(theirs), where
    else:
        assert mine == theirs, (where, mine, theirs)


def _runners_own_run(method: str, cfg: dict, monkeypatch) -> tuple:
    """(the runner's own result of cfg, trained now; a call of the runner's cached entry point
    that may not train)."""
    runner = train_jobs.RUNNERS[method]

    def no_training(*args, **kwargs):
        raise AssertionError("the runner trained instead of reading labkit train's run")

    settings = runner.Settings.build(**cfg)
    own = runner.EXPERIMENT.train(settings, False)
    monkeypatch.setattr(runner.EXPERIMENT, "train", no_training)
    return own, lambda: runner.run(settings)


@pytest.mark.parametrize(("method", "name"), [
    ("gsp", "quick"), ("apfs", "quick"), ("reponet", "quick"), ("fdl", "quick"),
    ("interchange", "quick"), ("interchange", "quick-open")])
def test_a_finished_run_is_the_runners_run_and_the_runner_finds_it(method, name, tmp_path,
                                                                   monkeypatch):
    """A quick config through `labkit train`, in one process: the runner's own run of it to
    the bit (but for durations), stored where the runner's cached entry point looks."""
    out = tmp_path / "run"
    train(method, "--config", name, "--out", str(out))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    cfg = cli.resolve_config(method, name)
    own, cached_run = _runners_own_run(method, cfg, monkeypatch)
    found = cached_run()
    assert_same(found, own)
    evals = [r["step"] for r in rows(out) if "eval" in r]
    assert evals == [json.loads((out / "run.json").read_text())["steps"]] == [max(losses(out))]


def test_shuffled_batches_are_fits_and_resume_from_a_pickle():
    sampler = loop.ShuffledBatches(10, 4, seed=7)
    assert (len(sampler), sampler.batch_size) == (2, 4)
    generator = torch.Generator().manual_seed(7)
    for _ in range(3):  # each epoch draws a new permutation, as fit's do
        assert list(sampler) == [b.tolist() for b in _batches(10, 4, generator, True)]
    copy = pickle.loads(pickle.dumps(sampler))
    assert list(copy) == list(sampler)
    small = loop.ShuffledBatches(3, 8, seed=0)  # fewer samples than a batch: one batch of all
    assert (len(small), small.batch_size, sorted(next(iter(small)))) == (1, 3, [0, 1, 2])
