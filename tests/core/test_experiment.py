"""Tests for labkit.core.experiment: settings per profile, cached runs, sweeps, summaries and
claims, on a runner whose "training" is a formula of its settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from labkit.core import experiment
from labkit.core.experiment import Comparison

CALLS: list = []


@dataclass(frozen=True)
class ToySettings(experiment.Settings):
    method: str = "plain"
    seed: int = 0
    steps: int = 10
    widths: tuple[int, ...] = (4, 8)

    PROFILES: ClassVar = {"quick": {"steps": 2}, "full": {"steps": 100, "widths": (64,)}}

    def check(self) -> None:
        if self.method not in ("plain", "better"):
            raise ValueError(f"unknown method {self.method!r}")


class Toy(experiment.Experiment):
    cache_name = "toy"
    settings_type = ToySettings
    group_by = ("method",)
    metrics = ("score",)
    comparisons = (Comparison("better > plain", "method", "better", "plain", "score"),)

    def grid(self):
        return {"method": ("plain", "better"), "seed": (0, 1, 2)}

    def train(self, settings, progress):
        CALLS.append(settings)
        bonus = 0.1 if settings.method == "better" else 0.0
        return experiment.Result(settings, {"score": 0.5 + bonus + 0.01 * settings.seed
                                            - (0.15 if settings.seed == 2 and bonus else 0.0)})


@pytest.fixture
def toy(monkeypatch, tmp_path):
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path))
    monkeypatch.setenv("LABKIT_PROFILE", "quick")
    CALLS.clear()
    return Toy()


def test_settings_profiles_lists_and_unknown_keys(toy):
    assert ToySettings.for_profile().steps == 2
    assert ToySettings.for_profile("lab") == ToySettings()
    assert ToySettings.for_profile("full", seed=3).as_dict() == {
        "method": "plain", "seed": 3, "steps": 100, "widths": (64,)}
    assert ToySettings(widths=[4, 8]) == ToySettings()
    assert ToySettings().replace(seed=1).seed == 1
    with pytest.raises(ValueError, match="unknown settings .*'stepz'.*method, seed, steps, widths"):
        ToySettings.build(stepz=1)
    with pytest.raises(ValueError, match="unknown method"):
        ToySettings().replace(method="other")
    with pytest.raises(ValueError, match="unknown profile"):
        ToySettings.for_profile("huge")


def test_run_is_cached_and_typed(toy):
    first = toy.run()
    assert first.settings == ToySettings.for_profile() and len(CALLS) == 1
    assert toy.run(ToySettings.for_profile()).metrics == first.metrics and len(CALLS) == 1
    toy.run(ToySettings.for_profile(seed=1))
    assert len(CALLS) == 2
    with pytest.raises(TypeError, match="Settings"):
        toy.run({"seed": 0})


def test_sweep_summary_table_and_claims(toy):
    results = toy.sweep(progress=False)
    assert [(r.settings.method, r.settings.seed) for r in results] == [
        ("plain", 0), ("plain", 1), ("plain", 2), ("better", 0), ("better", 1), ("better", 2)]
    summary = toy.summary(results)
    assert summary.by == ("method",) and list(summary.stats) == [("plain",), ("better",)]
    assert summary.stats[("plain",)]["score"].mean == pytest.approx(0.51)
    lines = toy.table(summary).splitlines()
    assert lines[0].split() == ["method", "seeds", "score"]
    assert lines[2].split() == ["plain", "3", "51.0", "±", "1.0"]
    gain = toy.claims(summary)["better > plain"]["all"]
    assert gain.seeds == 3 and gain.wins == 2 and gain.gain == pytest.approx((0.1 + 0.1 - 0.05) / 3)
    only = toy.sweep(ToySettings.for_profile(method="better"), seed=(5,), progress=False)
    assert [r.settings.as_dict() for r in only] == [
        {"method": "better", "seed": 5, "steps": 2, "widths": (4, 8)}]
    assert toy.claims(toy.summary(only)) == {}  # no reference runs, no claim
