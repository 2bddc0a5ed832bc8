"""Cluttered digits: each digit placed at a random position on a larger canvas among fragments
cut from other digits of the same split, with a mask of the placed digit's own pixels.

After the cluttered MNIST of Mnih et al. (2014, "Recurrent models of visual attention"): a
60x60 canvas and 8x8 fragments of other digits. Clutter is drawn first and the digit on top, so
inside the mask the canvas equals the digit; outside it the digit's faint edge pixels are
combined with the clutter by maximum. Generation is seeded and vectorised per image (seconds for
5,000 digits); `labkit.core.data` caches the result beside the other data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INK = 0.1  # a digit pixel above this belongs to the mask
FRAGMENTS = 8  # per 60x60 image, as in the 100x100 cluttered MNIST; 4 on 60x60 there


@dataclass(frozen=True)
class Clutter:
    """What was drawn for each image: images (N, 1, S, S), masks (N, 1, S, S) bool, the digit's
    top-left corner (N, 2) and the source index of each fragment (N, fragments)."""

    images: torch.Tensor
    masks: torch.Tensor
    corners: torch.Tensor
    fragment_sources: torch.Tensor


def clutter_digits(digits: torch.Tensor, *, canvas: int = 60, fragments: int = 8,
                   fragment_size: int = 8, seed: int = 0) -> Clutter:
    """Place each digit (N, 1, h, w) in [0, 1] on a `canvas` x `canvas` image among `fragments`
    fragments (fragment_size x fragment_size) cut at random from the *other* digits."""
    n, channels, h, w = digits.shape
    if channels != 1:
        raise ValueError(f"digits must be grey (N, 1, h, w), got {tuple(digits.shape)}")
    if canvas < max(h, w):
        raise ValueError(f"the canvas ({canvas}) must be at least the digit size ({h}x{w})")
    if not 1 <= fragment_size <= min(h, w):
        raise ValueError(f"fragment_size must be in 1..{min(h, w)}, got {fragment_size}")
    if fragments < 0:
        raise ValueError(f"fragments must be >= 0, got {fragments}")
    if n < 2 and fragments:
        raise ValueError("clutter needs at least two digits: fragments come from the others")
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, canvas, canvas)
    # a fragment's source is any digit but the image's own: draw from n - 1 and skip it
    sources = torch.randint(0, max(n - 1, 1), (n, fragments), generator=g)
    sources += (sources >= torch.arange(n)[:, None]).long()
    cuts = torch.randint(0, min(h, w) - fragment_size + 1, (n, fragments, 2), generator=g)
    places = torch.randint(0, canvas - fragment_size + 1, (n, fragments, 2), generator=g)
    corners = torch.stack([torch.randint(0, canvas - h + 1, (n,), generator=g),
                           torch.randint(0, canvas - w + 1, (n,), generator=g)], dim=1)
    f = fragment_size
    for i in range(n):
        for j in range(fragments):
            (cy, cx), (py, px) = cuts[i, j].tolist(), places[i, j].tolist()
            patch = digits[sources[i, j], 0, cy:cy + f, cx:cx + f]
            region = images[i, 0, py:py + f, px:px + f]
            torch.maximum(region, patch, out=region)
    masks = torch.zeros(n, 1, canvas, canvas, dtype=torch.bool)
    for i in range(n):
        y, x = corners[i].tolist()
        digit = digits[i, 0]
        ink = digit > INK
        region = images[i, 0, y:y + h, x:x + w]
        region.copy_(torch.where(ink, digit, torch.maximum(region, digit)))
        masks[i, 0, y:y + h, x:x + w] = ink
    return Clutter(images, masks, corners, sources)
