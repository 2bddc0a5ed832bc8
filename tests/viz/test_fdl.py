"""Tests for labkit.viz.fdl: figures are built from records, overlays are exact blends."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import fdl as vfdl  # noqa: E402


def fake_rows() -> list[dict]:
    rows = []
    for method in ("classical", "fdl"):
        for k in (3, 10):
            for seed in (0, 1):
                base = 0.5 + 0.01 * k + 0.02 * seed + (0.05 if method == "fdl" else 0)
                rows.append({"method": method, "k": k, "seed": seed, "mean_member": base,
                             "soft_vote": base + 0.01, "hard_vote": base, "fusion": base + 0.02,
                             "iou_map": 0.7 if method == "classical" else 0.2,
                             "iou_cam": 0.3 if method == "classical" else 0.15})
    return rows


def test_overlay_is_alpha_blend_of_gray_and_jet():
    image = torch.full((1, 4, 4), 0.5)
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0
    out = vfdl.overlay(image, heat, alpha=0.4)
    jet = plt.get_cmap("jet")
    np.testing.assert_allclose(out[0, 0], 0.6 * 0.5 + 0.4 * np.array(jet(1.0)[:3]), rtol=1e-6)
    np.testing.assert_allclose(out[1, 1], 0.6 * 0.5 + 0.4 * np.array(jet(0.0)[:3]), rtol=1e-6)
    with pytest.raises(ValueError, match="same size"):
        vfdl.overlay(image, torch.zeros(3, 3))


def test_accuracy_and_overlap_figures_have_error_bars_per_method():
    fig = vfdl.plot_accuracy_vs_k(fake_rows())
    axes = fig.axes
    assert len(axes) == 4
    # one errorbar container per method per panel, means at the right place
    assert len(axes[0].containers) == 2
    line = axes[0].containers[1].lines[0]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [0.5 + 0.03 + 0.01 + 0.05, 0.5 + 0.1 + 0.01 + 0.05])
    plt.close(fig)
    fig = vfdl.plot_overlap_vs_k(fake_rows())
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="no sweep rows"):
        vfdl.plot_accuracy_vs_k([])


def test_cam_grid_and_descriptor_demo_and_tradeoff():
    image = torch.rand(1, 8, 8)
    cams = {"classical": torch.rand(3, 8, 8), "FDL": torch.rand(3, 8, 8)}
    preds = {"classical": torch.tensor([1, 2, 3]), "FDL": torch.tensor([1, 1, 1])}
    fig = vfdl.plot_cam_grid(image, cams, preds, label=1)
    assert len(fig.axes) == 2 * 4
    assert fig.axes[0].get_title() == "member 1: 1"
    plt.close(fig)
    fig = vfdl.plot_descriptor_demo([torch.rand(4, 5, 5) for _ in range(3)])
    assert len(fig.axes) == 6
    plt.close(fig)
    records = [{"lambda_cos": s, "lambda_euc": 10 * s,
                "metrics": {"iou_map": 0.7 - s / 10, "iou_cam": 0.3, "mean_member": 0.8,
                            "soft_vote": 0.85, "fusion": 0.86}} for s in (0.0, 0.1, 1.0)]
    fig = vfdl.plot_lambda_tradeoff(records, selected=1)
    assert "0.1 x lambda_euc" in fig.axes[0].get_xlabel()
    plt.close(fig)
    with pytest.raises(ValueError, match="cams is empty"):
        vfdl.plot_cam_grid(image, {})
