"""Tests for labkit.viz.fdl: figures are built from records, overlays are exact blends."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.methods import fdl_experiments as fx  # noqa: E402
from labkit.viz import fdl as vfdl  # noqa: E402


def sweep_summary():
    """A sweep's summary from typed results with known metrics: 2 methods x k in (3, 10) x 2 seeds."""
    results = []
    for method in ("classical", "fdl"):
        for k in (3, 10):
            for seed in (0, 1):
                base = 0.5 + 0.01 * k + 0.02 * seed + (0.05 if method == "fdl" else 0)
                metrics = {"mean_member": base, "soft_vote": base + 0.01, "hard_vote": base,
                           "fusion": base + 0.02,
                           "iou_map": 0.7 if method == "classical" else 0.2,
                           "iou_cam": 0.3 if method == "classical" else 0.15, "empty_cam": 0.0}
                settings = fx.Settings(k=k, seed=seed, use_fdl=method == "fdl")
                results.append(fx.Result(settings, metrics, [], (1, 28, 28), 10, {}))
    return fx.summary(results)


def test_accuracy_and_overlap_figures_have_error_bars_per_method():
    fig = vfdl.plot_accuracy_vs_k(sweep_summary())
    axes = fig.axes
    assert len(axes) == 4
    # one errorbar container per method per panel, means and stds over the seeds
    assert len(axes[0].containers) == 2
    line = axes[0].containers[1].lines[0]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float),
                               [0.5 + 0.03 + 0.01 + 0.05, 0.5 + 0.1 + 0.01 + 0.05])
    bars = axes[0].containers[1].lines[2][0].get_segments()  # the error bar at k = 3
    np.testing.assert_allclose(bars[0][:, 1] - 0.59, [-0.02 / np.sqrt(2), 0.02 / np.sqrt(2)],
                               atol=1e-12)
    assert "over 2 seed(s)" in fig._suptitle.get_text()
    plt.close(fig)
    fig = vfdl.plot_overlap_vs_k(sweep_summary())
    assert len(fig.axes) == 2
    np.testing.assert_allclose(np.asarray(fig.axes[0].containers[0].lines[0].get_ydata(),
                                          dtype=float), [0.7, 0.7])
    plt.close(fig)
    with pytest.raises(ValueError, match="no sweep results"):
        vfdl.plot_accuracy_vs_k(fx.summary([]))


def cam_records(images: int = 4, members: int = 3, scales=(0.0, 1.0), side: int = 8
                ) -> list[fx.CamRecord]:
    """Typed records with known CAMs, predictions and metrics (weights s * (1, 10))."""
    gen = torch.Generator().manual_seed(0)
    return [fx.CamRecord(fx.Settings(lambda_cos=s, lambda_euc=10 * s),
                         {"iou_map": 0.7 - 0.5 * s, "iou_cam": 0.3 - 0.1 * s,
                          "mean_member": 0.8 - s / 10, "soft_vote": 0.85, "fusion": 0.86},
                         torch.rand(members, images, side, side, generator=gen),
                         torch.randint(0, 3, (members, images), generator=gen),
                         torch.rand(members, images, side // 4, side // 4, generator=gen))
            for s in scales]


def test_cam_figure_shows_each_records_members_and_their_overlap():
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    records = cam_records()
    fig = vfdl.cam_figure(images, labels, records, 2)
    assert len(fig.axes) == 2 * 4
    assert [ax.get_ylabel() for ax in fig.axes[::4]] == ["classical", "FDL (1, 10)"]
    assert fig.axes[4].get_title() == f"member 1: {int(records[1].preds[0, 2])}"
    iou = float(vfdl.fdl.attention_iou(records[1].cams[:, 2:3])[0])
    assert fig.axes[7].get_title() == f"members/pixel, IoU {iou:.2f}"
    # the last column counts, per pixel, the members whose above-mean region covers it
    counts = vfdl.fdl.above_mean_mask(records[0].cams[:, 2]).sum(0).numpy()
    np.testing.assert_array_equal(fig.axes[3].images[0].get_array(), counts)
    assert fig._suptitle.get_text() == "true class 2"
    plt.close(fig)
    with pytest.raises(ValueError, match="0..3"):
        vfdl.cam_figure(images, labels, records, 4)
    with pytest.raises(ValueError, match="records is empty"):
        vfdl.cam_figure(images, labels, [], 0)


def test_descriptor_demo_and_tradeoff_and_lambda_figure():
    fig = vfdl.plot_descriptor_demo([torch.rand(4, 5, 5) for _ in range(3)])
    assert len(fig.axes) == 6
    plt.close(fig)
    record = cam_records()[0]  # a record's maps (M, B, h, w) are channel means already
    fig = vfdl.plot_descriptor_demo(list(record.maps[:, 1]))
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), record.maps[0, 1].numpy())
    plt.close(fig)
    records = cam_records(scales=(0.0, 0.1, 1.0))
    fig = vfdl.plot_lambda_tradeoff(records, selected=1)
    assert "0.1 x lambda_euc" in fig.axes[0].get_xlabel()
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [0.7, 0.65, 0.2])
    plt.close(fig)
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    fig = vfdl.lambda_figure(images, labels, records, 2, 1)
    trade, grid = fig.subfigs
    assert list(trade.axes[0].lines[-1].get_xdata()) == [10.0, 10.0]  # the chosen weight
    assert grid.axes[0].get_ylabel() == "FDL (1, 10)" and len(grid.axes) == 4
    assert grid._suptitle.get_text() == "FDL (1, 10), test image 1 (true class 1)"
    plt.close(fig)
    with pytest.raises(ValueError, match="record index"):
        vfdl.lambda_figure(images, labels, records, 3, 0)


# ----------------------------------------------------------------------------- kernel-free sliders

def decode_png_uri(uri: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def cam_trace(fig_or_frame, row: int, member: int, members: int):
    """The Grad-CAM heat map of one grid cell (each cell holds the digit, then its CAM)."""
    data = fig_or_frame.data
    return data[2 * (row * members + member) + 1]


def test_downsample_takes_block_means_and_refuses_bad_factors():
    heat = torch.arange(16.0).reshape(1, 4, 4)
    np.testing.assert_allclose(vfdl.downsample(heat, 2), [[[2.5, 4.5], [10.5, 12.5]]])
    np.testing.assert_array_equal(vfdl.downsample(heat, 1), heat.numpy())
    with pytest.raises(ValueError, match="divide"):
        vfdl.downsample(heat, 3)
    with pytest.raises(ValueError, match="whole number"):
        vfdl.downsample(heat, 0)


def test_member_cam_slider_has_a_frame_per_digit_holding_each_members_cam():
    from labkit.viz.playable import slider_steps

    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    records = cam_records()
    fig = vfdl.member_cam_slider(images, labels, records, pool=1)
    assert len(fig.frames) == 4
    assert slider_steps(fig) == ["0: 0", "1: 1", "2: 2", "3: 0"]  # class 0 twice: indexed
    for index, frame in enumerate(fig.frames):
        for row, record in enumerate(records):
            for m in range(3):
                np.testing.assert_allclose(cam_trace(frame, row, m, 3).z,
                                           record.cams[m, index].numpy(), atol=1e-4)
            np.testing.assert_array_equal(decode_png_uri(frame.data[2 * row * 3].source),
                                          np.round(images[index, 0].numpy() * 255))
        pred = int(records[1].preds[2, index])
        assert frame.layout.annotations[3 + 2].text == f"member 3: {pred}"
        assert f"true class {int(labels[index])}" in frame.layout.title.text
    iou = float(vfdl.fdl.attention_iou(records[0].cams[:, 1:2])[0])
    assert f"classical IoU {iou:.2f}" in fig.frames[1].layout.title.subtitle.text
    # the figure opens on the first digit; cells are square and upright
    np.testing.assert_allclose(cam_trace(fig, 1, 0, 3).z, records[1].cams[0, 0].numpy(), atol=1e-4)
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis6.scaleanchor == "x6"
    assert [fig.layout.yaxis.title.text, fig.layout.yaxis4.title.text] == ["classical", "FDL (1, 10)"]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)  # fixed colour range
    # pooled: each 2x2 block of the stored CAM becomes one cell, centred on its pixels
    pooled = vfdl.member_cam_slider(images, labels, records, ["a", "b", "c"], pool=2)
    np.testing.assert_allclose(cam_trace(pooled.frames[2], 0, 1, 3).z,
                               vfdl.downsample(records[0].cams[1, 2], 2), atol=1e-4)
    assert (cam_trace(pooled, 0, 0, 3).x0, cam_trace(pooled, 0, 0, 3).dx) == (0.5, 2)
    assert "true class c" in pooled.frames[2].layout.title.text


def test_member_cam_slider_refuses_mismatched_records():
    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="records is empty"):
        vfdl.member_cam_slider(images, labels, [])
    with pytest.raises(ValueError, match="do not match"):
        vfdl.member_cam_slider(torch.rand(5, 1, 8, 8), torch.zeros(5), cam_records())
    with pytest.raises(ValueError, match="same number of members"):
        vfdl.member_cam_slider(images, labels, cam_records()[:1] + cam_records(members=2)[1:])
    with pytest.raises(ValueError, match="labels"):
        vfdl.member_cam_slider(images, labels[:3], cam_records())
    with pytest.raises(ValueError, match="at least two"):  # a single digit is no slider
        vfdl.member_cam_slider(images[:1], labels[:1], cam_records(images=1))


def test_lambda_cam_slider_has_a_frame_per_record_with_its_tradeoff_in_the_title():
    from labkit.viz.playable import slider_steps

    images, labels = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 0])
    records = cam_records(scales=(0.0, 0.1, 1.0))
    fig = vfdl.lambda_cam_slider(images, labels, records, digits=(3, 1), pool=1)
    assert slider_steps(fig) == ["classical", "FDL (0.1, 1)", "FDL (1, 10)"]
    for frame, record in zip(fig.frames, records, strict=True):
        for row, index in enumerate((3, 1)):
            for m in range(3):
                np.testing.assert_allclose(cam_trace(frame, row, m, 3).z,
                                           record.cams[m, index].numpy(), atol=1e-4)
        assert frame.layout.title.to_plotly_json() == vfdl.lambda_title(record)
    title = fig.frames[1].layout.title
    assert title.text == "FDL (0.1, 1): IoU of maps 0.650, of Grad-CAMs 0.290"
    assert "mean member 0.790" in title.subtitle.text
    assert [fig.layout.yaxis.title.text, fig.layout.yaxis4.title.text] == [
        "digit 3 (class 0)", "digit 1 (class 1)"]
    assert len(vfdl.lambda_cam_slider(images, labels, records).data) == 2 * 3 * 3  # 3 digits
    with pytest.raises(ValueError, match="digits must index"):
        vfdl.lambda_cam_slider(images, labels, records, digits=(4,))
    with pytest.raises(ValueError, match="digits must index"):
        vfdl.lambda_cam_slider(images, labels, records, digits=())
    with pytest.raises(ValueError, match="unique"):  # two records of the same weights
        vfdl.lambda_cam_slider(images, labels, records[:2] + records[1:2])


def test_slider_figures_of_the_lab_size_stay_small():
    """Ten digits, two ensembles of five members on 28x28 noise (which compresses worse than
    digits): the stored figure's JSON stays under the lab's 400 kB per figure."""
    import json

    from labkit.viz.playable import figure_json

    images, labels = torch.rand(10, 1, 28, 28), torch.arange(10)
    records = cam_records(images=10, members=5, side=28)
    size = len(json.dumps(figure_json(vfdl.member_cam_slider(images, labels, records))))
    assert size < 400_000


