"""Tests for labkit.widgets.sync: drawing callbacks run one at a time across threads."""

from __future__ import annotations

import threading
import time

import matplotlib

from labkit.widgets import sync

matplotlib.use("Agg")


def test_serialized_callbacks_never_overlap():
    inside, overlaps = [0], []

    @sync.serialized
    def draw() -> None:
        inside[0] += 1
        overlaps.append(inside[0] > 1)
        time.sleep(0.02)
        inside[0] -= 1

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [False] * 4


def test_serialized_is_reentrant():
    @sync.serialized
    def outer() -> int:
        return inner() + 1

    @sync.serialized
    def inner() -> int:
        return 1

    assert outer() == 2


def test_widget_redraws_hold_the_lock(monkeypatch):
    from labkit.methods import apfs_experiments as ax
    from labkit.widgets import apfs

    def result(**settings):
        return ax.Result(ax.Settings(**settings), {"recall@1": 0.5}, [], 0.01, [0.3, 0.2])

    held = []
    sweeps = {"strength": [result(strength=v) for v in (0.0, 0.1)],
              "lifetime": [result(lifetime=v, batches_per_pass=60) for v in (1, 5)]}
    explorer = apfs.SweepExplorer(sweeps)
    original = explorer.figure
    monkeypatch.setattr(explorer, "figure",
                        lambda *a: held.append(sync.DRAW_LOCK._is_owned()) or original(*a))
    explorer.parameter.value = "lifetime"
    assert held and all(held)


def test_serialized_turns_interactive_mode_off_and_back():
    import matplotlib.pyplot as plt

    seen = []
    plt.ion()
    try:
        sync.serialized(lambda: seen.append(plt.isinteractive()))()
        assert seen == [False] and plt.isinteractive()
    finally:
        plt.ioff()
