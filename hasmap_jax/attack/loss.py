"""The attack's objectives for one image: HASMap's penalty (Shen et al., MediaEval 2020, after
Carlini & Wagner 2017) and the minimum-norm method's margin.

Per image, HASMap minimises over the perturbation d

    alpha * ||S * d||_2^2 + L_C(x + d),   L_C = max(Z_high - Z_low + kappa, 0),

where S in [0, 1] is the human sensitivity map (broadcast over colour channels), Z the two-logit
view of the quality score (`quality_logits`), so L_C is zero once the image is rated "low". Pixels
stay in [0, 1] through the tanh parameterisation x' = (tanh(w) + 1) / 2; the model always sees the
image rounded to 8 bits (what a PNG holds), with a straight-through gradient.

The minimum-norm method (`hasmap_jax.attack.minnorm`) moves d itself inside the box and follows
`margin_loss`: the same per-view terms Z_high - Z_low + kappa, signed, so that it keeps a gradient
once the image is rated low.

Each function here is written for one image; `hasmap_jax.attack.loop` vmaps them over the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from hasmap_jax.metrics import weighted_distortion
from hasmap_jax.models.koncept import quality_logits
from hasmap_jax.transforms.chain import apply_chain, model_view_size
from hasmap_jax.transforms.jpeg import diff_jpeg
from hasmap_jax.transforms.profiles import EOT, jpeg_qualities
from hasmap_jax.transforms.views import fit_view

Array = jax.Array

__all__ = [
    "checkpoint_views",
    "cw_loss",
    "from_tanh_space",
    "hasmap_loss",
    "jpeg_chain_of",
    "margin_loss",
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


def model_views(
    adv: Array,
    view_size: tuple[int, int] | None,
    jpeg_chain: tuple[int, ...] = (),
    eot: EOT | None = None,
    draw: Array | None = None,
) -> Array:
    """What the model is shown of one image (H, W, 3): (1 + K, h, w, 3), K transformed views.

    View 0 is the image itself; with a `jpeg_chain`, view k is it after the first k (differentiable)
    JPEG round trips, one after the other (e.g. (85, 90): saved as JPEG 85, then re-encoded at 90).
    With an `eot`, the next views are its prefix's result (if any), then each of its `always` chains,
    then one chain per group: the `draw`-th (draw: (groups,) int32, traced, the same for the whole
    batch, so each is one `lax.switch` branch run), or every chain of every group when `draw` is
    None. Each view is resized and centre-cropped to `view_size` (see `fit_view`), or, where the
    model takes the photo as given (None), a view of another size (a downscaled photo) to the
    photo's size.
    """
    views = [adv[None]]
    for q in jpeg_chain:
        views.append(diff_jpeg(views[-1], q))
    views = jnp.concatenate(views)
    views = fit_view(views, view_size) if view_size is not None else views
    if eot is None:
        return views
    target = model_view_size(adv.shape[:2], view_size)

    def seen(chain, x):
        return fit_view(apply_chain(x, chain), target)

    base = apply_chain(adv[None], eot.prefix)
    extra = [fit_view(base, target)] if eot.prefix else []
    extra += [seen(c, base) for c in eot.always]
    for g, group in enumerate(eot.groups):
        if draw is None:
            extra += [seen(c, base) for c in group]
        else:
            # One branch runs (the index is not batched under vmap); XLA compiles each chain once.
            extra.append(jax.lax.switch(draw[g], [functools.partial(seen, c) for c in group], base))
    return jnp.concatenate([views, *extra])


def checkpoint_views(adv: Array, view_size: tuple[int, int] | None, chains: tuple) -> Array:
    """What the model is shown of one image (H, W, 3) to check it: (1 + K, h, w, 3), the image
    itself, then the image after each of the K chains (a profile's checkpoints, differentiable and
    deterministic: Pillow's arithmetic but for JPEG's approximation), each as `model_views` shows it."""
    target = model_view_size(adv.shape[:2], view_size)
    photo = fit_view(adv[None], view_size) if view_size is not None else adv[None]
    return jnp.concatenate([photo, *(fit_view(apply_chain(adv[None], c), target) for c in chains)])


def jpeg_chain_of(robust_jpeg: int | Sequence[int] | None) -> tuple[int, ...]:
    """`attack_batch`'s `robust_jpeg` as a tuple of qualities (empty: off); checks the values."""
    return jpeg_qualities(robust_jpeg, what="robust_jpeg")


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
    eot: EOT | None = None,
    draw: Array | None = None,
    *,
    per_view: bool = False,
) -> tuple[Array, tuple[Array, ...]]:
    """The paper's objective for one image at parameters w; also returns (D, L_C, highest score),
    and with `per_view` the scores (1 + K,) of every view (`model_views`' order) after them.

    The model sees the 8-bit rounded image, so the returned D and scores are those of what is saved;
    the score returned is the highest over the image and its JPEG views (rated low <=> <= threshold).
    With a `jpeg_chain` or an `eot`, L_C is summed over the image and its transformed views
    (`model_views`; `draw` picks this step's chain of each EOT group), so success needs every one
    rated low (an expectation over these transformations, up to a factor; with drawn views, over
    this step's draw).
    """
    adv = quantize(from_tanh_space(w))
    dist = weighted_distortion(adv - x, sensitivity)
    scores = model.apply(model_views(adv, view_size, jpeg_chain, eot, draw))
    lc = jnp.sum(jax.vmap(cw_loss, in_axes=(0, None))(quality_logits(scores, threshold), confidence))
    aux = (dist, lc, jnp.max(scores))
    return alpha * dist + lc, (*aux, scores) if per_view else aux


def margin_loss(
    d: Array,
    x: Array,
    sensitivity: Array,
    model: Any,
    threshold: Array,
    confidence: Array,
    view_size: tuple[int, int] | None = None,
    jpeg_chain: tuple[int, ...] = (),
    eot: EOT | None = None,
    draw: Array | None = None,
    *,
    per_view: bool = False,
) -> tuple[Array, tuple[Array, ...]]:
    """The minimum-norm method's loss for one image at the perturbation d (x + d inside [0, 1]):
    zero exactly at the boundary of success, positive outside it; also returns (D, L_C, highest
    score) and with `per_view` the scores of every view, as `hasmap_loss` does.

    With per-view margins m_v = Z_high - Z_low + kappa = 2 (score_v - tau) + kappa (`cw_loss`
    without the clip), the loss is sum_v max(m_v, 0) while some view fails (the C&W term L_C: its
    gradient pulls every failing view) and max_v m_v once all pass (the view nearest to failing
    keeps a gradient, so the budget's projection has something to trade against). The model sees
    x + d rounded to 8 bits, as in `hasmap_loss`.
    """
    adv = quantize(jnp.clip(x + d, 0.0, 1.0))
    dist = weighted_distortion(adv - x, sensitivity)
    scores = model.apply(model_views(adv, view_size, jpeg_chain, eot, draw))
    logits = quality_logits(scores, threshold)
    m = logits[:, 0] - logits[:, 1] + confidence
    lc = jnp.sum(jnp.maximum(m, 0.0))
    aux = (dist, lc, jnp.max(scores))
    return lc + jnp.minimum(jnp.max(m), 0.0), (*aux, scores) if per_view else aux
