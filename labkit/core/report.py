"""Numbers over seeds, the way every notebook reports them: mean ± sample std (`Spread`),
paired gains of one variant over another on the same seeds (`PairedGain`), and fixed-width
text tables.

A gain is read with its spread and the seeds it won: with three seeds a one-point gain and noise
look alike, so nothing here turns a gain into a yes/no verdict.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of `n` values (std 0 for one value)."""

    mean: float
    std: float
    n: int

    def format(self, scale: float = 1.0, digits: int = 3) -> str:
        """'mean ± std' in `scale` units (100: percent); the std is left out for one value."""
        text = f"{scale * self.mean:.{digits}f}"
        return text if self.n < 2 else f"{text} ± {scale * self.std:.{digits}f}"


def spread(values: Iterable[float]) -> Spread:
    """`Spread` of `values` (at least one)."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("spread of no values")
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Spread(statistics.fmean(values), std, len(values))


@dataclass(frozen=True)
class PairedGain:
    """A variant against a reference on the same seeds: gain = mean(variant - reference)."""

    gain: float  # mean over seeds of the paired difference, in the metric's units
    spread: float  # sample std of the paired differences (0 for one seed)
    wins: int  # seeds on which the variant scores strictly higher
    seeds: int  # seeds both were run with

    def format(self, scale: float = 1.0, digits: int = 1) -> str:
        """'+4.1 ± 1.1 (3/3 seeds)' in `scale` units."""
        return (f"{scale * self.gain:+.{digits}f} ± {scale * self.spread:.{digits}f} "
                f"({self.wins}/{self.seeds} seeds)")


def paired_gain(variant: Mapping[Any, float], reference: Mapping[Any, float]) -> PairedGain:
    """`variant` minus `reference`, both {seed: value}, over the seeds both have."""
    diffs = [float(variant[s]) - float(reference[s]) for s in variant if s in reference]
    if not diffs:
        return PairedGain(0.0, 0.0, 0, 0)
    gains = spread(diffs)
    return PairedGain(gains.mean, gains.std, sum(d > 0 for d in diffs), len(diffs))


def matches(row: Mapping[str, Any], where: Mapping[str, Any]) -> bool:
    """Whether `row` holds every key = value of `where`."""
    return all(row.get(key) == value for key, value in where.items())


def by_seed(rows: Sequence[Mapping[str, Any]], metric: str, where: Mapping[str, Any],
            seed_key: str = "seed") -> dict[Any, float]:
    """{seed: row[metric]} of the rows matching `where`."""
    return {row[seed_key]: float(row[metric]) for row in rows if matches(row, where)}


def group_spreads(rows: Sequence[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[str]
                  ) -> dict[tuple, dict[str, Spread]]:
    """{values of `by`: {metric: Spread over the group's rows}}, groups in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row[key] for key in by), []).append(row)
    return {key: {m: spread(r[m] for r in group) for m in metrics if all(m in r for r in group)}
            for key, group in groups.items()}


def _cell(value: Any, scale: float, digits: int) -> str:
    if isinstance(value, Spread):
        return value.format(scale, digits)
    if isinstance(value, PairedGain):
        return value.format(scale, digits)
    if isinstance(value, float):
        return f"{value:.{digits}f}" if math.isfinite(value) else str(value)
    return str(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[Any]], *, scale: float = 1.0,
               digits: int = 3) -> str:
    """A fixed-width plain-text table: the first column left-aligned, the others right-aligned;
    `Spread` and `PairedGain` cells in `scale` units with `digits` decimals."""
    cells = [[str(h) for h in header]] + [[_cell(v, scale, digits) for v in row] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                       for i, (c, w) in enumerate(zip(line, widths, strict=True)))
             for line in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])
