"""Gaussian blur as Pillow's `ImageFilter.GaussianBlur(radius)` does it: differentiable and the real thing.

Pillow's `radius` is the Gaussian's standard deviation sigma, but Pillow does not convolve with a
Gaussian: it runs three passes of an "extended box" blur per axis (Gwosdek et al., SSVM 2011),
horizontal passes first, each stored as 8-bit integers (libImaging/BoxBlur.c). The box radius
R = l + a for sigma^2 / 3 per pass: L = sqrt(12 sigma^2 / 3 + 1), l = floor((L - 1) / 2), and a
fractional part a that makes the box's variance exact. One pass weighs the 2l + 1 inputs around
each output by ww = floor(2^24 / (2R + 1)) / 2^24 and the two next ones by
fw = floor((2^24 - (2l + 1) ww) / 2) / 2^24, replicates the edge pixels, and rounds half up.

`gaussian_blur` computes the same six passes with the same integer weights (banded, see
`hasmap_jax.transforms.banded.pillow_pass`), so its values are Pillow's bit for bit, with a
straight-through gradient through each rounding. (A true Gaussian of the same sigma differs from
Pillow's result by about half a level on average: tests/test_transforms.py.)
"""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image, ImageFilter

from hasmap_jax.transforms.banded import Band, pillow_pass

Array = jax.Array

#: Box passes per axis (Pillow's `gaussian_blur` default).
PASSES = 3


def box_radius(sigma: float, passes: int = PASSES) -> float:
    """Pillow's extended-box radius for a Gaussian of standard deviation `sigma` (float32 arithmetic)."""
    f = np.float32
    sigma2 = f(sigma) * f(sigma) / f(passes)
    big_l = f(np.sqrt(f(12.0) * sigma2 + f(1.0)))
    small_l = f(np.floor((big_l - f(1.0)) / f(2.0)))
    a = (f(2.0) * small_l + f(1.0)) * (small_l * (small_l + f(1.0)) - f(3.0) * sigma2)
    a = a / (f(6.0) * (sigma2 - (small_l + f(1.0)) * (small_l + f(1.0))))
    return float(f(small_l + a))


_BITS = 24  # BoxBlur.c's fixed point


def box_weights(radius: float) -> tuple[int, int, int]:
    """(integer radius r, weight of the 2r + 1 inner taps, weight of the two outer taps) of one pass,
    the weights in 24-bit fixed point."""
    r = int(radius)
    ww = int(np.float32(1 << _BITS) / (np.float32(radius) * np.float32(2.0) + np.float32(1.0)))
    fw = ((1 << _BITS) - (2 * r + 1) * ww) // 2
    return r, ww, fw


def box_entries(n: int, radius: float):
    """One extended-box pass over n samples, edges replicated: (n, n, rows, cols, weights, bits)."""
    r, inner, outer = box_weights(radius)
    offsets = np.arange(-r - 1, r + 2)
    weights = np.where(np.abs(offsets) <= r, inner, outer).astype(np.int64)
    rows = np.repeat(np.arange(n), len(offsets))
    cols = np.clip(rows + np.tile(offsets, n), 0, n - 1)  # Pillow repeats the first and last pixel
    return n, n, rows, cols, np.tile(weights, n), _BITS


def box_band(n: int, radius: float) -> Band:
    return Band(box_entries, (int(n), float(radius)))


def _check_sigma(sigma: float) -> None:
    if not sigma >= 0 or not np.isfinite(sigma):
        raise ValueError(f"blur sigma must be finite and >= 0, got {sigma}")


def gaussian_blur(images: Array, *, sigma: float) -> Array:
    """Differentiable `ImageFilter.GaussianBlur(radius=sigma)` of (N, H, W, 3) RGB in [0, 1].

    Modeled after Pillow's BoxBlur.c (module docstring): three extended-box passes along the
    width, then three along the height, each rounded to 8 bits.

    Args:
      images: (N, H, W, C) float in [0, 1].
      sigma: the Gaussian's standard deviation in pixels (Pillow's `radius`), static; 0 is the identity.

    Returns:
      (N, H, W, C) float in [0, 1], on the 8-bit grid (unless sigma is 0).
    """
    _check_sigma(sigma)
    if sigma == 0:
        return images
    radius = box_radius(sigma)
    _, h, w, _ = images.shape
    x = images * 255.0
    for axis, n in ((2, w), (1, h)):
        band = box_band(n, radius)
        for _ in range(PASSES):
            x = pillow_pass(x, axis, band)
    return x / 255.0


def pillow_gaussian_blur(images: np.ndarray, *, sigma: float) -> np.ndarray:
    """The real thing: `Image.filter(ImageFilter.GaussianBlur(radius=sigma))` of (N, H, W, 3) uint8, uint8 out."""
    _check_sigma(sigma)
    f = ImageFilter.GaussianBlur(radius=float(sigma))
    return np.stack([np.asarray(Image.fromarray(im).filter(f)) for im in np.asarray(images, np.uint8)])
