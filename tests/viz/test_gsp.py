"""Tests for labkit.viz.gsp (figures build, shapes and scales are right, bad input is refused)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import gsp as vg  # noqa: E402


def test_upsample_keeps_constant_maps_and_size():
    up = vg.upsample(torch.full((7, 7), 0.5), (28, 28))
    assert up.shape == (28, 28)
    assert abs(up - 0.5).max() < 1e-6
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        vg.upsample(torch.ones(2, 3, 3), (4, 4))


def test_weight_grid_layout_and_scale():
    img = torch.rand(1, 28, 28)
    weights = {(m, g): torch.rand(7, 7) / m for m in (1.0, 0.3) for g in (1.0, 5.0)}
    fig = vg.plot_weight_grid(img, weights)
    axes = fig.axes
    assert len(axes) == 2 * 3  # 2 gammas x (input + 2 mus)
    # Panel colour scales run from 0 to 1/μ: columns are μ = 1 then μ = 0.3.
    heat = [im for ax in axes for im in ax.get_images() if im.get_alpha()]
    vmaxes = sorted({round(im.get_clim()[1], 6) for im in heat})
    assert vmaxes == [1.0, round(1 / 0.3, 6)]
    plt.close(fig)
    with pytest.raises(ValueError, match="empty"):
        vg.plot_weight_grid(img, {})


def test_prototype_maps_picks_the_busiest():
    maps = torch.zeros(5, 3, 3)
    maps[3] = 2.0
    maps[1] = 1.0
    fig = vg.plot_prototype_maps(torch.rand(3, 12, 12), maps, top=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1].startswith("ω3") and titles[2].startswith("ω1")
    plt.close(fig)


def test_overlays_recall_bars_toy():
    fig = vg.plot_weight_overlays(torch.rand(5, 1, 28, 28), torch.rand(5, 7, 7), 0.3,
                                  titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    plt.close(fig)
    with pytest.raises(ValueError, match="images"):
        vg.plot_weight_overlays(torch.rand(2, 1, 8, 8), torch.rand(3, 2, 2), 0.3)
    res = {"GAP": {f"recall@{k}": 0.5 + 0.05 * k for k in (1, 2, 4, 8)},
           "GSP": {f"recall@{k}": 0.6 + 0.04 * k for k in (1, 2, 4, 8)}}
    ax = vg.plot_recall_curves(res)
    assert [line.get_ydata()[0] for line in ax.get_lines()] == pytest.approx([55.0, 64.0])
    plt.close(ax.figure)
    ax = vg.plot_metric_bars({"triplet": {"gap": 0.5, "gsp": 0.6}}, metric="recall@1")
    assert [p.get_height() for p in ax.patches] == pytest.approx([50.0, 60.0])
    assert ax.get_ylim()[0] == pytest.approx(48.0)  # zoomed: 2 points below the lowest bar
    plt.close(ax.figure)
    errors = {"triplet": {"gap": 0.02, "gsp": float("nan")}}  # NaN: one seed, no error bar
    ax = vg.plot_metric_bars({"triplet": {"gap": 0.5, "gsp": 0.6}}, errors=errors, zoom=False)
    assert ax.get_ylim()[0] == 0.0
    plt.close(ax.figure)
    fig = vg.plot_toy_transport(torch.rand(10, 2), torch.rand(2, 2),
                                {1.0: torch.ones(10), 0.5: torch.rand(10)})
    assert len(fig.axes) == 2
    plt.close(fig)
