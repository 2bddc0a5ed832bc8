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

from labkit.methods.interchange_experiments import synthetic_zoo  # noqa: E402
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
    rows = [{"cka": 0.1 * i, "mean_cca": 0.5, "svcca": 0.6, "procrustes": 1 - 0.1 * i,
             "retention": 0.9 + 0.01 * i, "same_arch": i == 0} for i in range(5)]
    fig = viz.plot_similarity_vs_retention(rows, correlations={"cka": 1.0})
    axes = fig.axes
    assert len(axes) == 4 and "+1.00" in axes[0].get_title()
    offsets = np.concatenate([c.get_offsets() for c in axes[0].collections])
    assert sorted(offsets[:, 0].round(2)) == [0.0, 0.1, 0.2, 0.3, 0.4]


def _rows_with_baseline() -> list[dict]:
    return [{"pair": f"m{i} / m{i + 1}", "cka": 0.5 + 0.1 * i, "cka_debiased": 0.45 + 0.1 * i,
             "mean_cca": 0.6, "svcca": 0.7, "procrustes": 0.8 - 0.1 * i,
             "cka_shuffled": 0.3 + 0.01 * i, "cka_debiased_shuffled": 0.01 * i - 0.01,
             "mean_cca_shuffled": 0.15, "svcca_shuffled": 0.12, "procrustes_shuffled": 1.3,
             "retention": 0.9 + 0.01 * i} for i in range(3)]


def test_similarity_scatter_draws_each_index_beside_its_shuffled_pairs_baseline():
    fig = viz.plot_similarity_vs_retention(_rows_with_baseline())
    assert [ax.get_xlabel() for ax in fig.axes] == ["linear CKA", "linear CKA (debiased)",
                                                    "mean CCA", "SVCCA", "Procrustes distance"]
    lines = [[line.get_xdata()[0] for line in ax.get_lines()] for ax in fig.axes]
    assert np.allclose([values[0] for values in lines], [0.31, 0.0, 0.15, 0.12, 1.3])
    assert "shuffled" in " ".join(t.get_text() for t in fig.axes[0].get_legend().get_texts())
    assert not any(ax.get_lines() for ax in viz.plot_similarity_vs_retention(
        [{k: v for k, v in r.items() if not k.endswith("_shuffled")} for r in _rows_with_baseline()]).axes)


def test_similarity_heatmap_has_a_row_per_pair_and_a_shuffled_baseline_row():
    ax = viz.plot_similarity_heatmap(_rows_with_baseline())
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
        viz.plot_similarity_heatmap([{"pair": "a / b", "cka": 0.4}])


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


# ----------------------------------------------------------------------------- the map explorer

@pytest.fixture(scope="module")
def zoo():
    """Three 6-d toy members, plus a 3-d one (a different latent draw) for unequal-dim pairs."""
    toy = synthetic_zoo(n_members=3, dim=6, num_classes=4, seed=1)
    narrow = synthetic_zoo(n_members=2, dim=3, num_classes=4, seed=2).members[0]
    toy.extras["low_dim"] = dataclasses.replace(narrow, name="narrow")
    return toy


def test_explorer_grid_offers_every_map_kind_and_only_buildable_points(zoo):
    grid = viz.explorer_grid(zoo, "toy0", "toy1", pair_counts=(20, 100, 10_000),
                             alphas=(1.0, 1e4), ranks=(1, 4, 8))
    assert [p.label for p in grid] == ["affine, all pairs", "affine, N=20", "affine, N=100",
                                       "ridge alpha=1", "ridge alpha=10000", "Procrustes",
                                       "rank 1", "rank 4", "closed form (heads)", "identity"]
    assert {p.method for p in grid} == set(viz.EXPLORER_METHODS)
    assert grid[2].options == {"n_pairs": 100} and grid[7].options == {"rank": 4}
    narrow = viz.explorer_grid(zoo, "toy0", "narrow", ranks=(1, 2, 4))
    assert not {p.method for p in narrow} & {"procrustes", "identity"}
    assert [p.options["rank"] for p in narrow if p.method == "reduced_rank"] == [1, 2]


def _sign_aligned(actual: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """`expected` with each column's sign flipped to match `actual` (PCA axes have no sign)."""
    return expected * np.sign((actual * expected).sum(0))


def test_explorer_slider_has_one_frame_per_grid_point_showing_that_points_metrics(zoo):
    grid = viz.explorer_grid(zoo, "toy0", "toy2")
    fig = viz.explorer_slider(zoo, "toy0", "toy2", max_points=50)
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
        emb_map, metrics = viz.explorer_metrics(zoo, "toy0", "toy2", point.method, **point.options)
        mapped = emb_map(a.test_emb.double()).numpy()[keep]
        crosses = np.stack([frame.data[1].x, frame.data[1].y], 1)
        np.testing.assert_allclose(crosses, signs * ((mapped - mean) @ vh[:2].T), atol=1e-3)
        np.testing.assert_allclose(frame.data[2].y, [metrics["source_accuracy"],
                                                     metrics["target_accuracy"],
                                                     metrics["accuracy"]], atol=1e-4)
        assert f"retention {metrics['retention']:.3f}" in frame.layout.title.text
        assert f"CKA {metrics['cka']:.2f}" in frame.layout.title.text
        assert f"debiased {metrics['cka_debiased']:.2f}" in frame.layout.title.text
        retentions.append(metrics["retention"])
    assert len(set(np.round(retentions, 4))) > 3  # the steps really differ
    assert fig.layout.title.text == fig.frames[0].layout.title.text  # opens at the first point


def test_explorer_slider_is_stored_compactly_and_keeps_one_axis_range(zoo):
    fig = viz.explorer_slider(zoo, "toy1", "toy0")
    stored = figure_json(fig)
    assert "bdata" in stored["frames"][3]["data"][1]["x"]  # a base64 typed array, not a list
    assert len(json.dumps(stored)) < 400_000
    x_range = fig.layout.xaxis.range
    for frame in fig.frames:
        for trace in frame.data[:2]:
            assert x_range[0] <= min(trace.x) and max(trace.x) <= x_range[1]


def test_explorer_slider_rejects_bad_grids_and_members(zoo):
    with pytest.raises(ValueError, match="at least two"):
        viz.explorer_slider(zoo, "toy0", "toy1", [viz.GridPoint("affine", "affine")])
    with pytest.raises(ValueError, match="unknown explorer map"):
        viz.explorer_slider(zoo, "toy0", "toy1", [viz.GridPoint("a", "affine"),
                                                  viz.GridPoint("b", "cca")])
    with pytest.raises(ValueError, match="equal dims"):
        viz.explorer_slider(zoo, "toy0", "narrow", [viz.GridPoint("a", "affine"),
                                                    viz.GridPoint("i", "identity")])
    with pytest.raises(ValueError, match="no zoo member"):
        viz.explorer_slider(zoo, "toy0", "nobody")
    with pytest.raises(ValueError, match="max_points"):
        viz.explorer_slider(zoo, "toy0", "toy1", max_points=0)
