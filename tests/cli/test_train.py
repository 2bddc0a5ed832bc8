"""`labkit train`: configs, bad input, DDP against one process, exact resume, kills, the cache.

Runs on the CPU (gloo). The single-process runs go through `labkit.cli.train.main` in this
process; the two-rank runs through torchrun (`python -m torch.distributed.run --standalone`),
the killed one as a plain subprocess.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from labkit.cli import train as cli
from labkit.core import loop
from labkit.core.cache import cache_path
from labkit.methods import train_jobs

PROFILE_OF = {"quick": "quick", "lab": "lab", "paper": "full"}
# small runs of each method that two ranks can share (apfs quick has 3 classes per batch)
DDP_RUNS = {"gsp": ["--set", "batches_per_epoch=4"],
            "apfs": ["--set", "classes_per_batch=4", "--steps", "6"]}


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
        expected = runner.run_config(cfg["loss"], cfg["variant"], cfg["seed"])
        # a TOML array is a list where the runner writes a tuple; the cache key is the same
        assert cfg == {k: list(v) if isinstance(v, tuple) else v for k, v in expected.items()}
        cli.check_world(method, cfg, 1)
        assert train_jobs.total_steps(method, cfg) >= 1


def test_set_overrides_are_read_as_toml_and_none_is_none(tmp_path):
    assert cli.parse_set("lr=1e-4") == ("lr", 1e-4)
    assert cli.parse_set("widths=[8, 16]") == ("widths", [8, 16])
    assert cli.parse_set("loss=triplet") == ("loss", "triplet")
    cfg = cli.resolve_config("gsp", "quick", ["train_per_class=none", "loss=proxy_anchor"])
    assert cfg["train_per_class"] is None
    assert cfg["gamma"] == 0.5  # run_config's rule for proxy losses still applies
    path = tmp_path / "mine.toml"
    path.write_text('loss = "triplet"\nvariant = "gap"\nm = 4\n')
    assert cli.resolve_config("gsp", str(path))["m"] == 4


@pytest.mark.parametrize(("args", "env", "message"), [
    (["foo"], {}, "unknown method 'foo'"),
    (["reponet"], {}, "not yet supported by labkit train"),
    (["gsp", "--set", "bogus=1"], {}, "unknown config keys ['bogus']; known: ["),
    (["gsp", "--set", "lr=fast"], {}, "lr = 'fast' should be like its default"),
    (["gsp", "--config", "nope"], {}, "bundled ones are lab, paper, quick"),
    (["gsp", "--set", "dataset=cub200"], {"LABKIT_DATA": "{tmp}"}, "looked in {tmp}/CUB_200_2011"),
    (["gsp"], {"WORLD_SIZE": "3"}, "global batch of 32 (4 classes x 8) does not divide by the "
                                   "world size 3"),
    (["apfs"], {"WORLD_SIZE": "2"}, "classes_per_batch=3 does not divide by the world size 2"),
    (["gsp", "--set", "m=41"], {}, "smallest training class has 40 samples"),
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
    return train_jobs.RUNNERS[method].load_split(cfg)[0].labels.tolist()


@pytest.mark.parametrize("method", ["gsp", "apfs"])
def test_two_ranks_take_disjoint_classes_and_the_one_process_steps(method, tmp_path, monkeypatch):
    args = DDP_RUNS[method]
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
               "2", "-m", "labkit.cli.main", "train", method, *args, "--out", str(ddp)]
    done = subprocess.run(command, env=sub_env(tmp_path, **{cli.RECORD_ENV: "1"}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    monkeypatch.setenv(cli.RECORD_ENV, "1")
    train(method, *args, "--out", str(single))

    one, two = losses(single), losses(ddp)
    assert sorted(one) == sorted(two) == list(range(1, len(one) + 1)) and len(one) >= 4
    for step in one:
        assert two[step] == pytest.approx(one[step], rel=1e-5, abs=0), step
    labels = _labels(method, args)
    whole = {r["step"]: r["indices"] for r in rows(single, "batches-rank0.jsonl")}
    parts = [{r["step"]: r["indices"] for r in rows(ddp, f"batches-rank{k}.jsonl")}
             for k in range(2)]
    for step, batch in whole.items():
        r0, r1 = parts[0][step], parts[1][step]
        assert len(r0) == len(r1) == len(batch) // 2
        assert not set(r0) & set(r1), "ranks shared a sample"
        assert Counter(r0 + r1) == Counter(batch), "the ranks' shares are not the global batch"
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

@pytest.mark.parametrize("method", ["gsp", "apfs"])
def test_a_finished_run_is_the_runners_run_and_the_runner_finds_it(method, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(method, "--out", str(out))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    runner = train_jobs.RUNNERS[method]
    cfg = cli.resolve_config(method, "quick")
    own = runner.train_run(runner.run_config(cfg["loss"], cfg["variant"], cfg["seed"]))

    def no_training(*args, **kwargs):
        raise AssertionError("the runner trained instead of reading labkit train's run")

    monkeypatch.setattr(runner, "train_run", no_training)
    found = runner.run(cfg["loss"], cfg["variant"], cfg["seed"])
    assert found["metrics"] == own["metrics"]  # one process: the runner's fit, step for step
    assert [r["loss"] for r in found["history"]] == pytest.approx(
        [r["loss"] for r in own["history"]], rel=1e-6)
    assert set(found) == set(own)
    assert [r["step"] for r in rows(out) if "eval" in r] == [train_jobs.total_steps(method, cfg)]
