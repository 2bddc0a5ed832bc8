"""Shared test helpers (fixtures: pytest's import mode keeps test modules from importing each other)."""

import pytest
import torch

from labkit.core import config
from labkit.core.train import History
from labkit.methods import reponet as rp


def _fake_reponet_run(kind: str = "simplex", k: int = 4, d: int = 3, fixed: bool = True,
                      epochs: int = 2) -> dict:
    """A synthetic notebook-01 run (no training): features near 2 * their class direction,
    growing each epoch, with the history rows and snapshots the figures and widgets read."""
    torch.manual_seed(0)
    directions = rp.polytope_vertices(kind, k) if fixed else torch.randn(k, d)
    labels = torch.arange(k).repeat(10)
    features = 2 * directions[labels] + 0.1 * torch.randn(len(labels), d)
    history = History()
    for e in range(epochs + 1):
        history.snapshots.append(features * (e + 1))
        history.snapshot_epochs.append(e)
        if e:
            history.epochs.append({"epoch": e, "loss": 1.0 / e, "time": 0.1,
                                   **rp.neural_collapse(features, labels, directions[:k], labels)})
    return {"label": f"{kind} d={d}", "accuracy": 0.9, "fixed": fixed, "directions": directions[:k],
            "test_features": features, "test_labels": labels, "probe_labels": labels,
            "history": history, "angle_to_direction": torch.rand(k) * 5}


@pytest.fixture
def fake_run():
    """The factory `fake_run(kind, k, d, fixed, epochs)` of synthetic notebook-01 runs."""
    return _fake_reponet_run


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: their tensors are tiny, and on two cores shared
    with other work more threads only contend (as torchrun gives each rank one thread)."""
    with config.cpu_threads(1):
        yield
