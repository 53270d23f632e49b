"""The HASMap objective for one image (Shen et al., MediaEval 2020, after Carlini & Wagner 2017).

Per image, minimise over the perturbation d

    alpha * ||S * d||_2^2 + L_C(x + d),   L_C = max(Z_high - Z_low + kappa, 0),

where S in [0, 1] is the human sensitivity map (broadcast over colour channels), Z the two-logit
view of the quality score (`quality_logits`), so L_C is zero once the image is rated "low". Pixels
stay in [0, 1] through the tanh parameterisation x' = (tanh(w) + 1) / 2; the model always sees the
image rounded to 8 bits (what a PNG holds), with a straight-through gradient.

Each function here is written for one image; `hasmap_jax.attack.loop` vmaps them over the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.metrics import weighted_distortion
from hasmap_jax.models.koncept import quality_logits
from hasmap_jax.transforms.jpeg import diff_jpeg
from hasmap_jax.transforms.views import fit_view

Array = jax.Array

__all__ = [
    "cw_loss",
    "from_tanh_space",
    "hasmap_loss",
    "jpeg_chain_of",
    "model_views",
    "quantize",
    "to_tanh_space",
    "weighted_distortion",
]


def to_tanh_space(x: Array) -> Array:
    """w with (tanh(w) + 1) / 2 == x, for x in [0, 1] (clipped off the ends, where atanh is infinite)."""
    return jnp.arctanh(jnp.clip(2.0 * x - 1.0, -1.0 + 1e-6, 1.0 - 1e-6))


def from_tanh_space(w: Array) -> Array:
    return (jnp.tanh(w) + 1.0) / 2.0


def quantize(x: Array) -> Array:
    """Rounds to 8-bit levels with a straight-through gradient (identity in the backward pass)."""
    return x + jax.lax.stop_gradient(jnp.round(x * 255.0) / 255.0 - x)


def cw_loss(logits: Array, confidence: Array | float = 0.0) -> Array:
    """Targeted C&W loss towards "low" for one image's [high, low] logits: max(Z_h - Z_l + kappa, 0)."""
    return jnp.maximum(logits[0] - logits[1] + confidence, 0.0)


def model_views(adv: Array, view_size: tuple[int, int] | None, jpeg_chain: tuple[int, ...] = ()) -> Array:
    """What the model is shown of one image (H, W, 3): (1 + K, h, w, 3) for K JPEG qualities.

    View 0 is the image itself; view k is it after the first k (differentiable) JPEG round trips of
    `jpeg_chain`, one after the other (e.g. (85, 90): saved as JPEG 85, then re-encoded at 90).
    Each is resized and centre-cropped to `view_size` when given (see `fit_view`).
    """
    views = [adv[None]]
    for q in jpeg_chain:
        views.append(diff_jpeg(views[-1], q))
    views = jnp.concatenate(views)
    return fit_view(views, view_size) if view_size is not None else views


def jpeg_chain_of(robust_jpeg: int | Sequence[int] | None) -> tuple[int, ...]:
    """`attack_batch`'s `robust_jpeg` as a tuple of qualities (empty: off); checks the values."""
    if robust_jpeg is None:
        return ()
    chain = (robust_jpeg,) if np.ndim(robust_jpeg) == 0 else tuple(robust_jpeg)
    if not chain or any(
        isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100 for q in chain
    ):
        raise ValueError(f"robust_jpeg: a JPEG quality in 1..100 or a sequence of them, got {robust_jpeg!r}")
    return tuple(int(q) for q in chain)


def hasmap_loss(
    w: Array,
    x: Array,
    sensitivity: Array,
    alpha: Array,
    model: Any,
    threshold: Array,
    confidence: Array,
    view_size: tuple[int, int] | None = None,
    jpeg_chain: tuple[int, ...] = (),
) -> tuple[Array, tuple[Array, Array, Array]]:
    """The paper's objective for one image at parameters w; also returns (D, L_C, highest score).

    The model sees the 8-bit rounded image, so the returned D and scores are those of what is saved;
    the score returned is the highest over the image and its JPEG views (rated low <=> <= threshold).
    With a `jpeg_chain`, L_C is summed over the image and its JPEG round trips (`model_views`), so
    success needs every one rated low (an expectation over these transformations, up to a factor).
    """
    adv = quantize(from_tanh_space(w))
    dist = weighted_distortion(adv - x, sensitivity)
    scores = model.apply(model_views(adv, view_size, jpeg_chain))
    lc = jnp.sum(jax.vmap(cw_loss, in_axes=(0, None))(quality_logits(scores, threshold), confidence))
    return alpha * dist + lc, (dist, lc, jnp.max(scores))
