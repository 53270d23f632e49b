"""The HASMap attack: a sensitivity-weighted Carlini-Wagner L2 attack on a quality classifier.

Shen et al., "Maintaining Human-Imperceptibility of Image Adversarial Attack by using Human-Aware
Sensitivity Map" (MediaEval 2020), after Carlini & Wagner (2017). Per image, minimise over the
perturbation d

    alpha * ||S * d||_2^2 + L_C(x + d),   L_C = max(Z_high - Z_low + kappa, 0),

where S in [0, 1] is the human sensitivity map (broadcast over colour channels), Z the two-logit
view of the quality score (`quality_logits`), so L_C is zero once the image is rated "low".

The whole optimisation is one compiled program: one image's step is written once and `vmap`-ed
over the batch with the model broadcast; `lax.while_loop` runs the steps and `lax.fori_loop` the
optional search over alpha, with no host round trip. Pixels stay in [0, 1] through the tanh
parameterisation x' = (tanh(w) + 1) / 2. The model always sees the image rounded to 8 bits (what a
PNG holds), with a straight-through gradient, so "success" and distortion are those of the image
that is returned, at no extra forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hasmap_jax.images import as_unit_float
from hasmap_jax.jpeg import diff_jpeg, pillow_jpeg_chain
from hasmap_jax.models.koncept import quality_logits
from hasmap_jax.views import fit_view

Array = jax.Array

#: The authors' public code: Adam at 5e-3 on w, 100 steps per search step, 5 search steps.
AUTHORS_DEFAULTS = dict(steps=100, learning_rate=5e-3, search_steps=5, alpha=100.0)


@dataclasses.dataclass(frozen=True)
class AttackResult:
    """What `attack_batch` returns; every array has the batch as its first axis.

    Attributes:
      images: (N, H, W, 3) uint8, the protected images exactly as they would be saved.
      success: (N,) bool, rated not high quality (score <= threshold) as returned (8-bit).
      score_before, score_after: (N,) quality scores of the original and the returned image.
      l2: (N,) ||d||_2 over all pixels and channels, pixels in [0, 1].
      linf: (N,) max |d|, pixels in [0, 1] (1/255 is one 8-bit level).
      weighted_l2: (N,) ||S * d||_2, the distortion the attack minimises (square root of D).
      psnr: (N,) dB (inf where unchanged); ssim: (N,) structural similarity (dm_pix).
      steps: (N,) optimisation steps run for the image, over all search steps.
      alpha: (N,) the trade-off alpha of the search step that produced the returned image (the
        last one tried where none succeeded).
      score_after_jpeg, success_after_jpeg: (N,) the score and the verdict after real JPEG round
        trips (Pillow) at the `robust_jpeg` qualities, one after the other; None when that was not
        asked for.
      scores_jpeg_chain: (N, K) the score after each of the K round trips of `robust_jpeg` (the
        last column is `score_after_jpeg`); None without `robust_jpeg`.
    """

    images: np.ndarray
    success: np.ndarray
    score_before: np.ndarray
    score_after: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    weighted_l2: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    steps: np.ndarray
    alpha: np.ndarray
    score_after_jpeg: np.ndarray | None = None
    success_after_jpeg: np.ndarray | None = None
    scores_jpeg_chain: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


# --------------------------------------------------------------------------------------------
# The per-image pieces (written for one image, vmapped over the batch)


def to_tanh_space(x: Array) -> Array:
    """w with (tanh(w) + 1) / 2 == x, for x in [0, 1] (clipped off the ends, where atanh is infinite)."""
    return jnp.arctanh(jnp.clip(2.0 * x - 1.0, -1.0 + 1e-6, 1.0 - 1e-6))


def from_tanh_space(w: Array) -> Array:
    return (jnp.tanh(w) + 1.0) / 2.0


def quantize(x: Array) -> Array:
    """Rounds to 8-bit levels with a straight-through gradient (identity in the backward pass)."""
    return x + jax.lax.stop_gradient(jnp.round(x * 255.0) / 255.0 - x)


def weighted_distortion(d: Array, sensitivity: Array) -> Array:
    """D(d) = ||S * d||_2^2 for one image: d (H, W, 3), S (H, W) broadcast over channels."""
    return jnp.sum(jnp.square(sensitivity[..., None] * d))


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
    if not chain or any(isinstance(q, bool) or not isinstance(q, (int, np.integer)) or not 1 <= q <= 100 for q in chain):
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
    """The paper's objective for one image at parameters w; also returns (D, L_C, score).

    The model sees the 8-bit rounded image, so the returned D and score are those of what is saved.
    With a `jpeg_chain`, L_C is summed over the image and its JPEG round trips (`model_views`), so
    success needs every one rated low (an expectation over these transformations, up to a factor).
    """
    adv = quantize(from_tanh_space(w))
    dist = weighted_distortion(adv - x, sensitivity)
    scores = model.apply(model_views(adv, view_size, jpeg_chain))
    lc = jnp.sum(jax.vmap(cw_loss, in_axes=(0, None))(quality_logits(scores, threshold), confidence))
    return alpha * dist + lc, (dist, lc, scores[0])


class _ImageState(NamedTuple):
    w: Array  # (H, W, 3) current parameters
    opt: Any  # optimiser state
    best: Array  # (H, W, 3) best successful image so far (8-bit levels), else the original
    best_dist: Array  # its D, inf while none
    best_alpha: Array  # alpha of the search step that produced `best`
    found: Array  # this search step has found a success
    done: Array  # early-stopped in this search step
    min_loss: Array  # lowest loss seen in this search step
    last_check: Array  # min_loss at the last stall check
    steps: Array  # steps run, all search steps together


def _image_step(
    state, i, x, sensitivity, alpha, model, threshold, confidence, optimizer, check_every, view_size, jpeg_chain
):
    """One optimisation step for one image (vmapped over the batch by the caller)."""
    (loss, (dist, lc, score)), grad = jax.value_and_grad(hasmap_loss, has_aux=True)(
        state.w, x, sensitivity, alpha, model, threshold, confidence, view_size, jpeg_chain
    )
    active = ~state.done
    # Keep the iterate just evaluated if it succeeds (L_C == 0) with less distortion than the best.
    better = active & (lc <= 0.0) & (dist < state.best_dist)
    adv = jnp.round(from_tanh_space(state.w) * 255.0) / 255.0
    updates, opt = optimizer.update(grad, state.opt, state.w)
    w = optax.apply_updates(state.w, updates)
    # Early stop when the loss stalls: checked every steps/10 steps as the authors did, but on the
    # running minimum, since the 8-bit rounding makes single losses noisy.
    min_loss = jnp.minimum(state.min_loss, loss)
    check = (i + 1) % check_every == 0
    stalled = check & (min_loss > 0.9999 * state.last_check)
    keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731  (done images stop changing)
    return _ImageState(
        w=keep(w, state.w),
        opt=jax.tree.map(keep, opt, state.opt),
        best=jnp.where(better, adv, state.best),
        best_dist=jnp.where(better, dist, state.best_dist),
        best_alpha=jnp.where(better, alpha, state.best_alpha),
        found=state.found | (active & (lc <= 0.0)),
        done=state.done | (active & stalled),
        min_loss=jnp.where(active, min_loss, state.min_loss),
        last_check=jnp.where(active & check, min_loss, state.last_check),
        steps=state.steps + active.astype(jnp.int32),
    )


# --------------------------------------------------------------------------------------------
# The compiled batch attack


@functools.partial(
    jax.jit, static_argnames=("steps", "search_steps", "optimizer", "early_stop", "view_size", "jpeg_chain")
)
def _attack(
    model,
    x: Array,
    sensitivity: Array,
    alpha: Array,
    threshold: Array,
    confidence: Array,
    learning_rate: Array,
    *,
    steps: int,
    search_steps: int,
    optimizer: optax.GradientTransformation | None,
    early_stop: bool,
    view_size: tuple[int, int] | None = None,
    jpeg_chain: tuple[int, ...] = (),
):
    opt = optimizer if optimizer is not None else optax.adam(learning_rate)
    # The authors checked every steps/10 steps. Near the decision boundary the 8-bit loss jumps
    # between "rated low" and "rated high" for a while, which such short windows mistake for a
    # stall (measured on the test models: early iterates with uniform noise were kept), so the
    # window is steps/5 and at least 25 steps.
    check_every = max(25, steps // 5) if early_stop else steps + 1
    n = x.shape[0]
    image_step = jax.vmap(
        functools.partial(
            _image_step, optimizer=opt, check_every=check_every, view_size=view_size, jpeg_chain=jpeg_chain
        ),
        in_axes=(0, None, 0, 0, 0, None, None, None),
    )
    w0 = to_tanh_space(x)

    def fresh(state: _ImageState | None) -> _ImageState:
        # Each search step restarts from the original image with a new optimiser (as C&W do).
        zeros = jnp.zeros((n,), jnp.bool_)
        best = x if state is None else state.best
        return _ImageState(
            w=w0,
            opt=jax.vmap(opt.init)(w0),
            best=best,
            best_dist=jnp.full((n,), jnp.inf) if state is None else state.best_dist,
            best_alpha=alpha if state is None else state.best_alpha,
            found=zeros,
            done=zeros,
            min_loss=jnp.full((n,), jnp.inf),
            last_check=jnp.full((n,), jnp.inf),
            steps=jnp.zeros((n,), jnp.int32) if state is None else state.steps,
        )

    def run(state: _ImageState, alpha_now: Array) -> _ImageState:
        def cond(carry):
            i, s = carry
            return (i < steps) & ~jnp.all(s.done)

        def body(carry):
            i, s = carry
            return i + 1, image_step(s, i, x, sensitivity, alpha_now, model, threshold, confidence)

        return jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1]

    # Search over the constant c = 1 / alpha as the authors do: x10 on failure until an upper
    # bound exists, then bisection.
    def search(k, carry):
        state, c, c_lo, c_hi, alpha_last = carry
        alpha_now = 1.0 / c
        state = run(fresh(state), alpha_now)
        ok = state.found
        c_hi = jnp.where(ok, jnp.minimum(c_hi, c), c_hi)
        c_lo = jnp.where(ok, c_lo, jnp.maximum(c_lo, c))
        bounded = c_hi < 1e9
        c = jnp.where(bounded, (c_lo + c_hi) / 2.0, c * 10.0)
        return state, c, c_lo, c_hi, alpha_now

    c0 = 1.0 / alpha
    init = (fresh(None), c0, jnp.zeros_like(c0), jnp.full_like(c0, 1e10), alpha)
    state, _, _, _, alpha_last = jax.lax.fori_loop(0, search_steps, search, init)
    out = state.best
    used_alpha = jnp.where(jnp.isfinite(state.best_dist), state.best_alpha, alpha_last)
    return out, state.steps, used_alpha


@functools.partial(jax.jit, static_argnames="view_size")
def _view_scores(model, x: Array, view_size: tuple[int, int] | None) -> Array:
    return model.apply(fit_view(x, view_size) if view_size is not None else x)


@jax.jit
def _measure(x: Array, adv: Array, sensitivity: Array):
    import dm_pix

    d = adv - x
    flat = d.reshape(d.shape[0], -1)
    return dict(
        l2=jnp.linalg.norm(flat, axis=1),
        linf=jnp.max(jnp.abs(flat), axis=1),
        weighted_l2=jnp.sqrt(jax.vmap(weighted_distortion)(d, sensitivity)),
        psnr=dm_pix.psnr(x, adv),
        ssim=dm_pix.ssim(x, adv),
    )


# --------------------------------------------------------------------------------------------
# Public API


@functools.lru_cache(maxsize=1)
def default_quality_model():
    """The quality model shipped in `weights/default` (loaded once per process)."""
    from hasmap_jax.loading import load_quality_model

    return load_quality_model("default")


def sensitivity_maps(sensitivity: Any, x: np.ndarray) -> jax.Array:
    """Per-image maps (N, H, W) in [0, 1] for `attack_batch`'s `sensitivity` argument."""
    n, h, w = x.shape[:3]
    if sensitivity is None or (isinstance(sensitivity, str) and sensitivity == "default"):
        from hasmap_jax.sensitivity import default_sensitivity

        sensitivity = default_sensitivity()
    if isinstance(sensitivity, str):
        if sensitivity != "uniform":
            raise ValueError(f"sensitivity: unknown name {sensitivity!r}; use 'default', 'uniform', a model or maps")
        return jnp.ones((n, h, w), jnp.float32)
    if hasattr(sensitivity, "apply"):
        return _apply_map(sensitivity, jnp.asarray(x))
    maps = np.asarray(sensitivity, np.float32)
    if maps.shape == (h, w):
        maps = np.broadcast_to(maps, (n, h, w))
    if maps.shape != (n, h, w):
        raise ValueError(f"sensitivity: expected maps of shape {(n, h, w)} (one per image), got {maps.shape}")
    if not np.isfinite(maps).all() or maps.min() < 0.0 or maps.max() > 1.0:
        raise ValueError("sensitivity: map values must be finite and in [0, 1]")
    return jnp.asarray(maps)


@jax.jit
def _apply_map(model, x):
    return model.apply(x)


def attack_batch(
    images,
    alpha: float | Any = 10.0,
    *,
    model=None,
    sensitivity: Any = None,
    threshold: float = 50.0,
    steps: int = 100,
    learning_rate: float = 1e-2,
    search_steps: int = 1,
    confidence: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    early_stop: bool = True,
    view_size: tuple[int, int] | str | None = "auto",
    robust_jpeg: int | Sequence[int] | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> AttackResult:
    """Protects a batch of photos: HASMap, compiled end to end and sharded over devices.

    Args:
      images: (N, H, W, 3) RGB, uint8 or float in [0, 1] (float input is rounded to 8 bits first:
        the attack returns 8-bit images and measures against what it was given).
      alpha: the trade-off alpha (a scalar or one per image): larger keeps the image closer to the
        original and succeeds less often (paper, Table 1: 10 ... 50).
      model: a `QualityModel` (`load_quality_model`); default: the shipped default model.
      sensitivity: "default" / None (the default map model), "uniform" (plain L2, the C&W attack),
        a model with `apply(images) -> maps` (e.g. a `SensitivityModel`), or maps (N, H, W) in [0, 1].
      threshold: tau; an image is rated high quality when its score exceeds it (MediaEval 2020: 50).
      steps: optimisation steps per search step.
      learning_rate: Adam's learning rate on w (the authors used 5e-3 with 5 x 100 steps).
      search_steps: 1 keeps alpha fixed (the paper); more searches per image over c = 1 / alpha as
        the authors' code did (x10 on failure until bounded, then bisection), keeping the best.
      confidence: kappa, a margin: success needs Z_high - Z_low + kappa <= 0, i.e.
        score <= threshold - kappa / 2.
      optimizer: an optax transformation to use instead of Adam(learning_rate) (static: a new object
        compiles anew).
      early_stop: stop an image's search step once its loss stalls (the authors' rule).
      view_size: (height, width) the model sees: the photo resized to cover it and centre-cropped
        (`fit_view`), differentiably, while the perturbation lives at the photo's own resolution.
        "auto" (default): the model's `input_size` when the photos differ from it, else as given;
        None: as given. Each distinct photo size is its own compiled program.
      robust_jpeg: a JPEG quality to survive (e.g. 90, as the MediaEval protocol applies), or a
        sequence of qualities applied one after the other (e.g. (85, 90): saved as JPEG 85, then
        re-encoded at 90): the loss also scores the image after each differentiable round trip
        (`diff_jpeg`), success needs all of them rated low (with the `confidence` margin), and the
        result reports the score after the real (Pillow) round trips. A margin pays off here: the
        least-distorted success sits just below the threshold, where the difference between the
        approximation and libjpeg's integer pipeline can still tip it back.
      mesh: a `jax.sharding.Mesh` with a "data" axis to shard the batch over; default: all local
        devices. Results do not depend on it.

    Returns:
      An `AttackResult`. For each image, the successful iterate with the smallest weighted
      distortion (judged after 8-bit rounding), or the original image if none succeeded.
    """
    x = np.round(as_unit_float(images) * 255.0) / 255.0
    x = x.astype(np.float32)
    n = len(x)
    model = model if model is not None else default_quality_model()
    alphas = np.broadcast_to(np.asarray(alpha, np.float32), (n,)).copy()
    if not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    if steps < 1 or search_steps < 1:
        raise ValueError("steps and search_steps must be at least 1")

    from hasmap_jax.parallel import data_mesh, replicate, shard_batch, unshard

    mesh = mesh if mesh is not None else data_mesh()
    model = replicate(model, mesh=mesh)
    if isinstance(view_size, str):
        if view_size != "auto":
            raise ValueError(f"view_size: expected 'auto', None or (height, width), got {view_size!r}")
        size = getattr(model, "input_size", None)
        view_size = tuple(size) if size is not None and tuple(size) != x.shape[1:3] else None
    elif view_size is not None:
        view_size = tuple(int(v) for v in view_size)
    jpeg_chain = jpeg_chain_of(robust_jpeg)
    maps = sensitivity_maps(sensitivity, x)
    (xs, maps_s, alphas_s), _ = shard_batch((x, maps, alphas), mesh=mesh)
    scalars = [jnp.float32(v) for v in (threshold, confidence, learning_rate)]
    adv, used, used_alpha = _attack(
        model,
        xs,
        maps_s,
        alphas_s,
        *scalars,
        steps=steps,
        search_steps=search_steps,
        optimizer=optimizer,
        early_stop=early_stop,
        view_size=view_size,
        jpeg_chain=jpeg_chain,
    )
    metrics = _measure(xs, adv, maps_s)
    metrics["score_before"] = _view_scores(model, xs, view_size)
    metrics["score_after"] = _view_scores(model, adv, view_size)
    adv, used, used_alpha, metrics = unshard((adv, used, used_alpha, metrics), n)
    adv8 = np.round(adv * 255.0).astype(np.uint8)
    jpeg = {}
    if jpeg_chain:
        chain_scores = []
        for decoded in pillow_jpeg_chain(adv8, jpeg_chain):
            (decoded_s,), _ = shard_batch((decoded.astype(np.float32) / 255.0,), mesh=mesh)
            chain_scores.append(unshard(_view_scores(model, decoded_s, view_size), n))
        jpeg["scores_jpeg_chain"] = np.stack(chain_scores, axis=1)
        jpeg["score_after_jpeg"] = chain_scores[-1]
        jpeg["success_after_jpeg"] = chain_scores[-1] <= threshold
    return AttackResult(
        images=adv8,
        success=metrics["score_after"] <= threshold,
        steps=used,
        alpha=used_alpha,
        **metrics,
        **jpeg,
    )
