"""APFS figures draw from recorded results and reject bad input."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import apfs as V  # noqa: E402


def fake_geometry(rounds=3, per_class=5, classes=3):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    snaps = [torch.randn(len(labels), 2, generator=g) for _ in range(rounds + 1)]
    reps = np.stack([[c * per_class + k % per_class for c in range(classes)]
                     for k in range(rounds)])
    sat = [{"before": (0.2, 0.5), "after": (0.6, 0.7)} for _ in range(rounds)]
    return {"config": {"alpha": 0.5, "beta": 2.0}, "snapshots": snaps, "labels": labels,
            "representatives": reps, "satisfaction": sat, "classes": ["a", "b", "c"]}


def fake_rows():
    return [{"loss": lo, "variant": v, "seed": s, "recall@1": 0.5 + 0.1 * s, "recall@2": 0.7,
             "recall@4": 0.8, "recall@8": 0.9, "nmi": 0.3}
            for lo in ("contrastive", "triplet") for v in ("baseline", "apfs") for s in (0, 1)]


def test_feasible_set_draws_balls_and_representatives():
    geo = fake_geometry()
    fig, ax = plt.subplots()
    V.draw_feasible_set(ax, geo["snapshots"][0], geo["labels"], geo["representatives"][0],
                        0.5, 2.0)
    radii = sorted(p.get_radius() for p in ax.patches)
    assert radii == [0.5] * 3 + [2.0] * 3
    centres = {tuple(np.round(p.center, 6)) for p in ax.patches}
    expected = {tuple(np.round(geo["snapshots"][0][i].numpy(), 6))
                for i in geo["representatives"][0]}
    assert centres == expected
    with pytest.raises(ValueError, match="2-D"):
        V.draw_feasible_set(ax, torch.zeros(4, 3), torch.zeros(4), [0], 0.5, 2.0)
    plt.close("all")


def test_round_and_summary_figures():
    geo = fake_geometry()
    fig = V.plot_round(geo, 1)
    assert len(fig.axes) == 2 and "round 1 after" in fig.axes[1].get_title()
    with pytest.raises(ValueError, match="round_index"):
        V.plot_round(geo, 3)
    ax = V.plot_satisfaction(geo)
    assert len(ax.lines) == 2 and len(ax.lines[0].get_xdata()) == 6
    fig = V.plot_ablation(fake_rows())
    assert len(fig.axes) == 2
    fig = V.plot_recall_curves(fake_rows())
    assert len(fig.axes) == 2
    with pytest.raises(ValueError):
        V.plot_ablation([])
    sweep = [{"parameter": "strength", "value": v, "seed": 0, "recall@1": 0.5,
              "round_distances": [1.0, 0.5]} for v in (0.0, 0.1)]
    fig = V.plot_sweep(sweep, highlight=0.1)
    assert fig.axes[0].get_xlabel() == "lambda" and len(fig.axes[1].lines) == 2
    V.plot_step_cost({"baseline_ms": 3.0, "apfs_ms": 3.1, "apfs/baseline": 1.03})
    plt.close("all")
