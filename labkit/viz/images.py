"""Image grids and heat-map overlays (class activation maps, transport weights)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F


def to_display(image: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W) grey or (H, W, 3) RGB numpy for imshow."""
    if image.ndim != 3:
        raise ValueError(f"image must be (C, H, W), got {tuple(image.shape)}")
    array = image.detach().float().clamp(0, 1).cpu()
    return array[0].numpy() if array.shape[0] == 1 else array.permute(1, 2, 0).numpy()


def png_data_uri(image: torch.Tensor) -> str:
    """A (C, H, W) image in [0, 1] (C = 1 or 3) as an 8-bit PNG data URI, for plotly's go.Image:
    a slider repeats the picture in every frame, and a 28x28 digit takes about 0.4 kB this way
    against 4 kB as float numbers."""
    import base64
    import io

    from PIL import Image  # a dependency of matplotlib

    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64)
    if array.ndim != 3 or array.shape[0] not in (1, 3):
        raise ValueError(f"image must be (C, H, W) with C = 1 or 3, got shape {array.shape}")
    pixels = np.round(255 * np.clip(array.transpose(1, 2, 0), 0.0, 1.0)).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if array.shape[0] == 1 else pixels).save(buffer, format="png",
                                                                            optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_grid(images: torch.Tensor, titles: Sequence[str] | None = None, ncols: int = 8,
               size: float = 1.2, fig=None):
    """Show (N, C, H, W) images in a grid; returns the figure."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig = fig or plt.figure(figsize=(size * ncols, size * nrows + (0.2 if titles else 0)))
    for i in range(n):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.imshow(to_display(images[i]), cmap="gray", vmin=0, vmax=1)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    return fig


def upsample(heat: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized bilinearly to `size` (H, W) -> numpy (H, W); same size: unchanged."""
    heat = torch.as_tensor(np.asarray(heat), dtype=torch.float32)
    if heat.ndim != 2:
        raise ValueError(f"heat must be (h, w), got {tuple(heat.shape)}")
    return F.interpolate(heat[None, None], size=tuple(size), mode="bilinear",
                         align_corners=False)[0, 0].numpy()


def overlay(image: torch.Tensor, heat: torch.Tensor | np.ndarray, alpha: float = 0.45,
            cmap: str = "jet") -> np.ndarray:
    """Blend a heat map (h, w) in [0, 1] (upsampled bilinearly) over an image (C, H, W) in [0, 1].

    Returns (H, W, 3) float in [0, 1].
    """
    heat = np.clip(upsample(heat, tuple(image.shape[-2:])), 0, 1)
    base = to_display(image)
    if base.ndim == 2:
        base = np.repeat(base[..., None], 3, axis=2)
    colored = plt.get_cmap(cmap)(heat)[..., :3]
    return np.clip((1 - alpha) * base + alpha * colored, 0, 1)  # float sums overshoot 1
