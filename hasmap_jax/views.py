"""The quality model's view of a photo of any size: resize to cover, then centre crop (differentiable)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def view_geometry(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of `fit_view` for a height x width photo."""
    th, tw = size
    scale = max(th / height, tw / width)
    rh, rw = max(th, round(height * scale)), max(tw, round(width * scale))
    return rh, rw, (rh - th) // 2, (rw - tw) // 2


def fit_view(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resizes (N, H, W, C) images to cover `size` (antialiased bilinear) and centre-crops them.

    The identity when the images already have that size. Linear in the pixels, so a perturbation
    at the photo's own resolution reaches the model through it with exact gradients. Aspect ratio
    is kept; what falls outside the crop is not seen by the model.
    """
    n, h, w, c = images.shape
    if (h, w) == tuple(size):
        return images
    rh, rw, top, left = view_geometry(h, w, size)
    resized = jax.image.resize(images, (n, rh, rw, c), method="linear", antialias=True)
    return jax.lax.dynamic_slice(resized, (0, top, left, 0), (n, *size, c))


def fit_view_np(images, size):
    """`fit_view` on host arrays (float in [0, 1]), returning numpy."""
    import numpy as np

    return np.asarray(_fit_view_jit(jnp.asarray(images, jnp.float32), tuple(size)))


_fit_view_jit = jax.jit(fit_view, static_argnums=1)
