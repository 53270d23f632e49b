"""Resizing as Pillow's `Image.resize` does it: differentiable (for the attack) and the real thing.

Pillow (libImaging/Resample.c) resamples separably, the horizontal pass first, and stores each pass
as 8-bit integers. For output sample j of an axis resized from n_in to n_out, with
scale = n_in / n_out and filterscale = max(scale, 1) (the kernel widens when downscaling: that is
the antialiasing), the centre is (j + 0.5) * scale, the support is the filter's support times
filterscale, the inputs read are [int(centre - support + 0.5), int(centre + support + 0.5))
clipped to the image, and input i weighs filter((i - centre + 0.5) / filterscale), normalised to
sum 1 over those inputs (so edges renormalise instead of padding). The weights are then rounded
to 22-bit fixed point, the sum is rounded half up and clipped to 0..255. Filters: bicubic (Keys,
a = -0.5, support 2; `Image.resize`'s default), Lanczos (sinc(x) sinc(x / 3), support 3; Pillow's
former ANTIALIAS), bilinear (triangle, support 1).

`resize` computes the same passes with the same fixed-point weights in integers (banded, see
`hasmap_jax.transforms.banded.pillow_pass`), so its values are Pillow's bit for bit, with a
straight-through gradient through each rounding (tests/test_transforms.py).
"""

from __future__ import annotations

import jax
import numpy as np
from PIL import Image

from hasmap_jax.transforms.banded import Band, pillow_pass

Array = jax.Array

_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed point for 8-bit images


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _lanczos(x: np.ndarray) -> np.ndarray:
    # np.sinc is sin(pi x) / (pi x); Pillow's window is [-3, 3).
    return np.where((x >= -3.0) & (x < 3.0), np.sinc(x) * np.sinc(x / 3.0), 0.0)


def _bilinear(x: np.ndarray) -> np.ndarray:
    return np.maximum(0.0, 1.0 - np.abs(x))


#: method -> (kernel, support), as Pillow defines them.
FILTERS = {"bicubic": (_bicubic, 2.0), "lanczos": (_lanczos, 3.0), "bilinear": (_bilinear, 1.0)}

_PIL_METHODS = {"bicubic": "BICUBIC", "lanczos": "LANCZOS", "bilinear": "BILINEAR"}


def _check_method(method: str) -> None:
    if method not in FILTERS:
        raise ValueError(f"resize method: expected one of {sorted(FILTERS)}, got {method!r}")


def pillow_resample(method: str):
    """Pillow's `Image.Resampling` member for `method` ("bicubic", "lanczos", "bilinear")."""
    _check_method(method)
    return getattr(Image.Resampling, _PIL_METHODS[method])


def resample_entries(n_in: int, n_out: int, method: str, start: float = 0.0, stop: float | None = None):
    """Pillow's weights for one axis: (n_out, n_in, rows, cols, weights, bits), integer weights in 22-bit fixed point.

    `start`, `stop`: the source interval resampled (Pillow's `box`; default the whole axis).
    """
    kernel, support = FILTERS[method]
    stop = float(n_in) if stop is None else float(stop)
    scale = (stop - start) / n_out
    filterscale = max(scale, 1.0)
    support = support * filterscale
    ksize = int(np.ceil(support)) * 2 + 1
    centre = start + (np.arange(n_out) + 0.5) * scale
    # C's (int) truncates towards zero; the clip to 0 makes that equal to floor here.
    xmin = np.maximum(np.trunc(centre - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), n_in) - xmin
    x = np.arange(ksize)[None, :]
    valid = x < xmax[:, None]
    w = np.where(valid, kernel((x + xmin[:, None] - centre[:, None] + 0.5) / filterscale), 0.0)
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
    one = float(1 << _PRECISION_BITS)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * one), np.trunc(0.5 + w * one)).astype(np.int64)
    rows = np.broadcast_to(np.arange(n_out)[:, None], w.shape)
    cols = x + xmin[:, None]
    return n_out, n_in, rows[valid], cols[valid], fixed[valid], _PRECISION_BITS


def resample_band(n_in: int, n_out: int, method: str = "bicubic", start: float = 0.0, stop: float | None = None):
    """A `Band` resampling one axis from n_in to n_out samples as Pillow does."""
    _check_method(method)
    return Band(resample_entries, (int(n_in), int(n_out), method, float(start), None if stop is None else float(stop)))


def resize(images: Array, size: tuple[int, int], *, method: str = "bicubic") -> Array:
    """Differentiable `Image.resize((width, height), method)` of (N, H, W, 3) RGB in [0, 1].

    Modeled after Pillow's Resample.c (module docstring): horizontal pass, 8-bit rounding, vertical
    pass, 8-bit rounding; an axis whose size does not change is not resampled (as Pillow).

    Args:
      images: (N, H, W, C) float in [0, 1].
      size: (height, width) of the result, static.
      method: "bicubic" (Pillow's default), "lanczos" or "bilinear".

    Returns:
      (N, *size, C) float in [0, 1], on the 8-bit grid (multiples of 1/255).
    """
    _check_method(method)
    _, h, w, _ = images.shape
    th, tw = (int(s) for s in size)
    x = images * 255.0
    if tw != w:
        x = pillow_pass(x, 2, resample_band(w, tw, method))
    if th != h:
        x = pillow_pass(x, 1, resample_band(h, th, method))
    return x / 255.0


def scaled_size(height: int, width: int, factor: float) -> tuple[int, int]:
    """(height, width) of a photo scaled by `factor`: each side rounded, at least 1."""
    return max(1, round(height * factor)), max(1, round(width * factor))


def downscale(images: Array, *, factor: float, method: str = "bicubic") -> Array:
    """Differentiable downscaling of (N, H, W, 3) in [0, 1] by `factor` (each side, `scaled_size`)."""
    _, h, w, _ = images.shape
    return resize(images, scaled_size(h, w, factor), method=method)


def pillow_resize(images: np.ndarray, size: tuple[int, int], *, method: str = "bicubic") -> np.ndarray:
    """The real thing: Pillow's `Image.resize((width, height), method)` of (N, H, W, 3) uint8, uint8 out."""
    resample = pillow_resample(method)
    th, tw = (int(s) for s in size)
    return np.stack([np.asarray(Image.fromarray(im).resize((tw, th), resample)) for im in np.asarray(images, np.uint8)])


def pillow_downscale(images: np.ndarray, *, factor: float, method: str = "bicubic") -> np.ndarray:
    """Pillow's resize of (N, H, W, 3) uint8 to `scaled_size(H, W, factor)`, uint8 out."""
    images = np.asarray(images, np.uint8)
    return pillow_resize(images, scaled_size(*images.shape[1:3], factor), method=method)
