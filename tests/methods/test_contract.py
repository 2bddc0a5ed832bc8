"""The experiment contract holds for all five runners: the same public names, `Settings` and
`Result` dataclasses on the contract's bases, short runners, and every widget with its static
counterpart in viz."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from pathlib import Path

import pytest

from labkit.core import experiment

PAPERS = ("reponet", "fdl", "interchange", "gsp", "apfs")
NAMES = ("Settings", "Result", "EXPERIMENT", "run", "sweep", "summary", "table", "claims")
ROOT = Path(experiment.__file__).parents[1]


@pytest.mark.parametrize("paper", PAPERS)
def test_every_runner_exposes_the_contract(paper):
    runner = importlib.import_module(f"labkit.methods.{paper}_experiments")
    missing = [name for name in NAMES if not hasattr(runner, name)]
    assert not missing, f"{paper}_experiments lacks {missing}"
    assert issubclass(runner.Settings, experiment.Settings)
    assert dataclasses.is_dataclass(runner.Settings) and runner.Settings.__dataclass_params__.frozen
    assert issubclass(runner.Result, experiment.Result) and dataclasses.is_dataclass(runner.Result)
    assert isinstance(runner.EXPERIMENT, experiment.Experiment)
    assert runner.EXPERIMENT.settings_type is runner.Settings
    for name in ("run", "sweep", "summary", "table", "claims"):
        assert getattr(runner, name) == getattr(runner.EXPERIMENT, name), name
    for profile in ("quick", "lab", "full"):
        settings = runner.Settings.for_profile(profile)
        assert isinstance(settings, runner.Settings)
        assert runner.Settings.build(**settings.as_dict()) == settings  # as_dict is complete
    assert set(runner.EXPERIMENT.grid()) <= set(runner.Settings.names())


@pytest.mark.parametrize("paper", PAPERS)
def test_runners_are_short(paper):
    lines = (ROOT / "methods" / f"{paper}_experiments.py").read_text().count("\n")
    assert lines < 300, f"{paper}_experiments.py has {lines} lines"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@pytest.mark.parametrize("paper", PAPERS)
def test_every_widget_has_its_static_counterpart_in_viz(paper):
    """A widget class `FooExplorer` (or `FooPanel`) of `labkit.widgets.<paper>` draws with
    `labkit.viz.<paper>.foo_figure` (`foo_panel_figure`), which a reader without a kernel calls."""
    widgets = importlib.import_module(f"labkit.widgets.{paper}")
    viz = importlib.import_module(f"labkit.viz.{paper}")
    classes = [c for _, c in inspect.getmembers(widgets, inspect.isclass)
               if c.__module__ == widgets.__name__ and not c.__name__.startswith("_")]
    assert classes, f"labkit.widgets.{paper} has no widget class"
    for cls in classes:
        stem = _snake(cls.__name__.removesuffix("Explorer"))
        counterpart = f"{stem}_figure"
        assert callable(getattr(viz, counterpart, None)), \
            f"{cls.__name__} has no static counterpart labkit.viz.{paper}.{counterpart}"
        assert counterpart in inspect.getsource(cls), \
            f"{cls.__name__} does not draw with labkit.viz.{paper}.{counterpart}"
