"""Image batches at the API boundary: dtype, layout and value range checks."""

from __future__ import annotations

import numpy as np


def as_unit_float(images, *, name: str = "images") -> np.ndarray:
    """A batch of RGB images as float32 in [0, 1], NHWC.

    Args:
      images: (N, H, W, 3) uint8 in 0..255 or float in [0, 1] (numpy or JAX array).
      name: how the argument is called in error messages.

    Raises:
      ValueError: wrong rank, channel count, dtype or value range, with what to do instead.
    """
    a = np.asarray(images)
    if a.ndim == 3 and a.shape[-1] == 3:
        raise ValueError(f"{name}: expected a batch (N, H, W, 3), got one image {a.shape}; pass images[None]")
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"{name}: expected RGB images as an (N, H, W, 3) array, got shape {a.shape}")
    if a.shape[0] == 0:
        raise ValueError(f"{name}: an empty batch")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{name}: expected uint8 or float pixels, got dtype {a.dtype}")
    if np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name}: integer dtype {a.dtype} is ambiguous; pass uint8 (0..255) or float in [0, 1]")
    a = a.astype(np.float32)
    if a.size and (not np.isfinite(a).all() or a.min() < 0.0 or a.max() > 1.0):
        raise ValueError(
            f"{name}: float pixels must be finite and in [0, 1], got range "
            f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]; divide 0..255 data by 255"
        )
    return a
