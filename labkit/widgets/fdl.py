"""Interactive FDL views: pick a test image and compare the members' Grad-CAMs; move the FDL
weight and watch attention spread apart (and what it costs in accuracy).

Both re-draw recorded CAMs (`fdl_experiments.cam_records`), so they are instant, with their
static counterparts `labkit.viz.fdl.cam_figure` and `lambda_figure`, and carry a picture of
their first state (`with_picture`) for stored notebooks. `labkit.viz.fdl.member_cam_slider` and
`lambda_cam_slider` are the same views as sliders that play without a kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from matplotlib.figure import Figure

from labkit.viz.fdl import cam_figure, check_records, lambda_figure
from labkit.widgets.picture import show_figure, with_picture
from labkit.widgets.sync import serialized

if TYPE_CHECKING:
    from labkit.methods.fdl_experiments import CamRecord

__all__ = ["CamExplorer", "LambdaExplorer"]


class CamExplorer:
    """A test-image slider over `cam_figure`: rows = the records (classical, FDL), columns =
    members; `.widget` is the box to display."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, records: Sequence[CamRecord],
                 class_names: Sequence[str] | None = None) -> None:
        import ipywidgets as w

        check_records(images, labels, records)
        self.images, self.labels, self.records = images, labels, list(records)
        self.class_names = class_names
        self.slider = w.IntSlider(0, 0, images.shape[0] - 1, description="test image",
                                  continuous_update=False)
        self.out = w.Output()
        self.slider.observe(lambda _: self.redraw(), names="value")
        self.redraw()
        self.widget = with_picture(w.VBox([self.slider, self.out]), self.figure(0),
                                   "member Grad-CAM explorer")

    def figure(self, index: int) -> Figure:
        """`labkit.viz.fdl.cam_figure` of test image `index`."""
        return cam_figure(self.images, self.labels, self.records, index, self.class_names)

    @serialized
    def redraw(self) -> None:
        show_figure(self.out, self.figure(self.slider.value))


class LambdaExplorer:
    """A slider over the recorded FDL weights and one over the test images, drawing
    `lambda_figure`: the overlap/accuracy trade-off with the chosen weight marked, and that
    ensemble's member CAMs of the image; `.widget` is the box to display."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, records: Sequence[CamRecord],
                 class_names: Sequence[str] | None = None) -> None:
        import ipywidgets as w

        check_records(images, labels, records)
        self.images, self.labels, self.records = images, labels, list(records)
        self.class_names = class_names
        self.weight = w.SelectionSlider(
            options=[(r.settings.label, i) for i, r in enumerate(self.records)], value=0,
            description="FDL weight", continuous_update=False, layout=w.Layout(width="420px"))
        self.image = w.IntSlider(0, 0, images.shape[0] - 1, description="test image",
                                 continuous_update=False)
        self.out = w.Output()
        for control in (self.weight, self.image):
            control.observe(lambda _: self.redraw(), names="value")
        self.redraw()
        self.widget = with_picture(w.VBox([w.HBox([self.weight, self.image]), self.out]),
                                   self.figure(0, 0), "FDL weight explorer")

    def figure(self, which: int, index: int) -> Figure:
        """`labkit.viz.fdl.lambda_figure` of record `which` and test image `index`."""
        return lambda_figure(self.images, self.labels, self.records, which, index,
                             self.class_names)

    @serialized
    def redraw(self) -> None:
        show_figure(self.out, self.figure(self.weight.value, self.image.value))
