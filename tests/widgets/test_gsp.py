"""Tests for labkit.widgets.gsp: the slider callback re-solves; the static figure matches."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from labkit.methods.gsp import GSP, gsp_transport, transport_weights  # noqa: E402
from labkit.widgets import gsp as wg  # noqa: E402
from labkit.widgets.picture import figure_png  # noqa: E402


def _costs():
    return 2 * torch.rand(4, 9, generator=torch.Generator().manual_seed(0))


def test_weight_map_matches_solver():
    c = _costs()
    w, maps = wg.weight_map(c, 0.3, 5.0, (3, 3))
    rho, pi = gsp_transport(c[None].double(), 0.3, 5.0)
    torch.testing.assert_close(w, transport_weights(rho, 0.3)[0].reshape(3, 3).float())
    assert maps.shape == (4, 3, 3)
    torch.testing.assert_close(maps.sum(0), 0.3 * w)
    with pytest.raises(ValueError, match="n = h\\*w"):
        wg.weight_map(c, 0.3, 5.0, (2, 2))


def test_explorer_redraws_on_slider_change():
    ex = wg.TransportExplorer(_costs(), torch.rand(1, 12, 12), (3, 3), mu=0.3, gamma=5.0)
    first = ex.figure(0.3, 5.0)
    ex.mu.value = 1.0  # fires the observer, which re-solves and re-draws
    fig = ex.redraw()
    assert "μ = 1.00" in fig._suptitle.get_text()
    # at μ = 1 every feature keeps weight 1 (GAP)
    heat = fig.axes[1].get_images()[1].get_array()
    assert abs(heat - 1.0).max() < 1e-5
    plt.close("all")
    del first


def test_image_costs_and_static_figure():
    torch.manual_seed(0)
    backbone = nn.Conv2d(1, 4, 3, padding=1, stride=4)
    neck = GSP(4, 3, 5)
    image = torch.rand(1, 12, 12)
    costs, shape = wg.image_costs(backbone, neck, image)
    assert costs.shape == (5, 9) and shape == (3, 3)
    assert costs.min() >= 0 and costs.max() <= 2
    fig = wg.static_figure(costs, image, shape, mus=(1.0, 0.3), gammas=(5.0,))
    assert len(fig.axes) == 3
    plt.close(fig)
    ex = wg.transport_explorer(backbone, neck, image)
    assert ex.widget is not None
    plt.close("all")
    with pytest.raises(ValueError, match="GSP"):
        wg.image_costs(backbone, nn.Identity(), image)


def test_explorer_opens_where_mu_changes_the_kept_share():
    # costs spread as narrowly as a trained layer's (std ~0.1): at γ = 5 every μ keeps all cells
    torch.manual_seed(0)
    costs = 0.9 + 0.1 * torch.randn(8, 49)
    kept = {}
    for gamma in (5.0, wg.selective_gamma(costs)):
        kept[gamma] = [float((wg.weight_map(costs, mu, gamma, (7, 7))[0] > 0.5).float().mean())
                       for mu in (0.15, 0.85)]
    assert kept[5.0] == [1.0, 1.0]
    assert kept[wg.selective_gamma(costs)][0] < 0.7 < kept[wg.selective_gamma(costs)][1]
    ex = wg.TransportExplorer(costs, torch.rand(1, 28, 28), (7, 7))
    assert ex.gamma.value == pytest.approx(wg.selective_gamma(costs), rel=0.06)  # the slider's step
    with pytest.raises(ValueError, match="all equal"):
        wg.selective_gamma(torch.ones(3, 4))


def test_weight_grid_feeds_the_slider_with_weight_map_per_setting():
    import numpy as np

    from labkit.viz.gsp import weight_map_slider

    costs = _costs()
    mus, gammas = (1.0, 0.5, 0.2), (2.0, wg.selective_gamma(costs))
    grid = wg.weight_grid(costs, (3, 3), mus, gammas)
    assert set(grid) == {(m, g) for m in mus for g in gammas}
    fig = weight_map_slider(torch.rand(1, 12, 12), grid)
    assert len(fig.frames) == len(mus) * len(gammas)
    order = sorted(grid, key=lambda key: (key[1], -key[0]))  # the slider's step order
    for frame, (mu, gamma) in zip(fig.frames, order, strict=True):
        assert frame.name == f"μ={mu:g} γ={gamma:g}"
        expected = wg.weight_map(costs, mu, gamma, (3, 3))[0].numpy()
        np.testing.assert_allclose(np.asarray(frame.data[1].z), expected, atol=1e-4)
    # different settings give different maps, so moving the slider changes the data
    assert not np.allclose(fig.frames[-1].data[1].z, fig.frames[0].data[1].z)
    with pytest.raises(ValueError, match="at least one"):
        wg.weight_grid(costs, (3, 3), (), gammas)
    with pytest.raises(ValueError, match="mu"):
        wg.weight_grid(costs, (3, 3), (1.5,), gammas)


def test_explorer_carries_a_picture_of_its_first_state():
    import base64

    ex = wg.TransportExplorer(_costs(), torch.rand(1, 12, 12), (3, 3), mu=0.3, gamma=5.0)
    bundle = ex.widget._repr_mimebundle_()
    png = base64.b64decode(bundle["image/png"])
    assert png == figure_png(ex.figure(0.3, 5.0))  # the first state, drawn as redraw draws it
    assert png != figure_png(ex.figure(1.0, 5.0))
    assert "GSP transport explorer" in bundle["text/plain"]
    assert "VBox" not in bundle["text/plain"] and "children" not in bundle["text/plain"]
    plt.close("all")
