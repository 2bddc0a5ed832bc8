"""Tests for labkit.viz.images: display conversion, grids and heat-map overlays."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from labkit.viz import images  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_to_display():
    grey = torch.tensor([[[0.0, 0.5], [1.5, -1.0]]])
    np.testing.assert_array_equal(images.to_display(grey), [[0.0, 0.5], [1.0, 0.0]])
    rgb = torch.arange(12, dtype=torch.float32).view(3, 2, 2) / 12
    out = images.to_display(rgb)
    assert out.shape == (2, 2, 3)
    np.testing.assert_allclose(out[1, 0], rgb[:, 1, 0].numpy())
    with pytest.raises(ValueError, match="C, H, W"):
        images.to_display(torch.zeros(2, 2))


def test_image_grid():
    batch = torch.rand(5, 1, 4, 4)
    fig = images.image_grid(batch, titles=list("abcde"), ncols=2)
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes] == list("abcde")
    assert fig.axes[2].get_subplotspec().get_geometry()[:2] == (3, 2)
    np.testing.assert_allclose(fig.axes[3].images[0].get_array(), batch[3, 0].numpy())


def test_overlay_maths():
    image = torch.full((3, 4, 6), 0.2)
    heat = np.ones((2, 3))
    out = images.overlay(image, heat, alpha=0.25, cmap="gray")
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out, 0.75 * 0.2 + 0.25 * 1.0, rtol=1e-6)
    assert np.allclose(images.overlay(image[:1], np.zeros((2, 2)), alpha=0.0), 0.2)
    ramp = images.overlay(torch.zeros(1, 8, 8), torch.tensor([[0.0, 1.0]]), alpha=1.0, cmap="gray")
    assert ramp[0, 0, 0] == pytest.approx(0.0) and ramp[0, -1, 0] == pytest.approx(1.0)
    assert np.all(np.diff(ramp[0, :, 0]) >= 0)  # bilinear upsampling is monotone here
    with pytest.raises(ValueError, match="heat"):
        images.overlay(image, np.ones((1, 2, 3)))


def test_png_data_uri_is_an_8_bit_png_of_the_image():
    import base64
    import io

    import numpy as np
    from PIL import Image

    img = torch.zeros(1, 6, 4)
    img[0, 2, 1] = 1.0
    uri = images.png_data_uri(img)
    assert uri.startswith("data:image/png;base64,")
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert pixels.shape == (6, 4) and pixels[2, 1] == 255 and pixels.sum() == 255
    rgb = np.asarray(Image.open(io.BytesIO(base64.b64decode(
        images.png_data_uri(torch.rand(3, 5, 5)).split(",", 1)[1]))))
    assert rgb.shape == (5, 5, 3)
    with pytest.raises(ValueError, match="C = 1 or 3"):
        images.png_data_uri(torch.rand(2, 5, 5))


def test_upsample_keeps_constant_maps_and_size():
    up = images.upsample(torch.full((7, 7), 0.5), (28, 28))
    assert up.shape == (28, 28)
    assert abs(up - 0.5).max() < 1e-6
    with pytest.raises(ValueError, match=r"\(h, w\)"):
        images.upsample(torch.ones(2, 3, 3), (4, 4))
