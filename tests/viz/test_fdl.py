"""Tests for labkit.viz.fdl: figures are built from records, overlays are exact blends."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import fdl as vfdl  # noqa: E402


def fake_rows() -> list[dict]:
    rows = []
    for method in ("classical", "fdl"):
        for k in (3, 10):
            for seed in (0, 1):
                base = 0.5 + 0.01 * k + 0.02 * seed + (0.05 if method == "fdl" else 0)
                rows.append({"method": method, "k": k, "seed": seed, "mean_member": base,
                             "soft_vote": base + 0.01, "hard_vote": base, "fusion": base + 0.02,
                             "iou_map": 0.7 if method == "classical" else 0.2,
                             "iou_cam": 0.3 if method == "classical" else 0.15})
    return rows


def test_accuracy_and_overlap_figures_have_error_bars_per_method():
    fig = vfdl.plot_accuracy_vs_k(fake_rows())
    axes = fig.axes
    assert len(axes) == 4
    # one errorbar container per method per panel, means at the right place
    assert len(axes[0].containers) == 2
    line = axes[0].containers[1].lines[0]
    np.testing.assert_allclose(np.asarray(line.get_ydata(), dtype=float), [0.5 + 0.03 + 0.01 + 0.05, 0.5 + 0.1 + 0.01 + 0.05])
    plt.close(fig)
    fig = vfdl.plot_overlap_vs_k(fake_rows())
    assert len(fig.axes) == 2
    plt.close(fig)
    with pytest.raises(ValueError, match="no sweep rows"):
        vfdl.plot_accuracy_vs_k([])


def test_cam_grid_and_descriptor_demo_and_tradeoff():
    image = torch.rand(1, 8, 8)
    cams = {"classical": torch.rand(3, 8, 8), "FDL": torch.rand(3, 8, 8)}
    preds = {"classical": torch.tensor([1, 2, 3]), "FDL": torch.tensor([1, 1, 1])}
    fig = vfdl.plot_cam_grid(image, cams, preds, label=1)
    assert len(fig.axes) == 2 * 4
    assert fig.axes[0].get_title() == "member 1: 1"
    plt.close(fig)
    fig = vfdl.plot_descriptor_demo([torch.rand(4, 5, 5) for _ in range(3)])
    assert len(fig.axes) == 6
    plt.close(fig)
    records = [{"lambda_cos": s, "lambda_euc": 10 * s,
                "metrics": {"iou_map": 0.7 - s / 10, "iou_cam": 0.3, "mean_member": 0.8,
                            "soft_vote": 0.85, "fusion": 0.86}} for s in (0.0, 0.1, 1.0)]
    fig = vfdl.plot_lambda_tradeoff(records, selected=1)
    assert "0.1 x lambda_euc" in fig.axes[0].get_xlabel()
    plt.close(fig)
    with pytest.raises(ValueError, match="cams is empty"):
        vfdl.plot_cam_grid(image, {})


# ----------------------------------------------------------------------------- kernel-free sliders

def cam_records(images: int = 4, members: int = 3, scales=(0.0, 1.0), side: int = 8) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    return [{"lambda_cos": s, "lambda_euc": 10 * s,
             "cams": torch.rand(members, images, side, side, generator=gen),
             "preds": torch.randint(0, 3, (members, images), generator=gen),
             "metrics": {"iou_map": 0.7 - 0.5 * s, "iou_cam": 0.3 - 0.1 * s, "mean_member": 0.8 - s / 10,
                         "soft_vote": 0.85, "fusion": 0.86}} for s in scales]


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
                                           record["cams"][m, index].numpy(), atol=1e-4)
            np.testing.assert_array_equal(decode_png_uri(frame.data[2 * row * 3].source),
                                          np.round(images[index, 0].numpy() * 255))
        pred = int(records[1]["preds"][2, index])
        assert frame.layout.annotations[3 + 2].text == f"member 3: {pred}"
        assert f"true class {int(labels[index])}" in frame.layout.title.text
    iou = float(vfdl.fdl.attention_iou(records[0]["cams"][:, 1:2])[0])
    assert f"classical IoU {iou:.2f}" in fig.frames[1].layout.title.subtitle.text
    # the figure opens on the first digit; cells are square and upright
    np.testing.assert_allclose(cam_trace(fig, 1, 0, 3).z, records[1]["cams"][0, 0].numpy(), atol=1e-4)
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.yaxis6.scaleanchor == "x6"
    assert [fig.layout.yaxis.title.text, fig.layout.yaxis4.title.text] == ["classical", "FDL (1, 10)"]
    assert (fig.layout.coloraxis.cmin, fig.layout.coloraxis.cmax) == (0, 1)  # fixed colour range
    # pooled: each 2x2 block of the stored CAM becomes one cell, centred on its pixels
    pooled = vfdl.member_cam_slider(images, labels, records, ["a", "b", "c"], pool=2)
    np.testing.assert_allclose(cam_trace(pooled.frames[2], 0, 1, 3).z,
                               vfdl.downsample(records[0]["cams"][1, 2], 2), atol=1e-4)
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
        vfdl.member_cam_slider(images[:1], labels[:1], [dict(r, cams=r["cams"][:, :1],
                                                             preds=r["preds"][:, :1])
                                                        for r in cam_records()])


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
                                           record["cams"][m, index].numpy(), atol=1e-4)
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


