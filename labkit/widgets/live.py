"""Live training view: a `fit` callback that re-draws the probe embedding in a plotly FigureWidget."""

from __future__ import annotations

import torch

from labkit.core.train import TrainState, record_snapshot
from labkit.viz.features import plotly_features, project


class LiveScatter:
    """Pass as `fit(..., callbacks=[live])` and display `live.widget`; updates at each epoch end.

    `probe` (N, C, H, W) images and their `labels`; features with d > 3 are shown by PCA.
    """

    def __init__(self, probe: torch.Tensor, labels: torch.Tensor, directions=None,
                 every: int = 1) -> None:
        self.probe, self.labels, self.directions, self.every = probe, labels, directions, every
        self.widget = None
        self.frames: list[torch.Tensor] = []

    def _points(self, features: torch.Tensor) -> torch.Tensor:
        return project(features, "pca", 2) if features.shape[1] > 3 else features

    def on_epoch_end(self, state: TrainState) -> None:
        if state.epoch % self.every:
            return
        device = next(state.model.parameters()).device
        raw = record_snapshot(state.model, self.probe.to(device))
        features = self._points(raw)
        self.frames.append(features)
        title = f"epoch {state.epoch}"
        if self.widget is None:
            directions = self.directions if raw.shape[1] <= 3 else None  # no rays after PCA
            self.widget = plotly_features(features, self.labels, directions=directions, title=title,
                                          widget=True)
            return
        classes = torch.unique(torch.as_tensor(self.labels)).tolist()
        with self.widget.batch_update():
            for trace, k in zip(self.widget.data, classes, strict=False):
                sel = torch.as_tensor(self.labels) == k
                for axis, column in zip("xyz", features[sel].T, strict=False):
                    setattr(trace, axis, column.numpy())
            self.widget.layout.title = title
