"""Interactive GSP: sliders for the transport ratio μ and inverse temperature γ on one image.

The costs between the image's local features and the (trained) prototypes are computed once;
moving a slider only re-solves the transport (milliseconds) and re-draws
`labkit.viz.gsp.transport_figure`, the explorer's static counterpart. The method is described
in docs/methods/gsp.md.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from labkit.core.models import Network
from labkit.methods.gsp import image_costs, selective_gamma
from labkit.viz.gsp import transport_figure
from labkit.widgets.picture import show_figure, with_picture
from labkit.widgets.sync import serialized


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

    def figure(self, mu: float, gamma: float) -> Figure:
        """The figure of one setting (`labkit.viz.gsp.transport_figure`)."""
        return transport_figure(self.costs, self.image, self.shape, mu, gamma, self.top)

    @serialized
    def redraw(self):
        """Re-solve for the sliders' values and re-draw; returns the figure."""
        fig = self.figure(float(self.mu.value), float(self.gamma.value))
        show_figure(self.out, fig)
        return fig


def transport_explorer(model: Network, image: torch.Tensor, mu: float = 0.3,
                       gamma: float | None = None) -> TransportExplorer:
    """A `TransportExplorer` for one image (C, H, W) of a trained GSP network."""
    costs, shape = image_costs(model.backbone, model.neck, image)
    return TransportExplorer(costs, image.cpu(), shape, mu=mu, gamma=gamma)
