"""Centre crops rescaled to the original size, and horizontal flips: differentiable and the real thing (Pillow).

A photo site that crops a little and shows the photo at its former size does
`image.crop(box).resize(image.size, BICUBIC)`; `center_crop_resize` is that, differentiably: an
exact slice, then `hasmap_jax.transforms.resize.resize` (Pillow's passes in integers, so the same
pixels as Pillow). A flip is exact.
"""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image

from hasmap_jax.transforms.resize import pillow_resample, resize

Array = jax.Array


def crop_box(height: int, width: int, fraction: float) -> tuple[int, int, int, int]:
    """(top, left, crop height, crop width) of the centred crop keeping `fraction` of each side (rounded, >= 1)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    ch, cw = max(1, round(height * fraction)), max(1, round(width * fraction))
    return (height - ch) // 2, (width - cw) // 2, ch, cw


def center_crop_resize(images: Array, *, fraction: float, method: str = "bicubic") -> Array:
    """Differentiable centre crop keeping `fraction` of each side, resized back to (H, W) as Pillow does.

    Args:
      images: (N, H, W, C) float in [0, 1].
      fraction: the share of each side kept, in (0, 1], static (`crop_box`).
      method: the resampling filter ("bicubic", Pillow's default; "lanczos", "bilinear").

    Returns:
      (N, H, W, C) float in [0, 1], on the 8-bit grid.
    """
    _, h, w, _ = images.shape
    top, left, ch, cw = crop_box(h, w, fraction)
    return resize(images[:, top : top + ch, left : left + cw], (h, w), method=method)


def pillow_center_crop_resize(images: np.ndarray, *, fraction: float, method: str = "bicubic") -> np.ndarray:
    """The real thing: `Image.crop(box).resize(size, method)` of (N, H, W, 3) uint8, uint8 out."""
    images = np.asarray(images, np.uint8)
    h, w = images.shape[1:3]
    top, left, ch, cw = crop_box(h, w, fraction)
    resample = pillow_resample(method)
    box = (left, top, left + cw, top + ch)
    return np.stack([np.asarray(Image.fromarray(im).crop(box).resize((w, h), resample)) for im in images])


def hflip(images: Array) -> Array:
    """Mirror image left to right of (N, H, W, C) (exact; `Image.transpose(FLIP_LEFT_RIGHT)`)."""
    return images[:, :, ::-1]


def pillow_hflip(images: np.ndarray) -> np.ndarray:
    """The real thing: `Image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)` of (N, H, W, 3) uint8, uint8 out."""
    flip = Image.Transpose.FLIP_LEFT_RIGHT
    return np.stack([np.asarray(Image.fromarray(im).transpose(flip)) for im in np.asarray(images, np.uint8)])
