"""APFS figures draw from recorded results and reject bad input."""

from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.methods import apfs_experiments as X  # noqa: E402
from labkit.methods.apfs import GeometryResult, GeometrySettings  # noqa: E402
from labkit.viz import apfs as V  # noqa: E402
from labkit.viz import report  # noqa: E402


def fake_geometry(rounds=3, per_class=5, classes=3) -> GeometryResult:
    """A typed 2-D run with random embeddings and known constraint shares (no training)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(classes).repeat_interleave(per_class)
    snaps = [torch.randn(len(labels), 2, generator=g) for _ in range(rounds + 1)]
    reps = np.stack([[c * per_class + k % per_class for c in range(classes)]
                     for k in range(rounds)])
    sat = [{"before": (0.2, 0.5), "after": (0.6, 0.7)} for _ in range(rounds)]
    return GeometryResult(GeometrySettings(rounds=rounds), snaps, labels, reps, sat,
                          [1.0] * rounds, [chr(97 + c) for c in range(classes)])


def fake_sweep(parameter, values, seeds=(0,)) -> list[X.Result]:
    """Typed APFS results over `parameter` with known recall and round distances."""
    return [X.Result(X.Settings(**{parameter: v, "seed": s}),
                     {"recall@1": 0.5 + 0.1 * i + 0.01 * s}, [], 0.0,
                     [1.0 + i + s, 0.5 + i, 0.25 + i][:2 + i % 2])
            for i, v in enumerate(values) for s in seeds]


def test_feasible_set_draws_balls_and_representatives():
    geo = fake_geometry()
    fig, ax = plt.subplots()
    V.draw_feasible_set(ax, geo.snapshots[0], geo.labels, geo.representatives[0],
                        0.5, 2.0)
    radii = sorted(p.get_radius() for p in ax.patches)
    assert radii == [0.5] * 3 + [2.0] * 3
    centres = {tuple(np.round(p.center, 6)) for p in ax.patches}
    expected = {tuple(np.round(geo.snapshots[0][i].numpy(), 6))
                for i in geo.representatives[0]}
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
    fig = V.round_figure(geo, 2, dpi=50)
    assert fig.dpi == 50 and "round 2 before" in fig.axes[0].get_title()
    fig = V.plot_rounds(geo)
    assert len(fig.axes) == 6  # rounds 0, 1, 2: before and after each
    plt.close("all")


def test_sweep_figure_draws_each_value_and_its_round_distances():
    sweep = fake_sweep("strength", (0.0, 0.1, 1.0), seeds=(0, 1))
    fig = V.plot_sweep(sweep, "strength", highlight=0.1)
    left, right = fig.axes
    assert left.get_xlabel() == "lambda" and len(right.lines) == 3
    np.testing.assert_allclose(left.lines[0].get_ydata(), [0.505, 0.605, 0.705])
    # the first seed's distances per value; the highlighted value bold
    np.testing.assert_allclose(right.lines[1].get_ydata(), [2.0, 1.5, 1.25])
    assert [line.get_linewidth() for line in right.lines] == [1, 2.5, 1]
    fig = V.sweep_figure({"lifetime": fake_sweep("lifetime", (1, 10))}, "lifetime", 10, dpi=40)
    assert fig.dpi == 40 and fig.axes[0].get_xlabel() == "T (lifetime)"
    with pytest.raises(ValueError, match="at least one"):
        V.plot_sweep([], "strength")
    cost = X.StepCost(X.Settings(), 2, {"baseline": [0.003], "apfs": [0.0031]})
    ax = V.plot_step_cost(cost)
    assert [p.get_height() for p in ax.patches] == pytest.approx([3.0, 3.1])
    plt.close("all")


def test_ablation_bars_take_the_variant_colours():
    from matplotlib.colors import to_hex

    results = [X.Result(X.Settings(loss=loss, variant=v, seed=s),
                        {"recall@1": 0.5 + 0.1 * s}, [], 0.0, [])
               for loss in ("contrastive", "triplet") for v in X.VARIANTS for s in (0, 1)]
    fig = report.plot_grouped_bars(X.summary(results), colors=V.VARIANT_COLORS)
    bars = fig.axes[0].patches
    assert len(bars) == 6
    assert [to_hex(b.get_facecolor()) for b in bars[::2]] == list(V.VARIANT_COLORS.values())
    plt.close(fig)


# ----------------------------------------------------------------------------- kernel-free sliders

def fake_sweeps(strengths=(0.0, 0.1, 1.0), lifetimes=(1, 10), seeds=(0, 1)):
    return {"strength": fake_sweep("strength", strengths, seeds),
            "lifetime": fake_sweep("lifetime", lifetimes, seeds)}


def _trace_index(fig, name, axis):
    """Position of the figure's trace called `name` drawn on x axis `axis` ("x" or "x2")."""
    matches = [i for i, t in enumerate(fig.data) if t.name == name and (t.xaxis or "x") == axis]
    assert len(matches) == 1, (name, axis, matches)
    return matches[0]


def _xy(trace):
    return np.column_stack([np.asarray(trace.x, dtype=float), np.asarray(trace.y, dtype=float)])


def test_round_slider_has_a_frame_per_round_holding_that_round():
    from labkit.viz.playable import compact, slider_steps

    geo = fake_geometry(rounds=4)
    fig = V.round_slider(geo, max_points_per_class=None)
    assert slider_steps(fig) == ["0", "1", "2", "3"] and len(fig.frames) == 4
    labels = geo.labels.numpy()
    for k, frame in enumerate(fig.frames):
        assert len(frame.data) == len(fig.data)
        for axis, snap in (("x", geo.snapshots[k]), ("x2", geo.snapshots[k + 1])):
            for c, name in enumerate(geo.classes):
                got = _xy(frame.data[_trace_index(fig, name, axis)])
                np.testing.assert_array_equal(got, compact(snap[labels == c]))
            stars = _xy(frame.data[_trace_index(fig, "representatives", axis)])
            centres = compact(snap[torch.as_tensor(geo.representatives[k])])
            np.testing.assert_array_equal(stars, centres)
            for c, name in enumerate(geo.classes):
                for symbol, radius in (("α", 0.5), ("β", 2.0)):
                    ring = _xy(frame.data[_trace_index(fig, f"{symbol} ball {name}", axis)])
                    np.testing.assert_allclose(np.linalg.norm(ring - centres[c], axis=1), radius,
                                               atol=2e-3)
        sat = geo.satisfaction[k]
        assert frame.layout.title.text.startswith(f"Round {k}, relaxed set Θ_{k}: start within")
        assert f"within α {100 * sat['after'][0]:.0f}%" in frame.layout.title.text
    # the figure itself shows the first frame
    np.testing.assert_array_equal(_xy(fig.data[0]), _xy(fig.frames[0].data[0]))


def test_round_slider_keeps_the_axes_fixed_and_holds_every_frame():
    geo = fake_geometry(rounds=3)
    fig = V.round_slider(geo)
    x_range, y_range = fig.layout.xaxis.range, fig.layout.yaxis.range
    assert fig.layout.xaxis2.range == x_range and fig.layout.yaxis2.range == y_range
    assert x_range[1] - x_range[0] == pytest.approx(y_range[1] - y_range[0])  # square: round balls
    for frame in fig.frames:
        assert "xaxis" not in frame.layout.to_plotly_json()  # frames never move the axes
        for trace in frame.data:
            xy = _xy(trace)
            assert (xy[:, 0] >= x_range[0]).all() and (xy[:, 0] <= x_range[1]).all()
            assert (xy[:, 1] >= y_range[0]).all() and (xy[:, 1] <= y_range[1]).all()


def test_round_slider_subsamples_the_same_rows_in_every_frame():
    geo = fake_geometry(rounds=2, per_class=10)
    fig = V.round_slider(geo, max_points_per_class=4)
    index = _trace_index(fig, "b", "x")
    rows = V.class_subsample(geo.labels, 3, 4)[1]
    assert len(rows) == 4 and rows[0] == 10 and rows[-1] == 19  # evenly spaced, ends kept
    for k, frame in enumerate(fig.frames):
        np.testing.assert_allclose(_xy(frame.data[index]), geo.snapshots[k][rows].numpy(),
                                   atol=1e-4)


def test_round_slider_fits_a_stored_notebook():
    from labkit.viz.playable import figure_json

    # the lab profile's geometry run: 5 classes x 100 samples, 12 rounds
    geo = dataclasses.replace(fake_geometry(rounds=12, per_class=100, classes=5),
                              classes=list("01234"))
    assert len(json.dumps(figure_json(V.round_slider(geo)))) < 300_000


def test_round_slider_rejects_bad_input():
    geo = fake_geometry(rounds=3)
    with pytest.raises(ValueError, match="at least two|rounds >= 2"):
        V.round_slider(dataclasses.replace(geo, representatives=geo.representatives[:1]))
    with pytest.raises(ValueError, match="snapshots"):
        V.round_slider(dataclasses.replace(geo, snapshots=geo.snapshots[:3]))
    with pytest.raises(ValueError, match="2-D"):
        V.round_slider(dataclasses.replace(geo, snapshots=[torch.zeros(15, 3)] * 4))
    with pytest.raises(ValueError, match="per_class"):
        V.round_slider(geo, max_points_per_class=0)
    with pytest.raises(ValueError, match="radius"):
        V.circle_outline((0.0, 0.0), -1.0)
    with pytest.raises(ValueError, match="vertices"):
        V.round_slider(geo, vertices=3)


def test_circle_outline_is_closed_and_round():
    xs, ys = V.circle_outline((1.0, -2.0), 0.5, vertices=9)
    assert len(xs) == 9 and (xs[0], ys[0]) == pytest.approx((xs[-1], ys[-1]))
    np.testing.assert_allclose(np.hypot(xs - 1.0, ys + 2.0), 0.5)


def test_coordinates_only_keeps_just_the_data():
    import plotly.graph_objects as go

    light = V.coordinates_only(go.Scatter(x=[1, 2], y=[3, 4], name="a", marker=dict(size=9)))
    assert set(light.to_plotly_json()) == {"type", "x", "y"}
    assert list(light.x) == [1, 2] and list(light.y) == [3, 4]


def test_sweep_slider_has_a_frame_per_swept_value():
    from labkit.viz.playable import slider_steps

    sweeps = fake_sweeps()
    fig = V.sweep_slider(sweeps)
    assert slider_steps(fig) == ["λ=0", "λ=0.1", "λ=1", "T=1", "T=10"]
    slots = 3  # the most values any parameter has; T's frames pad with an empty trace
    assert len(fig.data) == 3 + slots
    frames = dict(zip(slider_steps(fig), fig.frames, strict=True))
    for parameter, symbol in (("strength", "λ"), ("lifetime", "T")):
        rows = sweeps[parameter]
        values = sorted({getattr(r.settings, parameter) for r in rows})
        means = [np.mean([r.metrics["recall@1"] for r in rows
                          if getattr(r.settings, parameter) == v]) for v in values]
        for i, value in enumerate(values):
            frame = frames[f"{symbol}={value:g}"]
            np.testing.assert_allclose(np.asarray(frame.data[0].y), means, atol=1e-4)
            np.testing.assert_allclose(np.sort(frame.data[1].y),
                                       sorted(r.metrics["recall@1"] for r in rows), atol=1e-4)
            assert list(frame.data[2].x) == [i]
            np.testing.assert_allclose(frame.data[2].y, [means[i]], atol=1e-4)
            for slot in range(slots):
                curve = frame.data[3 + slot]
                if slot >= len(values):
                    assert len(curve.x) == 0
                    continue
                first_seed = next(r for r in rows
                                  if getattr(r.settings, parameter) == values[slot])
                np.testing.assert_allclose(curve.y, first_seed.round_distances, rtol=1e-5)
                assert curve.x[-1] == pytest.approx(1.0)
                assert curve.line.width == (3 if slot == i else 1)
            assert list(frame.layout.xaxis.ticktext) == [f"{v:g}" for v in values]
            assert f"at {symbol} = {value:g}" in frame.layout.title.text


def test_sweep_slider_keeps_the_axes_fixed():
    sweeps = fake_sweeps()
    fig = V.sweep_slider(sweeps)
    scores = [r.metrics["recall@1"] for rows in sweeps.values() for r in rows]
    low, high = fig.layout.yaxis.range
    assert low < min(scores) and high > max(scores)
    assert fig.layout.yaxis2.type == "log" and fig.layout.xaxis2.range == (0, 1.02)
    axes = {(tuple(f.layout.xaxis.range), tuple(f.layout.xaxis.domain)) for f in fig.frames}
    assert axes == {((-0.5, 2.5), (0.0, 0.45))}
    for frame in fig.frames:
        assert "yaxis" not in frame.layout.to_plotly_json()


def test_sweep_slider_rejects_empty_sweeps():
    with pytest.raises(ValueError, match="non-empty"):
        V.sweep_slider({})
    with pytest.raises(ValueError, match="non-empty"):
        V.sweep_slider({"strength": []})
