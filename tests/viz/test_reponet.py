"""Figures of notebook 01 on typed runs with known tensors (no training)."""

import matplotlib
import numpy as np
import pytest
import torch

from labkit.core.train import History
from labkit.methods import reponet as rp
from labkit.methods import reponet_experiments as rx
from labkit.viz import reponet as vr

matplotlib.use("Agg")


def known_run(kind="simplex", k=4, d=3, fixed=True, epochs=2, accuracy=0.9):
    """A `reponet_experiments.Result` with known tensors: features of class c at 2 w_c + noise,
    the probe's snapshot after epoch e = (e + 1) times them; `fixed=False` is a learned head
    (random directions) at d."""
    torch.manual_seed(0)
    settings = (rx.Settings.for_profile(head=kind, classes=k) if fixed else
                rx.Settings.for_profile(head="learned", classes=k, feat_dim=d))
    assert settings.dim == d
    directions = rp.polytope_vertices(kind, k)[:k] if fixed else torch.randn(k, d)
    labels = torch.arange(k).repeat(10)
    features = 2 * directions[labels] + 0.1 * torch.randn(len(labels), d)
    history = History()
    for e in range(epochs + 1):
        history.snapshots.append(features * (e + 1))
        history.snapshot_epochs.append(e)
        if e:
            history.epochs.append({"epoch": e, "loss": 1.0 / e, "time": 0.1,
                                   **rp.neural_collapse(features, labels, directions, labels)})
    vertices = rp.polytope_vertices(kind, k) if fixed else directions
    return rx.Result(settings, {"accuracy": accuracy}, history, labels, features, labels,
                     torch.rand(k) * 5, directions, vertices, 0.4, None, None, {})


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


def _offsets(ax) -> np.ndarray:
    """The scattered feature points of a 2-D matplotlib axes (the rays' tips left out)."""
    return np.concatenate([c.get_offsets() for c in ax.collections if len(c.get_offsets()) > 1])


def test_run_figures_draw_the_runs_numbers():
    runs = [known_run(), known_run("orthoplex", 6, 3, accuracy=0.8),
            known_run("simplex", 10, 9, fixed=False)]
    panels = vr.feature_panels(runs)
    assert [ax.get_title() for ax in panels.axes] == [
        "simplex d=3: 90.0%", "orthoplex d=3: 80.0%", "learned d=9: 90.0% (PCA)"]
    assert len(vr.snapshot_strip(runs[0]).axes) == 3
    curves = vr.collapse_curves(runs)
    assert len(curves.axes) == 4 and len(curves.axes[0].lines) == 3
    nc1 = curves.axes[0].lines[1]
    assert list(nc1.get_ydata()) == runs[1].history.metric("nc1") and nc1.get_linestyle() == "-"
    assert curves.axes[0].lines[2].get_linestyle() == "--"  # a learned head: dashed
    bars = vr.alignment_bars(runs)
    assert [p.get_width() for p in bars.axes[0].patches] == pytest.approx([90.0, 80.0, 90.0])
    angles = np.sort(bars.axes[1].collections[1].get_offsets()[:, 0])
    np.testing.assert_allclose(angles, np.sort(runs[1].angle_to_direction.numpy()), rtol=1e-6)


def test_replay_figure_draws_the_snapshot_with_the_directions():
    run = known_run("polygon", 5, 2, epochs=3)
    ax = vr.replay_figure(run, 2)
    assert ax.get_title() == "polygon d=2, epoch 2"
    shown = _offsets(ax)
    expected = run.history.snapshots[2].numpy()
    np.testing.assert_allclose(shown[np.lexsort(shown.T)], expected[np.lexsort(expected.T)],
                               rtol=1e-6)
    assert len(ax.lines) == 5  # one ray per class


def _marker_points(trace):
    axes = "xyz" if trace.type == "scatter3d" else "xy"
    return np.stack([np.asarray(getattr(trace, a), dtype=float) for a in axes], 1)


def test_replay_slider_puts_each_run_in_its_subplot_with_one_epoch_slider():
    from labkit.viz.playable import slider_steps

    runs = [known_run("polygon", 10, 2, epochs=3),
            known_run("polygon", 10, 2, fixed=False, epochs=3)]
    fig = vr.replay_slider(runs)
    assert slider_steps(fig) == ["0", "1", "2", "3"]
    # per run: 10 rays then 10 class traces, all on that run's axes
    assert len(fig.data) == 2 * (10 + 10)
    assert [t.mode for t in fig.data[20:]] == ["lines"] * 10 + ["markers"] * 10
    assert {t.xaxis for t in fig.data[:20]} == {"x"} and {t.xaxis for t in fig.data[20:]} == {"x2"}
    assert [a.text for a in fig.layout.annotations] == ["polygon d=2", "learned d=2"]
    labels = runs[1].probe_labels
    for index in range(4):
        frame = fig.frames[index]
        assert len(frame.data) == len(fig.data) and frame.layout.title.text.endswith(f"epoch {index}")
        snapshot = runs[1].history.snapshots[index]
        for k in range(10):
            np.testing.assert_allclose(_marker_points(frame.data[30 + k]),
                                       snapshot[labels == k].numpy(), atol=1e-4)
    assert fig.layout.xaxis2.autorange is False and fig.layout.yaxis2.scaleanchor == "x2"
    assert sum(t.showlegend is not False for t in fig.data if t.mode == "markers") == 10


def test_replay_slider_refuses_runs_it_cannot_line_up():
    with pytest.raises(ValueError, match="no runs"):
        vr.replay_slider([])
    with pytest.raises(ValueError, match="one at a time"):
        vr.replay_slider([known_run(epochs=2), known_run(epochs=3)])
    empty = known_run()
    empty.history.snapshots.clear()
    with pytest.raises(ValueError, match="no snapshots"):
        vr.replay_slider([empty])


def test_polytope_replay_slider_draws_unit_features_on_the_polytopes():
    runs = [known_run("simplex", 4, 3, epochs=2), known_run("cube", 8, 3, epochs=2)]
    fig = vr.polytope_replay_slider(runs)
    assert all(t.type == "scatter3d" for t in fig.data)
    low, high = fig.layout.scene.xaxis.range
    assert low == -high and 1.0 < high < 1.2  # the unit sphere, for every frame
    # simplex: edges, vertices, 4 rays, 4 classes; then the cube's 2 + 8 + 8
    assert len(fig.data) == (2 + 4 + 4) + (2 + 8 + 8)
    cube_edges, cube_vertices = fig.data[10], fig.data[11]
    assert len(cube_edges.x) == 12 * 3  # 12 edges, each two ends and a break
    assert len(cube_vertices.x) == 8 and cube_vertices.marker.color == "crimson"
    for index in range(3):
        frame = fig.frames[index].data
        assert all(t.x is None for t in frame[:6])  # edges, vertices and rays stay as drawn
        points = np.concatenate([_marker_points(t) for t in frame[6:10]])
        np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-3)
        snapshot = runs[0].history.snapshots[index]
        unit = (snapshot / snapshot.norm(dim=1, keepdim=True)).numpy()
        labels = runs[0].probe_labels
        np.testing.assert_allclose(_marker_points(frame[6 + 1]), unit[labels == 1], atol=1e-4)
    learned = known_run("simplex", 4, 3, fixed=False)
    with pytest.raises(ValueError, match="fixed head"):
        vr.polytope_replay_slider([learned])
    with pytest.raises(ValueError, match="3-D"):
        vr.polytope_replay_slider([known_run("polygon", 4, 2)])


def test_train_panel_figure_draws_the_fixed_rays_before_training():
    fig = vr.train_panel_figure("simplex", 4)
    ax = fig.axes[0]
    assert ax.name == "3d" and "d=3" in ax.get_title()
    assert len(ax.lines) == 6 + 4  # the tetrahedron's edges, then one ray per class
    assert len(ax.collections) == 1  # the vertices; no features yet
    polygon = vr.train_panel_figure("polygon", 5).axes[0]
    assert polygon.name != "3d" and len(polygon.lines) == 5
    for kind, k, d in (("learned", 4, 2), ("simplex", 10, None)):
        ax = vr.train_panel_figure(kind, k, d).axes[0]
        assert not ax.lines and ax.texts  # no rays: a note says why
