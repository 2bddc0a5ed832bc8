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
