"""Tests for labkit.widgets.gsp: the slider callback re-solves; its picture is its static figure."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from labkit.core.models import Network  # noqa: E402
from labkit.methods import gsp  # noqa: E402
from labkit.methods.gsp import GSP  # noqa: E402
from labkit.viz.gsp import transport_figure  # noqa: E402
from labkit.widgets import gsp as wg  # noqa: E402
from labkit.widgets.picture import figure_png  # noqa: E402


def _costs():
    return 2 * torch.rand(4, 9, generator=torch.Generator().manual_seed(0))


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


def test_explorer_opens_at_the_selective_gamma_and_builds_from_a_network():
    torch.manual_seed(0)
    costs = 0.9 + 0.1 * torch.randn(8, 49)
    ex = wg.TransportExplorer(costs, torch.rand(1, 28, 28), (7, 7))
    assert ex.gamma.value == pytest.approx(gsp.selective_gamma(costs), rel=0.06)  # the slider's step
    model = Network(nn.Conv2d(1, 4, 3, padding=1, stride=4), GSP(4, 3, 5))
    ex = wg.transport_explorer(model, torch.rand(1, 12, 12))
    assert ex.costs.shape == (5, 9) and ex.shape == (3, 3)
    fig = transport_figure(ex.costs, ex.image, ex.shape, 0.3, 5.0, top=2)
    assert len(fig.axes) == 4  # input, weights, two prototypes
    plt.close("all")


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
