"""Interactive FDL views: pick a test image and compare the members' Grad-CAMs; move the FDL
weight and watch attention spread apart (and what it costs in accuracy).

Both re-draw from recorded CAMs (`fdl_experiments.cam_records`), so they are instant. Each has a
`render(...)` method that returns the Figure(s) the widget shows, which is what the tests call
(callbacks never fire without a front end). Each widget's display carries a picture of its first
state (`with_picture`), so a stored notebook shows a figure; `labkit.viz.fdl.member_cam_slider`
and `lambda_cam_slider` are the same views as sliders that play without a kernel.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import display
from matplotlib.figure import Figure

from labkit.viz.fdl import plot_cam_grid, plot_lambda_tradeoff, record_name
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized

__all__ = ["CamExplorer", "LambdaExplorer", "record_name"]


def _check(images: torch.Tensor, records: Sequence[Mapping[str, Any]]) -> None:
    if not records:
        raise ValueError("records is empty: pass fdl_experiments.cam_records(...)")
    for r in records:
        if r["cams"].shape[1] != images.shape[0]:
            raise ValueError(f"records hold CAMs of {r['cams'].shape[1]} images but "
                             f"{images.shape[0]} images were given")


class CamExplorer:
    """A test-image slider over a CAM grid: rows = the records (classical, FDL), columns = members."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 records: Sequence[Mapping[str, Any]], class_names: Sequence[str] | None = None) -> None:
        _check(images, records)
        self.images, self.labels, self.records = images, labels, list(records)
        self.class_names = class_names
        self.slider = widgets.IntSlider(0, 0, images.shape[0] - 1, description="test image",
                                        continuous_update=False)
        self.out = widgets.Output()
        self.slider.observe(lambda change: self._draw(change["new"]), names="value")
        self._draw(0)
        self.widget = with_picture(widgets.VBox([self.slider, self.out]), self.render(0),
                                   "member Grad-CAM explorer")

    def render(self, index: int) -> Figure:
        if not 0 <= index < self.images.shape[0]:
            raise ValueError(f"image index must be in 0..{self.images.shape[0] - 1}, got {index}")
        cams = {record_name(r): r["cams"][:, index] for r in self.records}
        preds = {record_name(r): r["preds"][:, index] for r in self.records}
        return plot_cam_grid(self.images[index], cams, preds, int(self.labels[index]), self.class_names)

    @serialized
    def _draw(self, index: int) -> None:
        with self.out:
            self.out.clear_output(wait=True)
            fig = self.render(index)
            display(fig)
            plt.close(fig)


class LambdaExplorer:
    """A slider over the recorded FDL weights: the overlap/accuracy trade-off with the chosen weight
    marked, and the CAMs of that ensemble's members for one test image."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor,
                 records: Sequence[Mapping[str, Any]], class_names: Sequence[str] | None = None) -> None:
        _check(images, records)
        self.images, self.labels, self.records = images, labels, list(records)
        self.class_names = class_names
        self.weight = widgets.SelectionSlider(
            options=[(record_name(r), i) for i, r in enumerate(self.records)], value=0,
            description="FDL weight", continuous_update=False,
            layout=widgets.Layout(width="420px"))
        self.image = widgets.IntSlider(0, 0, images.shape[0] - 1, description="test image",
                                       continuous_update=False)
        self.out = widgets.Output()
        for control in (self.weight, self.image):
            control.observe(lambda change: self._draw(), names="value")
        self._draw()
        self.widget = with_picture(widgets.VBox([widgets.HBox([self.weight, self.image]), self.out]),
                                   list(self.render(0, 0)), "FDL weight explorer")

    def render(self, which: int, index: int) -> tuple[Figure, Figure]:
        if not 0 <= which < len(self.records):
            raise ValueError(f"record index must be in 0..{len(self.records) - 1}, got {which}")
        record = self.records[which]
        trade = plot_lambda_tradeoff(self.records, selected=which)
        name = record_name(record)
        grid = plot_cam_grid(self.images[index], {name: record["cams"][:, index]},
                             {name: record["preds"][:, index]}, int(self.labels[index]),
                             self.class_names)
        return trade, grid

    @serialized
    def _draw(self) -> None:
        with self.out:
            self.out.clear_output(wait=True)
            for fig in self.render(self.weight.value, self.image.value):
                display(fig)
                plt.close(fig)
