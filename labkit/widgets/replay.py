"""Replay recorded training: an epoch slider over `History.snapshots` (instant, no training).

`labkit.viz.features.replay_slider` is its kernel-free counterpart (a plotly figure with one
frame per recorded epoch)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import torch

from labkit.core.train import History
from labkit.viz.features import project, scatter_features
from labkit.widgets.picture import with_picture
from labkit.widgets.sync import serialized


def snapshot_figure(history: History, labels: torch.Tensor, index: int, *, directions=None,
                    class_names: Sequence[str] | None = None, normalize: bool = False, ax=None):
    """The probe features recorded at snapshot `index` (projected with PCA if d > 3)."""
    if not history.snapshots:
        raise ValueError("this history has no snapshots: train with fit(..., probe=images)")
    features = history.snapshots[index]
    if features.shape[1] > 3:
        features = project(features, "pca", 2)
        directions = None
    epoch = history.snapshot_epochs[index]
    return scatter_features(features, labels, directions=directions, class_names=class_names,
                            normalize=normalize, ax=ax, title=f"epoch {epoch}")


def snapshot_canvas(history: History, labels: torch.Tensor, index: int, **options):
    """A new figure with `snapshot_figure(history, labels, index, **options)` drawn in it."""
    dim = history.snapshots[index].shape[1]
    fig = plt.figure(figsize=(4.4, 4.4))
    ax = fig.add_subplot(projection="3d" if dim == 3 else None)
    snapshot_figure(history, labels, index, ax=ax, **options)
    return fig


def snapshot_player(history: History, labels: torch.Tensor, *, directions=None,
                    class_names: Sequence[str] | None = None, normalize: bool = False):
    """An ipywidgets slider over the recorded epochs that redraws the feature scatter; its
    display carries a picture of the last epoch, the state it opens in."""
    import ipywidgets as widgets

    if not history.snapshots:
        raise ValueError("this history has no snapshots: train with fit(..., probe=images)")
    slider = widgets.SelectionSlider(
        options=[(str(epoch), i) for i, epoch in enumerate(history.snapshot_epochs)],
        value=len(history.snapshots) - 1, description="epoch")
    out = widgets.Output()
    options = dict(directions=directions, class_names=class_names, normalize=normalize)

    @serialized
    def draw(index: int) -> None:
        with out:
            out.clear_output(wait=True)
            snapshot_canvas(history, labels, index, **options)
            plt.show()

    slider.observe(lambda change: draw(change["new"]), names="value")
    draw(slider.value)
    box = widgets.VBox([slider, out])
    return with_picture(box, snapshot_canvas(history, labels, slider.value, **options),
                        "epoch replay")
