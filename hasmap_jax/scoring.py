"""Quality scores of photos as the attack and the evaluation see them.

A photo of another size than the model's `input_size` is shown to the model resized to cover that
size and centre-cropped (`fit_view`), differentiably; the perturbation and every file stay at the
photo's own resolution. `attack_batch`, `QualityModel.score`, `hasmap score` and `hasmap evaluate`
all score through `view_scores`, with the one "auto" rule of `resolve_view_size`.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.transforms.jpeg import pillow_jpeg
from hasmap_jax.transforms.views import fit_view


def resolve_view_size(model: Any, size: tuple[int, int], view_size: Any = "auto") -> tuple[int, int] | None:
    """The view a model is shown of photos of `size` (height, width).

    "auto": the model's `input_size` when the photos differ from it, else None (as given); None: as
    given; (height, width): that size.
    """
    if isinstance(view_size, str):
        if view_size != "auto":
            raise ValueError(f"view_size: expected 'auto', None or (height, width), got {view_size!r}")
        s = getattr(model, "input_size", None)
        return tuple(s) if s is not None and tuple(s) != tuple(size) else None
    return None if view_size is None else tuple(int(v) for v in view_size)


@functools.partial(jax.jit, static_argnames="view_size")
def view_scores(model: Any, images: jax.Array, view_size: tuple[int, int] | None) -> jax.Array:
    """Scores (N,) of images (N, H, W, 3), uint8 or float in [0, 1], through `fit_view(view_size)`
    (None: as given). Compiled once per shape, dtype and view size."""
    x = images.astype(jnp.float32) / 255.0 if images.dtype == jnp.uint8 else images
    return model.apply(fit_view(x, view_size) if view_size is not None else x)


def score_images(model: Any, images, *, view_size: Any = "auto", jpeg_quality: int | None = None) -> np.ndarray:
    """Quality scores (N,) of uint8 RGB images (N, H, W, 3), optionally after a Pillow JPEG round trip.

    The model sees `fit_view` of each image when `view_size` says so (default: as `attack_batch`).
    """
    images = np.asarray(images, np.uint8)
    if jpeg_quality is not None:
        images = pillow_jpeg(images, int(jpeg_quality))
    vs = resolve_view_size(model, images.shape[1:3], view_size)
    return np.asarray(view_scores(model, jnp.asarray(images), vs))
