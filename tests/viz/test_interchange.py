"""Tests of the interchangeable-embeddings figures: they draw what they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import dataclasses  # noqa: E402
import json  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.methods import interchange_analysis as ia  # noqa: E402
from labkit.methods.interchange_analysis import (  # noqa: E402
    OpenSetResults,
    PairSimilarity,
    Similarity,
    synthetic_zoo,
)
from labkit.viz import interchange as viz  # noqa: E402
from labkit.viz.playable import figure_json, slider_steps  # noqa: E402


def teardown_function():
    plt.close("all")


def test_plot_matrix_annotates_finite_cells_only():
    m = np.array([[np.nan, 0.91], [0.5, np.nan]])
    ax = viz.plot_matrix(m, ["a", "b"], title="retention")
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == ["0.50", "0.91"]
    assert ax.get_title() == "retention"
    with pytest.raises(ValueError, match="names"):
        viz.plot_matrix(m, ["a"])


def test_plot_curves_draws_one_line_per_curve():
    ax = viz.plot_curves([10, 100, 1000], {"affine": [0.2, 0.8, 0.99], "ridge": [0.5, 0.9, 0.99]},
                         logx=True, hline=1.0)
    assert len(ax.get_lines()) == 3 and ax.get_xscale() == "log"
    assert np.allclose(ax.get_lines()[0].get_ydata(), [0.2, 0.8, 0.99])
    with pytest.raises(ValueError, match="points"):
        viz.plot_curves([1, 2], {"x": [1.0]})


def test_similarity_scatter_panels_and_correlation_titles():
    rows = [PairSimilarity(f"m{i} / n{i}", i == 0, {"cka": 0.1 * i, "mean_cca": 0.5, "svcca": 0.6,
                                                    "procrustes": 1 - 0.1 * i}, {},
                           0.9 + 0.01 * i) for i in range(5)]
    fig = viz.plot_similarity_vs_retention(Similarity(rows, {"cka": 1.0}))
    axes = fig.axes
    assert len(axes) == 4 and "+1.00" in axes[0].get_title() and "rho" not in axes[1].get_title()
    offsets = np.concatenate([c.get_offsets() for c in axes[0].collections])
    assert sorted(offsets[:, 0].round(2)) == [0.0, 0.1, 0.2, 0.3, 0.4]
    assert sorted(offsets[:, 1].round(2)) == [0.9, 0.91, 0.92, 0.93, 0.94]
    assert len(axes[0].collections) == 2  # different architectures, and the same-arch pair
    assert not any(ax.get_lines() for ax in axes)  # no shuffled values: no baseline drawn


def _similarity() -> Similarity:
    rows = [PairSimilarity(f"m{i} / m{i + 1}", False,
                           {"cka": 0.5 + 0.1 * i, "cka_debiased": 0.45 + 0.1 * i, "mean_cca": 0.6,
                            "svcca": 0.7, "procrustes": 0.8 - 0.1 * i},
                           {"cka": 0.3 + 0.01 * i, "cka_debiased": 0.01 * i - 0.01,
                            "mean_cca": 0.15, "svcca": 0.12, "procrustes": 1.3},
                           0.9 + 0.01 * i) for i in range(3)]
    return Similarity(rows, {})


def test_similarity_scatter_draws_each_index_beside_its_shuffled_pairs_baseline():
    fig = viz.plot_similarity_vs_retention(_similarity())
    assert [ax.get_xlabel() for ax in fig.axes] == ["linear CKA", "linear CKA (debiased)",
                                                    "mean CCA", "SVCCA", "Procrustes distance"]
    lines = [[line.get_xdata()[0] for line in ax.get_lines()] for ax in fig.axes]
    assert np.allclose([values[0] for values in lines], [0.31, 0.0, 0.15, 0.12, 1.3])
    assert "shuffled" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())


def test_similarity_heatmap_has_a_row_per_pair_and_a_shuffled_baseline_row():
    ax = viz.plot_similarity_heatmap(_similarity())
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels[:3] == ["m0 / m1", "m1 / m2", "m2 / m3"] and "shuffled" in labels[3]
    assert len(ax.get_xticklabels()) == 5
    texts = [t.get_text() for t in ax.texts]
    assert texts[:5] == ["0.50", "0.45", "0.60", "0.70", "0.80"]  # raw values, pair by pair
    assert texts[-5:] == ["0.31", "0.00", "0.15", "0.12", "1.30"]  # median of the baselines
    shown = np.asarray(ax.images[0].get_array())
    # colour is similarity on one scale: the Procrustes distance d is drawn as 1 - d / sqrt(2)
    assert shown[0, 4] == pytest.approx(1 - 0.8 / np.sqrt(2)) and shown[0, 0] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shuffled"):
        viz.plot_similarity_heatmap(Similarity([PairSimilarity("a / b", False, {"cka": 0.4}, {},
                                                               0.9)], {}))


def test_plot_roc_and_scatter():
    far = np.array([0, 1e-3, 1e-2, 0.1, 1])
    ax = viz.plot_roc({"native": (far, np.array([0, 0.5, 0.8, 0.95, 1]))}, min_far=1e-4)
    assert ax.get_xscale() == "log" and len(ax.get_legend().get_texts()) == 1
    target = torch.randn(50, 6)
    ax = viz.plot_mapped_scatter(target, target + 0.01, torch.arange(50) % 3)
    dots, crosses = ax.collections[:2]
    assert dots.get_offsets().shape == (50, 2)
    assert np.allclose(dots.get_offsets(), crosses.get_offsets(), atol=0.05)
    with pytest.raises(ValueError, match="differ"):
        viz.plot_mapped_scatter(target, target[:, :3], torch.arange(50))


def test_open_set_roc_draws_the_control_pairs_four_curves():
    grid = np.logspace(-4, 0, 5)
    curves = {"a native": np.full(5, 0.9), "b native": np.full(5, 0.8),
              "a -> b mapped": np.full(5, 0.7), "a -> b shuffled control": np.full(5, 0.1),
              "b -> a mapped": np.full(5, 0.6)}
    control = ia.MappedScores("a", "b", {"eer": 0.5})
    results = OpenSetResults({}, [], control, grid, curves, 30, (1e-2,))
    ax = viz.plot_open_set_roc(results)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "b native", "a native", "a → b mapped", "a → b shuffled-map control"]
    assert [line.get_ydata()[0] for line in ax.get_lines()[:4]] == [0.8, 0.9, 0.7, 0.1]
    assert ax.get_title() == "unseen classes, 30 images"


# ----------------------------------------------------------------------------- the map explorer

@pytest.fixture(scope="module")
def zoo():
    """Three 6-d toy members, plus a 3-d one (a different latent draw) for unequal-dim pairs."""
    toy = synthetic_zoo(n_members=3, dim=6, num_classes=4, seed=1)
    narrow = synthetic_zoo(n_members=2, dim=3, num_classes=4, seed=2).members[0]
    toy.extras["low_dim"] = dataclasses.replace(narrow, name="narrow")
    return toy


def test_map_grid_offers_every_map_kind_and_only_buildable_points(zoo):
    grid = viz.map_grid(zoo, "toy0", "toy1", pair_counts=(20, 100, 10_000),
                             alphas=(1.0, 1e4), ranks=(1, 4, 8))
    assert [p.label for p in grid] == ["affine, all pairs", "affine, N=20", "affine, N=100",
                                       "ridge alpha=1", "ridge alpha=10000", "Procrustes",
                                       "rank 1", "rank 4", "closed form (heads)", "identity"]
    assert {p.method for p in grid} == set(ia.MAP_METHODS)
    assert grid[2].options == {"n_pairs": 100} and grid[7].options == {"rank": 4}
    narrow = viz.map_grid(zoo, "toy0", "narrow", ranks=(1, 2, 4))
    assert not {p.method for p in narrow} & {"procrustes", "identity"}
    assert [p.options["rank"] for p in narrow if p.method == "reduced_rank"] == [1, 2]


def _sign_aligned(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """`expected` with each column's sign flipped to match `actual` (PCA axes have no sign)."""
    return expected * np.sign((actual * expected).sum(0))


def test_map_slider_has_one_frame_per_grid_point_showing_that_points_metrics(zoo):
    grid = viz.map_grid(zoo, "toy0", "toy2")
    fig = viz.map_slider(zoo, "toy0", "toy2", max_points=50)
    assert len(fig.frames) == len(grid) == len(slider_steps(fig))
    assert slider_steps(fig) == [p.label for p in grid]
    a, b = zoo.member("toy0"), zoo.member("toy2")
    target = b.test_emb.double().numpy()
    mean = target.mean(0)
    _, _, vh = np.linalg.svd(target - mean, full_matrices=False)
    keep = np.linspace(0, len(target) - 1, 50).astype(int)
    dots = np.stack([fig.frames[0].data[0].x, fig.frames[0].data[0].y], 1)
    expected_dots = _sign_aligned(dots, (target[keep] - mean) @ vh[:2].T)
    np.testing.assert_allclose(dots, expected_dots, atol=1e-3)
    signs = np.sign((dots * ((target[keep] - mean) @ vh[:2].T)).sum(0))
    retentions = []
    for frame, point in zip(fig.frames, grid, strict=True):
        view = ia.explore_map(zoo, "toy0", "toy2", point.method, **point.options)
        mapped = view.emb_map(a.test_emb.double()).numpy()[keep]
        crosses = np.stack([frame.data[1].x, frame.data[1].y], 1)
        np.testing.assert_allclose(crosses, signs * ((mapped - mean) @ vh[:2].T), atol=1e-3)
        np.testing.assert_allclose(frame.data[2].y, [view.source_accuracy, view.target_accuracy,
                                                     view.accuracy], atol=1e-4)
        assert f"retention {view.retention:.3f}" in frame.layout.title.text
        assert f"CKA {view.cka:.2f}" in frame.layout.title.text
        assert f"debiased {view.cka_debiased:.2f}" in frame.layout.title.text
        retentions.append(view.retention)
    assert len(set(np.round(retentions, 4))) > 3  # the steps really differ
    assert fig.layout.title.text == fig.frames[0].layout.title.text  # opens at the first point


def test_map_figure_draws_the_explorers_state(zoo):
    fig, view = viz.map_figure(zoo, "toy0", "toy2", "ridge", alpha=10.0)
    again = ia.explore_map(zoo, "toy0", "toy2", "ridge", alpha=10.0)
    assert (view.retention, view.r2, view.cka) == (again.retention, again.r2, again.cka)
    left, right = fig.axes[:2]
    assert [p.get_height() for p in right.patches] == pytest.approx(
        [view.source_accuracy, view.target_accuracy, view.accuracy])
    assert f"retention {view.retention:.3f}" in right.get_title()
    dots, crosses = left.collections[:2]
    assert dots.get_offsets().shape == crosses.get_offsets().shape == (120, 2)
    assert "ridge" in left.get_title()


def test_map_slider_is_stored_compactly_and_keeps_one_axis_range(zoo):
    fig = viz.map_slider(zoo, "toy1", "toy0")
    stored = figure_json(fig)
    assert "bdata" in stored["frames"][3]["data"][1]["x"]  # a base64 typed array, not a list
    assert len(json.dumps(stored)) < 400_000
    x_range = fig.layout.xaxis.range
    for frame in fig.frames:
        for trace in frame.data[:2]:
            assert x_range[0] <= min(trace.x) and max(trace.x) <= x_range[1]


def test_map_slider_rejects_bad_grids_and_members(zoo):
    with pytest.raises(ValueError, match="at least two"):
        viz.map_slider(zoo, "toy0", "toy1", [viz.GridPoint("affine", "affine")])
    with pytest.raises(ValueError, match="unknown explorer map"):
        viz.map_slider(zoo, "toy0", "toy1", [viz.GridPoint("a", "affine"),
                                                  viz.GridPoint("b", "cca")])
    with pytest.raises(ValueError, match="equal dims"):
        viz.map_slider(zoo, "toy0", "narrow", [viz.GridPoint("a", "affine"),
                                                    viz.GridPoint("i", "identity")])
    with pytest.raises(ValueError, match="no zoo member"):
        viz.map_slider(zoo, "toy0", "nobody")
    with pytest.raises(ValueError, match="max_points"):
        viz.map_slider(zoo, "toy0", "toy1", max_points=0)
