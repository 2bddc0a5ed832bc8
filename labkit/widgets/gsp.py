"""Interactive GSP: sliders for the transport ratio μ and inverse temperature γ on one image.

The costs between the image's local features and the (trained) prototypes are computed once;
moving a slider only re-solves the transport (milliseconds) and re-draws the weight map and the
prototype maps. ``static_figure`` gives the same view as a plain figure, and ``weight_grid``
feeds ``labkit.viz.gsp.weight_map_slider``, which plays a grid of settings without a kernel.
The method is described in docs/methods/gsp.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch
from torch import nn

from labkit.core.models import eval_mode
from labkit.methods.gsp import GSP, gsp_transport, prototype_costs, transport_weights
from labkit.viz.gsp import overlay_weights, plot_weight_grid
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized


def weight_map(costs: torch.Tensor, mu: float, gamma: float, shape: tuple[int, int]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights (h, w) and prototype maps n·π (K, h, w) for costs (K, n) of one image."""
    if costs.dim() != 2 or costs.shape[1] != shape[0] * shape[1]:
        raise ValueError(f"costs must be (K, n) with n = h*w = {shape[0] * shape[1]}, got "
                         f"{tuple(costs.shape)}")
    with torch.no_grad():
        rho, pi = gsp_transport(costs[None].double(), mu, gamma)
    n = costs.shape[1]
    return (transport_weights(rho, mu)[0].reshape(shape).float(),
            (n * pi[0]).reshape(-1, *shape).float())


def image_costs(backbone: nn.Module, neck: GSP, image: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Costs (K, n) between one image's (C, H, W) local features and the prototypes, and (h, w)."""
    if not isinstance(neck, GSP):
        raise ValueError(f"neck must be a GSP layer, got {type(neck).__name__}")
    if image.dim() != 3:
        raise ValueError(f"image must be (C, H, W), got shape {tuple(image.shape)}")
    device = next(neck.parameters()).device
    with torch.no_grad(), eval_mode(backbone), eval_mode(neck):
        fmap = backbone(image[None].to(device)).float()
        costs = prototype_costs(neck.local_features(fmap), neck.prototypes.float())[0]
    return costs.cpu(), tuple(fmap.shape[2:])


def weight_grid(costs: torch.Tensor, shape: tuple[int, int], mus: Sequence[float],
                gammas: Sequence[float]) -> dict[tuple[float, float], torch.Tensor]:
    """Weights w_i (h, w) for every (μ, γ) pair of the grid, from costs (K, n) of one image."""
    if not mus or not gammas:
        raise ValueError("the grid needs at least one mu and one gamma")
    return {(float(m), float(g)): weight_map(costs, m, g, shape)[0] for m in mus for g in gammas}


def static_figure(costs: torch.Tensor, image: torch.Tensor, shape: tuple[int, int],
                  mus: Sequence[float] = (1.0, 0.5, 0.3, 0.1),
                  gammas: Sequence[float] = (1.0, 5.0, 20.0)):
    """The slider grid as one figure: weights for every (μ, γ) pair."""
    return plot_weight_grid(image, weight_grid(costs, shape, mus, gammas))


def selective_gamma(costs: torch.Tensor, spread: float = 10.0) -> float:
    """The γ at which the costs (K, n) of one image differ by about `spread` nats (γ times
    their standard deviation), rounded to two significant digits: the transport's softmax over
    features then separates them, so μ visibly changes which ones are kept. At γ·std ≪ 1 every
    μ gives nearly uniform weights, i.e. GAP."""
    std = float(costs.double().std())
    if not std > 0:
        raise ValueError("the costs are all equal: no γ makes the transport selective")
    return float(f"{spread / std:.2g}")


class TransportExplorer:
    """μ and γ sliders over one image; ``.widget`` is the ipywidgets box to display.

    gamma: the initial γ; None opens at `selective_gamma(costs)`, where moving μ shows.
    """

    def __init__(self, costs: torch.Tensor, image: torch.Tensor, shape: tuple[int, int],
                 mu: float = 0.3, gamma: float | None = None, top: int = 4) -> None:
        import ipywidgets as w

        self.costs, self.image, self.shape, self.top = costs, image, tuple(shape), top
        gamma = selective_gamma(costs) if gamma is None else gamma
        self.mu = w.FloatSlider(value=mu, min=0.05, max=1.0, step=0.05, description="μ",
                                continuous_update=False)
        self.gamma = w.FloatLogSlider(value=gamma, base=10, min=-1, max=3, step=0.05,
                                      description="γ", continuous_update=False)
        self.out = w.Output()
        self.mu.observe(lambda _: self.redraw(), names="value")
        self.gamma.observe(lambda _: self.redraw(), names="value")
        self.widget = w.VBox([w.HBox([self.mu, self.gamma]), self.out])
        self.redraw()
        # the values redraw reads, so the picture is the first state the widget shows
        first = self.figure(float(self.mu.value), float(self.gamma.value))
        with_picture(self.widget, first, "GSP transport explorer")

    def figure(self, mu: float, gamma: float):
        """The figure for one setting: input, weights, and the ``top`` busiest prototypes."""
        weights, maps = weight_map(self.costs, mu, gamma, self.shape)
        mass = maps.flatten(1).sum(1)
        order = torch.argsort(mass, descending=True)[: self.top].tolist()
        fig, axes = plt.subplots(1, 2 + len(order), figsize=(1.9 * (2 + len(order)), 2.3))
        overlay_weights(axes[0], self.image, torch.zeros(self.shape), alpha=0.0, title="input")
        overlay_weights(axes[1], self.image, weights, vmax=1.0 / mu,
                        title=f"weights (kept {100 * float((weights > 0.5).float().mean()):.0f}%)")
        vmax = float(maps[order].max()) if order else 1.0
        for ax, k in zip(axes[2:], order, strict=True):
            overlay_weights(ax, self.image, maps[k], vmax=vmax,
                            title=f"ω{k} {100 * float(mass[k] / mass.sum()):.0f}%")
        fig.suptitle(f"μ = {mu:.2f}, γ = {gamma:.2g}", fontsize=10)
        fig.tight_layout()
        return fig

    @serialized
    def redraw(self):
        """Re-solve for the sliders' values and re-draw; returns the figure."""
        fig = self.figure(float(self.mu.value), float(self.gamma.value))
        self.out.clear_output(wait=True)
        with self.out:
            from IPython.display import display

            display(fig)
        plt.close(fig)
        return fig


def transport_explorer(backbone: nn.Module, neck: GSP, image: torch.Tensor, mu: float = 0.3,
                       gamma: float | None = None) -> TransportExplorer:
    """Build a ``TransportExplorer`` for one image from a trained backbone + GSP neck."""
    costs, shape = image_costs(backbone, neck, image)
    return TransportExplorer(costs, image.cpu(), shape, mu=mu, gamma=gamma)
