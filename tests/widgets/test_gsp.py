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
