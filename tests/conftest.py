"""Shared test helpers (fixtures: pytest's import mode keeps test modules from importing each other)."""

import pytest

from labkit.core import config


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests: their tensors are tiny, and on two cores shared
    with other work more threads only contend (as torchrun gives each rank one thread)."""
    with config.cpu_threads(1):
        yield
