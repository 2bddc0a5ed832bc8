"""Tests for labkit.core.report: spreads, paired gains and tables, checked by hand."""

from __future__ import annotations

import math

import pytest

from labkit.core import report


def test_spread_is_mean_and_sample_std():
    s = report.spread([0.5, 0.7, 0.9])
    assert (s.mean, s.n) == (pytest.approx(0.7), 3) and s.std == pytest.approx(0.2)
    assert s.format(100, 1) == "70.0 ± 20.0"
    one = report.spread([0.25])
    assert (one.std, one.format(digits=2)) == (0.0, "0.25")  # one value: no ± part
    with pytest.raises(ValueError, match="no values"):
        report.spread([])


def test_paired_gain_pairs_by_seed_and_counts_wins():
    variant = {0: 0.80, 1: 0.70, 2: 0.90, 3: 0.5}
    reference = {0: 0.75, 1: 0.72, 2: 0.80}  # seed 3 has no partner
    gain = report.paired_gain(variant, reference)
    diffs = [0.05, -0.02, 0.10]
    assert gain.seeds == 3 and gain.wins == 2
    assert gain.gain == pytest.approx(sum(diffs) / 3)
    mean = sum(diffs) / 3
    assert gain.spread == pytest.approx(math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2))
    assert gain.format(100) == f"{100 * gain.gain:+.1f} ± {100 * gain.spread:.1f} (2/3 seeds)"
    assert report.paired_gain({0: 1.0}, {1: 0.0}) == report.PairedGain(0.0, 0.0, 0, 0)


def test_group_spreads_and_by_seed():
    rows = [{"loss": "a", "variant": v, "seed": s, "r": r}
            for v, s, r in [("x", 0, 0.1), ("x", 1, 0.3), ("y", 0, 0.5)]]
    stats = report.group_spreads(rows, ("loss", "variant"), ("r",))
    assert list(stats) == [("a", "x"), ("a", "y")]
    assert stats[("a", "x")]["r"].mean == pytest.approx(0.2) and stats[("a", "y")]["r"].n == 1
    assert report.by_seed(rows, "r", {"variant": "x"}) == {0: 0.1, 1: 0.3}


def test_text_table_aligns_and_formats_cells():
    text = report.text_table(["name", "value", "gain"],
                             [["a", report.spread([0.1, 0.3]), 1.23456],
                              ["longer", report.spread([0.5]), float("nan")]],
                             scale=100, digits=1)
    lines = text.splitlines()
    assert lines[0].split() == ["name", "value", "gain"] and set(lines[1]) == {"-"}
    assert lines[2].startswith("a      ") and lines[2].split()[1:] == ["20.0", "±", "14.1", "1.2"]
    assert lines[3].split() == ["longer", "50.0", "nan"]
    assert len({len(line) for line in lines}) == 1  # fixed width
