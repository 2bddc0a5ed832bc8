"""Tests for labkit.viz.gsp (figures build, shapes and scales are right, bad input is refused)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import gsp as vg  # noqa: E402


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


def test_overlays_and_toy():
    fig = vg.plot_weight_overlays(torch.rand(5, 1, 28, 28), torch.rand(5, 7, 7), 0.3,
                                  titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6
    plt.close(fig)
    with pytest.raises(ValueError, match="images"):
        vg.plot_weight_overlays(torch.rand(2, 1, 8, 8), torch.rand(3, 2, 2), 0.3)
    fig = vg.plot_toy_transport(torch.rand(10, 2), torch.rand(2, 2),
                                {1.0: torch.ones(10), 0.5: torch.rand(10)})
    assert len(fig.axes) == 2
    plt.close(fig)


def _slider_weights():
    g = torch.Generator().manual_seed(0)
    return {(m, gm): torch.rand(7, 7, generator=g) / m for gm in (20.0, 1.0)
            for m in (0.3, 1.0, 0.1)}


def test_weight_map_slider_has_one_frame_per_setting_holding_its_map():
    import json

    import numpy as np

    from labkit.viz.playable import figure_json, slider_steps

    weights = _slider_weights()
    fig = vg.weight_map_slider(torch.rand(1, 28, 28), weights, active=(0.3, 20.0))
    # γ increasing, and μ from large to small within each γ
    order = [(1.0, 1.0), (0.3, 1.0), (0.1, 1.0), (1.0, 20.0), (0.3, 20.0), (0.1, 20.0)]
    assert slider_steps(fig) == [f"μ={m:g} γ={g:g}" for m, g in order]
    assert len(fig.frames) == len(weights)
    for frame, (mu, gamma) in zip(fig.frames, order, strict=True):
        picture, heat = frame.data
        assert picture.source.startswith("data:image/png;base64,")
        np.testing.assert_allclose(np.asarray(heat.z), weights[(mu, gamma)].numpy(), atol=1e-4)
        assert (heat.zmin, heat.zmax) == (0.0, pytest.approx(1.0 / mu))
        assert f"μ = {mu:g}, γ = {gamma:g}" in frame.layout.title.text
    # the figure opens at `active`: its traces and title are that frame's
    assert fig.layout.sliders[0].active == 4
    np.testing.assert_array_equal(np.asarray(fig.data[1].z), np.asarray(fig.frames[4].data[1].z))
    assert "μ = 0.3, γ = 20" in fig.layout.title.text
    # the map covers the image: 7 cells of 4 pixels centred from 1.5, pixels centred from 0
    assert (fig.data[1].x0, fig.data[1].dx) == (1.5, 4.0)
    assert len(json.dumps(figure_json(fig))) < 400_000


def test_weight_map_slider_counts_kept_cells_in_the_title():
    weights = {(0.5, 5.0): torch.tensor([[2.0, 0.0], [0.0, 2.0]]),
               (1.0, 5.0): torch.ones(2, 2)}
    fig = vg.weight_map_slider(torch.rand(1, 4, 4), weights)
    titles = [frame.layout.title.text for frame in fig.frames]
    assert "100% of cells kept" in titles[0] and "50% of cells kept" in titles[1]


def test_weight_map_slider_refuses_bad_input():
    weights = _slider_weights()
    image = torch.rand(1, 28, 28)
    with pytest.raises(ValueError, match="empty"):
        vg.weight_map_slider(image, {})
    with pytest.raises(ValueError, match="one shape"):
        vg.weight_map_slider(image, {**weights, (0.5, 1.0): torch.rand(3, 3)})
    with pytest.raises(ValueError, match="one shape"):
        vg.weight_map_slider(image, {(1.0, 1.0): torch.rand(7), (0.5, 1.0): torch.rand(7)})
    with pytest.raises(ValueError, match="mu must lie"):
        vg.weight_map_slider(image, {**weights, (1.5, 1.0): torch.rand(7, 7)})
    with pytest.raises(ValueError, match="active"):
        vg.weight_map_slider(image, weights, active=(0.5, 5.0))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        vg.weight_map_slider(torch.rand(28, 28), weights)
    with pytest.raises(ValueError, match="at least two"):  # one setting is no slider
        vg.weight_map_slider(image, {(0.3, 5.0): torch.rand(7, 7)})
