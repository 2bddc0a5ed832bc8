"""Figures of notebook 01 on synthetic runs (no training)."""

import matplotlib
import pytest
import torch

from labkit.methods import reponet as rp
from labkit.viz import reponet as vr

matplotlib.use("Agg")


def test_distinct_angles_are_the_polytope_angles():
    assert vr.distinct_angles(rp.polytope_vertices("simplex", 4), 1) == {109.5: 6}
    assert vr.distinct_angles(rp.polytope_vertices("orthoplex", 6), 1) == {90.0: 12, 180.0: 3}
    assert vr.distinct_angles(rp.polytope_vertices("cube", 8), 1) == {70.5: 12, 109.5: 12, 180.0: 4}


def test_polytope_figures():
    fig = vr.polytope_figure("cube", 8)
    markers = [t for t in fig.data if t.mode == "markers+text"]
    assert len(markers) == 1 and len(markers[0].x) == 8
    edges = [t for t in fig.data if t.mode == "lines" and t.line.color == "grey"]
    assert len(edges) == 12  # a cube has 12 edges
    assert len([t for t in vr.polytope_figure("simplex", 4).data if t.line.color == "grey"]) == 6
    with pytest.raises(ValueError, match="d = 3"):
        vr.polytope_figure("simplex", 10)
    assert len(vr.polytope_panels().axes) == 3


def test_projection_keeps_origin_and_rays_linear():
    feats = torch.randn(50, 9) + 3
    dirs = rp.polytope_vertices("simplex", 10)
    shown, rays = vr._to_display(feats, dirs)
    assert shown.shape == (50, 2) and rays.shape == (10, 2)
    shown2, rays2 = vr._to_display(2 * feats, dirs)
    assert torch.allclose(shown2, 2 * shown, atol=1e-4)  # linear: no centring shift
    low, same = vr._to_display(feats[:, :3], dirs[:, :3])
    assert low is not None and torch.equal(same, dirs[:, :3])


def test_run_figures_build(fake_run):
    runs = [fake_run(), fake_run("orthoplex", 6, 3), fake_run("simplex", 10, 9, fixed=False)]
    assert len(vr.feature_panels(runs).axes) == 3
    assert len(vr.snapshot_strip(runs[0]).axes) == 3
    curves = vr.collapse_curves(runs)
    assert len(curves.axes) == 4 and len(curves.axes[0].lines) == 3
    assert len(vr.alignment_bars(runs).axes) == 2
