"""The one experiment contract of the five runners (`labkit.methods.<paper>_experiments`).

Every runner exposes the same names, bound from one `Experiment` subclass:

- `Settings`: a frozen dataclass; its field defaults are the `lab` profile, `PROFILES` holds
  what `quick` and `full` change, and `Settings.for_profile()` gives the active profile's.
- `Result`: a dataclass, what one run measured (`settings`, `metrics`, and the method's own).
- `run(settings) -> Result`: cached by the settings (`labkit.core.cache`).
- `sweep(settings, **axes) -> [Result]`: the runs over the product of some fields' values
  (the profile's comparison by default).
- `summary(results) -> Summary`: mean ± std over seeds per group; `table(summary) -> str`.
- `claims(summary)`: each comparison the paper makes, as paired gains over seeds
  (`labkit.core.report.PairedGain`), per group of the other fields.

A runner overrides `train` (one run, uncached) and names its groups, metrics and comparisons,
as each CAM of pytorch-grad-cam overrides one method of a shared base.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

from labkit.core import config
from labkit.core.cache import cached
from labkit.core.report import PairedGain, Spread, by_seed, group_spreads, paired_gain, text_table

S = TypeVar("S", bound="Settings")
R = TypeVar("R", bound="Result")


@dataclass(frozen=True)
class Settings:
    """Base of a runner's settings. Lists become tuples, so settings from TOML or JSON equal
    those written in code; a subclass validates its values in `check`."""

    PROFILES: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(value, list):
                object.__setattr__(self, item.name, tuple(value))
        self.check()

    def check(self) -> None:
        """Raise ValueError on a bad value (subclasses)."""

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The field names, in order."""
        return tuple(item.name for item in dataclasses.fields(cls))

    @classmethod
    def build(cls: type[S], **values: Any) -> S:
        """Settings from keyword values; an unknown key fails, naming the valid ones."""
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown settings {unknown}; the settings of {cls.__module__} are "
                             f"{', '.join(cls.names())}")
        return cls(**values)

    @classmethod
    def for_profile(cls: type[S], profile: str | None = None, **changes: Any) -> S:
        """The profile's settings (default: `LABKIT_PROFILE`), with `changes` on top."""
        name = profile or config.profile()
        if name not in config.PROFILES:
            raise ValueError(f"unknown profile {name!r}; use one of {config.PROFILES}")
        return cls.build(**{**cls.PROFILES.get(name, {}), **changes})

    def replace(self: S, **changes: Any) -> S:
        """A copy with `changes` (checked like `build`)."""
        return type(self).build(**{**self.as_dict(), **changes})

    def as_dict(self) -> dict[str, Any]:
        """{field: value}: the cache key, and what `labkit train` writes to run.json."""
        return {name: getattr(self, name) for name in self.names()}


@dataclass
class Result:
    """Base of a runner's result: its settings and its headline numbers."""

    settings: Settings
    metrics: dict[str, float]


@dataclass
class Summary:
    """Results grouped by the fields `by`, their metrics as mean ± std over seeds; `rows` keeps
    one row per run (the group fields, the seed and the metrics) for paired comparisons."""

    by: tuple[str, ...]
    rows: list[dict[str, Any]]
    stats: dict[tuple, dict[str, Spread]]


@dataclass(frozen=True)
class Comparison:
    """A claim: `field` = `variant` beats `field` = `reference` on `metric`."""

    name: str
    field: str
    variant: Any
    reference: Any
    metric: str


class Experiment(Generic[S, R]):
    """A runner. Subclasses set the class attributes and override `train` (and `grid`)."""

    cache_name: ClassVar[str]  # the cache namespace of `run`
    settings_type: ClassVar[type]
    group_by: ClassVar[tuple[str, ...]] = ()  # fields that tell a summary's groups apart
    metrics: ClassVar[tuple[str, ...]] = ()  # the `Result.metrics` a summary averages
    comparisons: ClassVar[tuple[Comparison, ...]] = ()
    table_scale: ClassVar[float] = 100.0  # tables in percent
    table_digits: ClassVar[int] = 1

    def train(self, settings: S, progress: bool) -> R:
        """One run of `settings`, not cached."""
        raise NotImplementedError

    def grid(self) -> dict[str, Sequence[Any]]:
        """The axes of the profile's comparison (`sweep` without axes)."""
        return {"seed": (0,)}

    def run(self, settings: S | None = None, *, progress: bool = False) -> R:
        """The cached run of `settings` (default: the active profile's)."""
        settings = settings if settings is not None else self.settings_type.for_profile()
        if not isinstance(settings, self.settings_type):
            raise TypeError(f"run takes {self.settings_type.__module__}.Settings, got "
                            f"{type(settings).__name__}")
        return cached(self.cache_name, settings.as_dict(), lambda: self.train(settings, progress))

    def sweep(self, settings: S | None = None, *, progress: bool = True,
              **axes: Sequence[Any]) -> list[R]:
        """`run` over the product of `axes` (field -> values) on top of `settings`; without
        axes, the profile's comparison (`grid`)."""
        base = settings if settings is not None else self.settings_type.for_profile()
        axes = axes or self.grid()
        combos = [dict(zip(axes, values, strict=True))
                  for values in itertools.product(*axes.values())]
        return [self.run(base.replace(**combo))
                for combo in config.progress_bar(combos, progress, desc=self.cache_name,
                                                 leave=False)]

    def row(self, result: R) -> dict[str, Any]:
        """One run as a flat row: the group fields, the seed and the metrics."""
        keys = (*self.group_by, "seed")
        return {**{k: getattr(result.settings, k) for k in keys}, **result.metrics}

    def summary(self, results: Sequence[R]) -> Summary:
        """Mean ± std over seeds of `metrics`, per group of `group_by`."""
        rows = [self.row(r) for r in results]
        return Summary(self.group_by, rows, group_spreads(rows, self.group_by, self.metrics))

    def table(self, summary: Summary, metrics: Sequence[str] | None = None) -> str:
        """One line per group: its fields, the seeds, each metric's mean ± std (default: every
        one of `metrics` the runs have)."""
        metrics = [m for m in (metrics or self.metrics)
                   if any(m in s for s in summary.stats.values())]
        lines = [[*key, next(iter(stats.values())).n if stats else 0,
                  *[stats.get(m, "") for m in metrics]]
                 for key, stats in summary.stats.items()]
        return text_table([*summary.by, "seeds", *metrics], lines, scale=self.table_scale,
                          digits=self.table_digits)

    def claims(self, summary: Summary) -> dict[str, dict[str, PairedGain]]:
        """{comparison: {context: paired gain over seeds}}; the context names the values of
        the other group fields ("all" when there are none)."""
        out: dict[str, dict[str, PairedGain]] = {}
        for c in self.comparisons:
            others = [k for k in summary.by if k != c.field]
            contexts = dict.fromkeys(tuple(row[k] for k in others) for row in summary.rows)
            for context in contexts:
                where = dict(zip(others, context, strict=True))
                gain = paired_gain(by_seed(summary.rows, c.metric, {**where, c.field: c.variant}),
                                   by_seed(summary.rows, c.metric, {**where, c.field: c.reference}))
                if gain.seeds:
                    label = ", ".join(str(v) for v in context) or "all"
                    out.setdefault(c.name, {})[label] = gain
        return out


class RetrievalExperiment(Experiment):
    """A zero-shot retrieval comparison (GSP, APFS): groups (loss, variant), recall@K, MAP@R
    and NMI on the unseen classes; the profile compares every variant for `losses` (quick: the
    first) over seeds 0, 1, 2 (quick: 0)."""

    group_by = ("loss", "variant")
    metrics = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r", "nmi")
    losses: ClassVar[tuple[str, ...]] = ()
    variants: ClassVar[tuple[str, ...]] = ()

    def grid(self) -> dict[str, Sequence[Any]]:
        return {"loss": config.pick(quick=self.losses[:1], lab=self.losses),
                "variant": self.variants, "seed": config.pick(quick=(0,), lab=(0, 1, 2))}


def bind(experiment: Experiment) -> tuple[Callable, ...]:
    """(run, sweep, summary, table, claims) of `experiment`: a runner's module-level names."""
    return (experiment.run, experiment.sweep, experiment.summary, experiment.table,
            experiment.claims)
