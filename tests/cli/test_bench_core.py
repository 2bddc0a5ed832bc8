"""Tiny-size smoke runs of `labkit bench retrieval` and `labkit bench fit` (numbers are not
asserted, only their kind, and that labkit agrees with pytorch-metric-learning)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from labkit.cli import bench_core


def test_sop_like_labels_have_the_requested_class_sizes():
    labels = bench_core.sop_like_labels(1000, seed=3)
    counts = np.bincount(labels)
    assert len(labels) == 1000 and len(counts) == round(1000 * 11316 / 60502)
    assert counts.min() >= 2 and counts.max() <= 12


def test_retrieval_smoke(capsys):
    pytest.importorskip("faiss")
    pytest.importorskip("pytorch_metric_learning")
    res = bench_core.retrieval(["--tiny"])
    out = capsys.readouterr().out
    assert "labkit" in out and "pml+faiss" in out and "agree" in out
    for side in ("labkit", "reference"):
        for key in ("seconds", "peak_rss_mib", "rss_after_data_mib", "peak_over_data_mib"):
            assert math.isfinite(res[side][key]) and res[side][key] >= 0
    for key in ("time_ratio", "memory_ratio", "max_metric_diff"):
        assert math.isfinite(res[key]) and res[key] >= 0
    assert {"recall@1", "map@r", "r_precision", "nmi"} <= set(res["labkit"]["metrics"])
    assert res["metrics_agree"] and res["max_metric_diff"] <= 1e-4


def test_fit_overhead_smoke(capsys):
    res = bench_core.fit_overhead(["--tiny"])
    assert "fit / bare" in capsys.readouterr().out
    for key in ("fit_ms_per_step", "bare_ms_per_step", "median_ratio"):
        assert math.isfinite(res[key]) and res[key] > 0
    assert len(res["ratios"]) == res["rounds"] == 2
    assert res["max_weight_diff"] < 1e-5  # the bare loop does the same work
