"""Tests for labkit.core.config: profiles, pick, device, seeding, paths."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from labkit.core import config


@pytest.mark.parametrize("value,expected", [("quick", "quick"), (" LAB ", "lab"), ("Full", "full"),
                                            ("", "lab")])
def test_profile_parsing(monkeypatch, value, expected):
    monkeypatch.setenv("LABKIT_PROFILE", value)
    assert config.profile() == expected


def test_profile_default_is_lab(monkeypatch):
    monkeypatch.delenv("LABKIT_PROFILE", raising=False)
    assert config.profile() == "lab"


def test_bad_profile_raises(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "huge")
    with pytest.raises(ValueError, match="huge"):
        config.profile()


def test_pick(monkeypatch):
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    assert config.pick(quick=1, lab=2, full=3) == 1
    monkeypatch.setenv("LABKIT_PROFILE", "lab")
    assert config.pick(quick=1, lab=2, full=3) == 2
    monkeypatch.setenv("LABKIT_PROFILE", "full")
    assert config.pick(quick=1, lab=2, full=3) == 3
    assert config.pick(quick=1, lab=2) == 2  # full falls back to lab
    assert config.pick(quick=1, lab=2, full=None) is None  # an explicit None is honoured


def test_seed_everything_is_deterministic():
    def draw():
        return random.random(), float(np.random.rand()), torch.rand(3)

    config.seed_everything(123)
    a = draw()
    config.seed_everything(123)
    b = draw()
    config.seed_everything(124)
    c = draw()
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    assert a[0] != c[0] and a[1] != c[1] and not torch.equal(a[2], c[2])


def test_seed_everything_accepts_large_seeds():
    config.seed_everything(2**40 + 5)
    x = np.random.rand()
    config.seed_everything(2**40 + 5)
    assert np.random.rand() == x


def test_device_override(monkeypatch):
    monkeypatch.setenv("LABKIT_DEVICE", "cpu")
    assert config.get_device() == torch.device("cpu")
    assert "device=cpu" in config.describe()


def test_device_cuda_unavailable(monkeypatch):
    monkeypatch.setenv("LABKIT_DEVICE", "cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA"):
        config.get_device()


def test_device_default(monkeypatch):
    monkeypatch.delenv("LABKIT_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert config.get_device() == torch.device("cpu")


def test_paths(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("LABKIT_DATA", str(tmp_path / "d"))
    assert config.cache_root() == tmp_path / "c"
    assert config.data_root() == tmp_path / "d"
    monkeypatch.delenv("LABKIT_CACHE")
    monkeypatch.delenv("LABKIT_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert config.cache_root() == Path(tmp_path / "x" / "labkit" / "runs")
    assert config.data_root() == Path(tmp_path / "x" / "labkit" / "data")


@pytest.mark.parametrize(("progress", "env", "shown"),
                         [(True, None, True), (True, "0", False), (False, None, False),
                          (True, "1", True)])
def test_progress_bar_honours_the_flag_and_labkit_progress(monkeypatch, progress, env, shown):
    if env is None:
        monkeypatch.delenv("LABKIT_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("LABKIT_PROGRESS", env)
    bar = config.progress_bar(range(3), progress, desc="t")
    assert bar.disable is (not shown)  # before iterating: a finished bar reports disabled
    assert list(bar) == [0, 1, 2]


def test_cpu_threads_caps_inside_the_block_and_restores():
    before = torch.get_num_threads()
    with config.cpu_threads(1) as inside:
        assert inside == torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with config.cpu_threads(None) as inside:
        assert inside == before


def test_small_cpu_thread_cap(monkeypatch):
    monkeypatch.setattr(config.os, "cpu_count", lambda: 2)
    assert config.small_cpu_thread_cap(torch.device("cpu")) == 1
    assert config.small_cpu_thread_cap(torch.device("cuda")) is None
    monkeypatch.setattr(config.os, "cpu_count", lambda: 32)
    assert config.small_cpu_thread_cap(torch.device("cpu")) is None
