"""Tests for labkit.viz.features: scatter figures (matplotlib, plotly), projections, grids."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import features as viz  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _points(n_per=5, dim=2, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat_interleave(n_per)
    return torch.randn(k * n_per, dim, generator=g) + 3 * torch.eye(k, dim)[labels], labels


def test_scatter_features_2d():
    x, labels = _points()
    ax = viz.scatter_features(x, labels, class_names=["a", "b", "c"], directions=torch.eye(3, 2),
                              title="t")
    # one scatter per class and one marker per direction
    assert len(ax.collections) == 3 + 3 and len(ax.lines) == 3
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    assert ax.get_title() == "t"
    np.testing.assert_allclose(ax.collections[1].get_offsets(), x[labels == 1].numpy(), rtol=1e-6)
    # rays end at the 98th percentile of the feature norms
    reach = np.percentile(np.linalg.norm(x.numpy(), axis=1), 98)
    end = np.array([ax.lines[0].get_xdata()[-1], ax.lines[0].get_ydata()[-1]])
    np.testing.assert_allclose(end, [reach, 0], rtol=1e-6, atol=1e-9)


def test_scatter_features_normalize_and_3d():
    x, labels = _points(dim=3)
    ax = viz.scatter_features(x.numpy(), labels.numpy(), normalize=True)
    assert ax.name == "3d"
    fig, ax2 = plt.subplots()
    viz.scatter_features(x[:, :2], labels, normalize=True, ax=ax2, legend=False)
    offsets = np.concatenate([c.get_offsets() for c in ax2.collections])
    np.testing.assert_allclose(np.linalg.norm(offsets, axis=1), 1.0, rtol=1e-6)
    assert ax2.get_legend() is None


def test_scatter_features_bad_shapes():
    x, labels = _points(dim=4)
    with pytest.raises(ValueError, match="project"):
        viz.scatter_features(x, labels)
    with pytest.raises(ValueError, match="labels"):
        viz.scatter_features(x[:, :2], labels[:-1])
    with pytest.raises(ValueError, match="directions"):
        viz.scatter_features(x[:, :2], labels, directions=torch.eye(3))
    with pytest.raises(ValueError):
        viz.plotly_features(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="directions"):
        viz.plotly_features(x[:, :2], labels, directions=torch.eye(3))


def test_plotly_features():
    import plotly.graph_objects as go

    x, labels = _points()
    fig = viz.plotly_features(x, labels, directions=torch.eye(2), title="t")
    assert isinstance(fig, go.Figure) and not isinstance(fig, go.FigureWidget)
    assert len(fig.data) == 3 + 2 and fig.layout.title.text == "t"
    np.testing.assert_allclose(fig.data[2].x, x[labels == 2, 0].numpy(), rtol=1e-6)
    widget = viz.plotly_features(torch.randn(6, 3), torch.tensor([0, 0, 1, 1, 2, 2]), widget=True)
    assert isinstance(widget, go.FigureWidget)
    assert all(isinstance(t, go.Scatter3d) for t in widget.data) and len(widget.data) == 3


def test_project_pca_matches_numpy():
    g = np.random.default_rng(0)
    x = g.normal(size=(40, 6)) * np.array([5.0, 3.0, 1.0, 0.5, 0.2, 0.1])
    got = viz.project(torch.from_numpy(x), "pca", 2).numpy()
    centred = x - x.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    expected = centred @ vt[:2].T
    for j in range(2):  # each component is defined up to sign
        sign = np.sign(got[:, j] @ expected[:, j])
        np.testing.assert_allclose(got[:, j], sign * expected[:, j], rtol=1e-4, atol=1e-5)
    assert got.shape == (40, 2) and got.dtype == np.float32
    assert got[:, 0].var() > got[:, 1].var()


def test_project_passthrough_and_errors():
    x = torch.randn(5, 2)
    assert torch.equal(viz.project(x, "pca", 3), x)
    with pytest.raises(ValueError, match="projection"):
        viz.project(torch.randn(5, 4), "tsne")
    with pytest.raises(ValueError):
        viz.project(torch.randn(5), "pca")
    with pytest.raises(ValueError):
        viz.project(torch.randn(5, 4), "pca", 0)


def test_feature_grid():
    x, labels = _points()
    panels = [("one", x, labels, None), ("two", x, labels, torch.eye(2)), ("three", x, labels, None)]
    fig = viz.feature_grid(panels, ncols=2)
    assert len(fig.axes) == 3 and [ax.get_title() for ax in fig.axes] == ["one", "two", "three"]
    fig3 = viz.feature_grid([("a", torch.randn(6, 3), labels[:6], None)])
    assert fig3.axes[0].name == "3d"


def test_class_color_cycles():
    assert viz.class_color(0) == viz.PALETTE[0]
    assert viz.class_color(len(viz.PALETTE)) == viz.PALETTE[0]


# ----------------------------------------------------------------------------- kernel-free replay

def _recorded(dim=2, epochs=(0, 2, 4), n_per=6, k=3, seed=0):
    from labkit.core.train import History

    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(k).repeat(n_per)
    snapshots = [(torch.randn(len(labels), dim, generator=g) + 2 * torch.eye(k, dim)[labels]) * (i + 1)
                 for i in range(len(epochs))]
    return History(snapshots=snapshots, snapshot_epochs=list(epochs)), labels


def _frame_points(fig, index, count):
    """The marker coordinates of frame `index`, one (n, dim) array per class trace (the last
    `count` traces: rays come first)."""
    traces = fig.frames[index].data[-count:]
    axes = "xyz" if traces[0].type == "scatter3d" else "xy"
    return [np.stack([np.asarray(getattr(t, a), dtype=float) for a in axes], 1) for t in traces]


def test_replay_slider_has_one_frame_per_recorded_epoch_holding_its_snapshot():
    history, labels = _recorded()
    fig = viz.replay_slider(history, labels, directions=torch.eye(3, 2), class_names=["a", "b", "c"])
    from labkit.viz.playable import slider_steps

    assert slider_steps(fig) == ["0", "2", "4"] and len(fig.frames) == 3
    assert fig.layout.sliders[0].active == 2 and fig.layout.title.text == "probe features, epoch 4"
    assert [f.layout.title.text for f in fig.frames] == [f"probe features, epoch {e}" for e in (0, 2, 4)]
    for index, snapshot in enumerate(history.snapshots):
        for k, points in enumerate(_frame_points(fig, index, 3)):
            np.testing.assert_allclose(points, snapshot[labels == k].numpy(), atol=1e-4)
        assert len(fig.frames[index].data) == len(fig.data) == 3 + 3  # rays, then classes
        assert all(t.x is None for t in fig.frames[index].data[:3])  # the rays stay as drawn
    # the shown state is the last epoch's, named and coloured by class, drawn over the rays
    np.testing.assert_allclose(fig.data[4].x, history.snapshots[-1][labels == 1, 0].numpy(), atol=1e-4)
    assert [t.mode for t in fig.data] == ["lines"] * 3 + ["markers"] * 3
    assert [t.name for t in fig.data[3:]] == ["a", "b", "c"]
    assert fig.data[5].marker.color == viz.class_rgb(2) == fig.data[2].line.color


def test_replay_slider_axes_are_fixed_and_cover_every_frame():
    history, labels = _recorded()
    fig = viz.replay_slider(history, labels, directions=torch.eye(3, 2))
    everything = torch.cat(history.snapshots).numpy()
    for axis, column in ((fig.layout.xaxis, 0), (fig.layout.yaxis, 1)):
        assert axis.autorange is False
        low, high = axis.range
        assert low <= min(everything[:, column].min(), 0) and high >= everything[:, column].max()
    # rays: one per direction, from the origin along it, at the last frame's 98th-percentile norm
    reach = np.percentile(np.linalg.norm(history.snapshots[-1].numpy(), axis=1), 98)
    np.testing.assert_allclose([fig.data[0].x[1], fig.data[0].y[1]], [reach, 0.0], atol=1e-3)
    assert fig.data[1].x[0] == 0.0 and fig.data[1].y[0] == 0.0


def test_replay_slider_in_3d_and_by_one_pca_map_above():
    history, labels = _recorded(dim=3)
    fig = viz.replay_slider(history, labels)
    assert all(t.type == "scatter3d" for t in fig.data) and len(fig.data) == 3
    span = fig.layout.scene.xaxis.range[1]
    assert fig.layout.scene.yaxis.range == (-span, span)
    assert span >= np.abs(torch.cat(history.snapshots).numpy()).max()
    high, labels = _recorded(dim=6)
    fig = viz.replay_slider(high, labels, directions=torch.eye(3, 6))
    basis = viz.display_basis(high.snapshots[-1])
    assert "(PCA)" in fig.layout.title.text and fig.data[0].type == "scatter"
    for index, snapshot in enumerate(high.snapshots):  # the same map for every frame
        shown = (snapshot.double() @ basis).numpy()
        for k, points in enumerate(_frame_points(fig, index, 3)):
            np.testing.assert_allclose(points, shown[labels == k], atol=1e-3)
    ray = (torch.eye(3, 6)[0].double() @ basis).numpy()
    end = np.array([fig.data[0].x[1], fig.data[0].y[1]])
    np.testing.assert_allclose(end / np.linalg.norm(end), ray / np.linalg.norm(ray), atol=1e-3)


def test_replay_slider_normalizes_and_subsamples_the_same_points_on_every_frame():
    history, labels = _recorded(n_per=20)
    fig = viz.replay_slider(history, labels, normalize=True, max_points=25)
    for index in range(3):
        points = np.concatenate(_frame_points(fig, index, 3))
        assert len(points) == 25
        np.testing.assert_allclose(np.linalg.norm(points, axis=1), 1.0, atol=1e-3)
    keep = viz.sample_indices(len(labels), 25)
    np.testing.assert_array_equal(keep, np.sort(keep))
    assert len(set(keep.tolist())) == 25
    np.testing.assert_array_equal(viz.sample_indices(len(labels), 25), keep)  # the same each call
    assert [len(t.x) for t in fig.frames[0].data] == [int((labels[keep] == k).sum()) for k in range(3)]
    assert not fig.layout.xaxis.scaleanchor and fig.layout.yaxis.scaleanchor == "x"


def test_replay_slider_refuses_bad_input():
    from labkit.core.train import History

    history, labels = _recorded()
    with pytest.raises(ValueError, match="probe"):
        viz.replay_slider(History(), labels)
    with pytest.raises(ValueError, match="labels"):
        viz.replay_slider(history, labels[:-1])
    with pytest.raises(ValueError, match="directions"):
        viz.replay_slider(history, labels, directions=torch.eye(3))
    with pytest.raises(ValueError, match="snapshot epochs"):
        viz.replay_slider(History(snapshots=history.snapshots, snapshot_epochs=[0]), labels)
    with pytest.raises(ValueError, match="two frames"):
        viz.replay_slider(History(snapshots=history.snapshots[:1], snapshot_epochs=[0]), labels)


def test_replay_slider_of_a_tour_sized_recording_stays_small():
    import json

    from labkit.viz.playable import figure_json

    history, labels = _recorded(epochs=tuple(range(26)), n_per=50, k=10)
    fig = viz.replay_slider(history, labels, directions=torch.randn(10, 2))
    assert len(json.dumps(figure_json(fig))) < 400_000


def test_display_basis_and_fixed_ranges():
    assert viz.display_basis(torch.randn(10, 3)) is None
    basis = viz.display_basis(torch.randn(40, 5) * torch.tensor([5.0, 3, 1, 1, 1]))
    assert basis.shape == (5, 2)
    np.testing.assert_allclose(basis.T @ basis, np.eye(2), atol=1e-9)
    assert abs(basis[0, 0]) > 0.9  # the widest axis comes first
    with pytest.raises(ValueError):
        viz.display_basis(torch.randn(5))
    (x_low, x_high), (y_low, y_high) = viz.fixed_ranges([np.array([[1.0, 2.0]]), np.array([[3.0, 4.0]])])
    assert x_low < 0 < 3 < x_high and y_low < 0 < 4 < y_high  # the origin stays in view
