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
import weakref
from collections.abc import Callable, Sequence
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
      kept: (N,) str, which image came back: "margin" (the least-distorted iterate that succeeded
        with the `confidence` margin, in every JPEG view), "rated_low" (none reached the margin: the
        least-distorted iterate rated low, i.e. score <= threshold, in every view), "original"
        (nothing rated low was found), or "already_low" (the photo met the goal as given: returned
        unchanged, no step spent).
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
    kept: np.ndarray
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


class _ImageState(NamedTuple):
    w: Array  # (H, W, 3) current parameters
    opt: Any  # optimiser state
    best: Array  # (H, W, 3) uint8: least-distorted success (inside the margin kappa), else the original
    best_dist: Array  # its D, inf while none
    best_alpha: Array  # alpha of the search step that produced `best`
    low: Array  # (H, W, 3) uint8: least-distorted iterate rated low (maybe not inside the margin)
    low_dist: Array  # its D, inf while none
    low_alpha: Array
    found: Array  # this search step has found a success
    done: Array  # early-stopped in this search step
    min_loss: Array  # lowest loss seen in this search step
    last_check: Array  # min_loss at the last stall check
    steps: Array  # steps run, all search steps together


class _Search(NamedTuple):
    """The per-image search over c = 1 / alpha (authors' code): x10 on failure until bounded, then bisection."""

    c: Array  # the constant the next search step uses
    c_lo: Array
    c_hi: Array
    alpha_now: Array  # alpha of the search step that is running (or ran last)
    skip: Array  # rated low (inside the margin) as given: returned unchanged, no step spent
    w0: Array | None  # the original in tanh space, kept for restarts when there is more than one search step


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static settings of one attack program (hashable: a jit static argument)."""

    steps: int
    search_steps: int
    optimizer: optax.GradientTransformation | None
    check_every: int
    view_size: tuple[int, int] | None
    jpeg_chain: tuple[int, ...]
    report_every: int = 0  # device loop: call the progress sink every this many steps (0: never)

    def opt(self, learning_rate: Array) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else optax.adam(learning_rate)


def _image_step(
    state, i, x8, sensitivity, alpha, model, threshold, confidence, optimizer, check_every, view_size, jpeg_chain
):
    """One optimisation step for one image (vmapped over the batch by the caller)."""
    x = x8.astype(jnp.float32) / 255.0
    (loss, (dist, lc, score)), grad = jax.value_and_grad(hasmap_loss, has_aux=True)(
        state.w, x, sensitivity, alpha, model, threshold, confidence, view_size, jpeg_chain
    )
    active = ~state.done
    # Keep the iterate just evaluated if it succeeds (L_C == 0) with less distortion than the best,
    # and, as a fallback for when none reaches the margin, the least-distorted one rated low.
    better = active & (lc <= 0.0) & (dist < state.best_dist)
    lower = active & (score <= threshold) & (dist < state.low_dist)
    adv8 = jnp.round(from_tanh_space(state.w) * 255.0).astype(jnp.uint8)
    updates, opt = optimizer.update(grad, state.opt, state.w)
    w = optax.apply_updates(state.w, updates)
    # Early stop when the running minimum of the loss improves by less than 0.01 % over a window
    # of `check_every` steps (the running minimum, since the 8-bit rounding makes single losses noisy).
    min_loss = jnp.minimum(state.min_loss, loss)
    check = (i + 1) % check_every == 0
    stalled = check & (min_loss > 0.9999 * state.last_check)
    keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731  (done images stop changing)
    return _ImageState(
        w=keep(w, state.w),
        opt=jax.tree.map(keep, opt, state.opt),
        best=jnp.where(better, adv8, state.best),
        best_dist=jnp.where(better, dist, state.best_dist),
        best_alpha=jnp.where(better, alpha, state.best_alpha),
        low=jnp.where(lower, adv8, state.low),
        low_dist=jnp.where(lower, dist, state.low_dist),
        low_alpha=jnp.where(lower, alpha, state.low_alpha),
        found=state.found | (active & (lc <= 0.0)),
        done=state.done | (active & stalled),
        min_loss=jnp.where(active, min_loss, state.min_loss),
        last_check=jnp.where(active & check, min_loss, state.last_check),
        steps=state.steps + active.astype(jnp.int32),
    )


# --------------------------------------------------------------------------------------------
# The program's pieces, batched. Both loops (`_attack` on the device, `_HostLoop` from the host)
# are made of exactly these, so they compute the same thing.


def _fresh(x8, w0, learning_rate, state: _ImageState | None, alpha, skip, *, plan: _Plan) -> _ImageState:
    """The state at the start of a search step: from the original image w0 with a new optimiser (as
    C&W do), keeping the best iterates and the step count of earlier search steps."""
    n = x8.shape[0]
    inf = jnp.full((n,), jnp.inf, jnp.float32)
    return _ImageState(
        w=w0,
        opt=jax.vmap(plan.opt(learning_rate).init)(w0),
        best=x8 if state is None else state.best,
        best_dist=inf if state is None else state.best_dist,
        best_alpha=alpha if state is None else state.best_alpha,
        low=x8 if state is None else state.low,
        low_dist=inf if state is None else state.low_dist,
        low_alpha=alpha if state is None else state.low_alpha,
        found=jnp.zeros((n,), jnp.bool_),
        done=skip,
        min_loss=jnp.full((n,), jnp.inf, jnp.float32),
        last_check=jnp.full((n,), jnp.inf, jnp.float32),
        steps=jnp.zeros((n,), jnp.int32) if state is None else state.steps,
    )


def _begin(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, *, plan: _Plan):
    c0 = 1.0 / alpha
    # w0 is computed once: the restarts then begin from bit-identical parameters whichever loop
    # runs them (XLA may evaluate arctanh differently inside and outside a loop).
    w0 = to_tanh_space(x8.astype(jnp.float32) / 255.0)
    # A photo whose loss is already zero (rated low, inside the margin, in every view) needs no
    # change: it is returned as given and spends no step (its loss could never stall either).
    lc0 = jax.vmap(
        lambda w, x, s: hasmap_loss(w, x, s, 1.0, model, threshold, confidence, plan.view_size, plan.jpeg_chain)[1][1]
    )(w0, x8.astype(jnp.float32) / 255.0, sensitivity)
    skip = lc0 <= 0.0
    search = _Search(
        c=c0,
        c_lo=jnp.zeros_like(c0),
        c_hi=jnp.full_like(c0, 1e10),
        alpha_now=alpha,
        skip=skip,
        w0=w0 if plan.search_steps > 1 else None,
    )
    return _fresh(x8, w0, learning_rate, None, alpha, skip, plan=plan), search


def _next_search(x8, learning_rate, state: _ImageState, search: _Search, *, plan: _Plan) -> tuple[_ImageState, _Search]:
    """Bounds c by this search step's outcome and starts the next search step with it."""
    ok = state.found
    c_hi = jnp.where(ok, jnp.minimum(search.c_hi, search.c), search.c_hi)
    c_lo = jnp.where(ok, search.c_lo, jnp.maximum(search.c_lo, search.c))
    c = jnp.where(c_hi < 1e9, (c_lo + c_hi) / 2.0, search.c * 10.0)
    alpha_now = 1.0 / c
    state = _fresh(x8, search.w0, learning_rate, state, alpha_now, search.skip, plan=plan)
    return state, _Search(c, c_lo, c_hi, alpha_now, search.skip, search.w0)


def _batch_step(model, state, i, x8, sensitivity, alpha, threshold, confidence, learning_rate, *, plan: _Plan):
    step = functools.partial(
        _image_step,
        optimizer=plan.opt(learning_rate),
        check_every=plan.check_every,
        view_size=plan.view_size,
        jpeg_chain=plan.jpeg_chain,
    )
    return jax.vmap(step, in_axes=(0, None, 0, 0, 0, None, None, None))(
        state, i, x8, sensitivity, alpha, model, threshold, confidence
    )


#: What `attack_batch` returned per image (`AttackResult.kept`), by code.
KEPT = ("margin", "rated_low", "original", "already_low")


def _outcome(state: _ImageState, search: _Search):
    """The image to return: the least-distorted success inside the margin, else the least-distorted
    iterate rated low, else the original; with the alpha that produced it and which one it is."""
    margin, low = jnp.isfinite(state.best_dist), jnp.isfinite(state.low_dist)
    image = jnp.where(margin[:, None, None, None], state.best, state.low)  # low is the original while none
    used_alpha = jnp.where(margin, state.best_alpha, jnp.where(low, state.low_alpha, search.alpha_now))
    kept = jnp.where(search.skip, 3, jnp.where(margin, 0, jnp.where(low, 1, 2)))
    return image, state.steps, used_alpha, kept


# --------------------------------------------------------------------------------------------
# The device loop: the whole attack as one compiled program (GPU, TPU)


@functools.partial(jax.jit, static_argnames="plan")
def _attack(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, *, plan: _Plan):
    def run(k, state, alpha_now):
        def cond(carry):
            i, s = carry
            return (i < plan.steps) & ~jnp.all(s.done)

        def body(carry):
            i, s = carry
            s = _batch_step(model, s, i, x8, sensitivity, alpha_now, threshold, confidence, learning_rate, plan=plan)
            if plan.report_every:
                done = k * plan.steps + i + 1
                jax.lax.cond(done % plan.report_every == 0, lambda: jax.debug.callback(_report, done), lambda: None)
            return i + 1, s

        return jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1]

    def search(k, carry):
        state, srch = carry
        state, srch = jax.lax.cond(
            k == 0, lambda: (state, srch), lambda: _next_search(x8, learning_rate, state, srch, plan=plan)
        )
        return run(k, state, srch.alpha_now), srch

    state, srch = _begin(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, plan=plan)
    if plan.search_steps == 1:
        return _outcome(run(0, state, srch.alpha_now), srch)
    return _outcome(*jax.lax.fori_loop(0, plan.search_steps, search, (state, srch)))


# Progress from inside the device loop goes to whatever `attack_batch` call is running (one at a
# time per process: the compiled program does not depend on the callback, so it compiles once).
_progress_sink: list[Callable[[int], None]] = []


def _report(done) -> None:
    if _progress_sink:
        _progress_sink[-1](int(done))


# --------------------------------------------------------------------------------------------
# The host loop: one compiled step over donated state, driven from Python (XLA:CPU)
#
# XLA:CPU runs a loop body about 2.6x slower than the same computation outside a loop (measured on
# KonCept-shaped models; no flag changed it), so there the host calls one compiled step per
# iteration. The state stays on the device and is donated (updated in place); the host reads the
# "done" flags only where they can change (the early-stop checks), so no step waits on the host.

_j_begin = jax.jit(_begin, static_argnames="plan")
_j_next_search = jax.jit(_next_search, static_argnames="plan", donate_argnames="state")
_j_step = jax.jit(_batch_step, static_argnames="plan", donate_argnames="state")
_j_outcome = jax.jit(_outcome)


def _attack_host(
    model,
    x8,
    sensitivity,
    alpha,
    threshold,
    confidence,
    learning_rate,
    *,
    plan: _Plan,
    progress: Callable[[int], None] | None = None,
    report_every: int = 5,
):
    # The step does not depend on the number of steps: one compiled step serves every count.
    step_plan = dataclasses.replace(plan, steps=0, search_steps=0, report_every=0)
    begin_plan = dataclasses.replace(plan, steps=0, report_every=0)
    state, search = _j_begin(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, plan=begin_plan)
    for k in range(plan.search_steps):
        if k:
            state, search = _j_next_search(x8, learning_rate, state, search, plan=begin_plan)
        if bool(jnp.all(state.done)):  # every photo already rated low as given
            break
        for i in range(plan.steps):
            state = _j_step(
                model,
                state,
                jnp.int32(i),
                x8,
                sensitivity,
                search.alpha_now,
                threshold,
                confidence,
                learning_rate,
                plan=step_plan,
            )
            checked = (i + 1) % plan.check_every == 0
            if checked and bool(jnp.all(state.done)):
                break
            if progress is not None and (i + 1) % report_every == 0:
                jax.block_until_ready(state.steps)  # report steps that have run, not steps queued
                progress(k * plan.steps + i + 1)
        if progress is not None:
            progress((k + 1) * plan.steps)
    return _j_outcome(state, search)


def default_loop() -> str:
    """The loop `attack_batch(loop="auto")` uses on this process's default backend."""
    return "host" if jax.default_backend() == "cpu" else "device"


def default_compute_dtype():
    """The model's compute dtype `attack_batch(compute_dtype="auto")` uses: bf16 on GPU/TPU, else fp32."""
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32


@functools.partial(jax.jit, static_argnames="view_size")
def _view_scores(model, x8: Array, view_size: tuple[int, int] | None) -> Array:
    x = x8.astype(jnp.float32) / 255.0
    return model.apply(fit_view(x, view_size) if view_size is not None else x)


@jax.jit
def _measure(x8: Array, adv8: Array, sensitivity: Array):
    import dm_pix

    x, adv = x8.astype(jnp.float32) / 255.0, adv8.astype(jnp.float32) / 255.0
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


def sensitivity_maps(sensitivity: Any, x8: Array) -> jax.Array:
    """Per-image maps (N, H, W) in [0, 1] for `attack_batch`'s `sensitivity` argument.

    `x8` is the batch (N, H, W, 3) as uint8, or float in [0, 1]; an array already on its devices
    gives maps placed alike.
    """
    n, h, w = x8.shape[:3]
    if sensitivity is None or (isinstance(sensitivity, str) and sensitivity == "default"):
        from hasmap_jax.sensitivity import default_sensitivity

        sensitivity = default_sensitivity()
    if isinstance(sensitivity, str):
        if sensitivity != "uniform":
            raise ValueError(f"sensitivity: unknown name {sensitivity!r}; use 'default', 'uniform', a model or maps")
        return _uniform_map(x8)
    if hasattr(sensitivity, "apply"):
        return _apply_map(sensitivity, x8)
    maps = np.asarray(sensitivity, np.float32)
    if maps.shape == (h, w):
        maps = np.broadcast_to(maps, (n, h, w))
    if maps.shape != (n, h, w):
        raise ValueError(f"sensitivity: expected maps of shape {(n, h, w)} (one per image), got {maps.shape}")
    if not np.isfinite(maps).all() or maps.min() < 0.0 or maps.max() > 1.0:
        raise ValueError("sensitivity: map values must be finite and in [0, 1]")
    return maps


@jax.jit
def _apply_map(model, x):
    return model.apply(x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x)


@jax.jit
def _uniform_map(x8):
    return jnp.ones(x8.shape[:3], jnp.float32)


# Models prepared for the attack (folded, cast, placed on the mesh's devices), per model object:
# the weights travel to the devices once, not at every call.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_model(model, *, mesh: jax.sharding.Mesh, fold_batchnorm: bool = True, compute_dtype=jnp.float32):
    """`model` as the attack runs it: BatchNorm folded into the convolutions and the given compute
    dtype where the model supports it (`QualityModel.inference`), replicated over `mesh`. Cached
    per model object, mesh and settings, so repeated calls do not copy weights again."""
    from hasmap_jax.parallel import replicate

    key = (tuple(mesh.devices.flat), mesh.axis_names, bool(fold_batchnorm), jnp.dtype(compute_dtype).name)
    try:
        per_model = _prepared.setdefault(model, {})
    except TypeError:  # not weak-referenceable: prepare without caching
        per_model = {}
    if key not in per_model:
        m = model
        if hasattr(m, "inference") and (fold_batchnorm or jnp.dtype(compute_dtype) != jnp.float32):
            m = m.inference(fold_bn=fold_batchnorm, dtype=compute_dtype)
        per_model[key] = replicate(m, mesh=mesh)
    return per_model[key]


class _Reporter:
    """Forwards steps done to a `progress(done, total)` callback, each count once."""

    def __init__(self, progress: Callable[[int, int], None], total: int):
        self.progress, self.total, self.last = progress, total, -1

    def __call__(self, done: int) -> None:
        done = min(int(done), self.total)
        if done != self.last:
            self.last = done
            self.progress(done, self.total)


def _resolve_dtype(compute_dtype):
    if isinstance(compute_dtype, str):
        names = {
            "auto": None,
            "bf16": jnp.bfloat16,
            "bfloat16": jnp.bfloat16,
            "fp32": jnp.float32,
            "float32": jnp.float32,
        }
        if compute_dtype not in names:
            raise ValueError(f"compute_dtype: expected 'auto', 'bf16', 'fp32' or a dtype, got {compute_dtype!r}")
        return names[compute_dtype] or default_compute_dtype()
    dtype = jnp.dtype(compute_dtype)
    if dtype not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"compute_dtype: float32 or bfloat16, got {dtype}")
    return dtype


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
    loop: str = "auto",
    compute_dtype: Any = "auto",
    fold_batchnorm: bool = True,
    progress: Callable[[int, int], None] | None = None,
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
      early_stop: stop an image's search step once the running minimum of its loss improves by less
        than 0.01 % over a window of max(25, steps // 5) steps.
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
      loop: "device" runs all steps in one compiled program (`lax.while_loop`: no host round trip;
        best on GPU/TPU); "host" runs one compiled step per iteration from Python over donated
        state (XLA:CPU runs loop bodies about 2.6x slower than the same step outside a loop);
        "auto" (default): "host" on CPU, else "device". Both give the same images and step counts.
      compute_dtype: the model's compute dtype during the optimisation: "fp32", "bf16" or "auto"
        (default: bf16 on GPU/TPU, fp32 on CPU). The perturbation, the loss terms and the optimiser
        state stay float32, and every reported verdict (`score_after`, `success`, the scores after
        real JPEG) comes from the model as given, in float32.
      fold_batchnorm: run the optimisation on the model with each BatchNorm folded into the
        preceding convolution (`QualityModel.inference`; equal within float rounding).
      progress: called as `progress(steps_done, steps_total)` while the attack runs (every few
        steps; `steps_total` = steps x search_steps; an early stop skips ahead).

    Returns:
      An `AttackResult`. For each image, the successful iterate with the smallest weighted
      distortion (judged after 8-bit rounding); where none reached the margin, the least-distorted
      one rated low; else the original (`AttackResult.kept` says which). A photo that already meets
      the goal as given (rated low, inside the margin, in every JPEG view) comes back unchanged.
    """
    x8 = np.round(as_unit_float(images) * 255.0).astype(np.uint8)
    n = len(x8)
    model = model if model is not None else default_quality_model()
    alphas = np.broadcast_to(np.asarray(alpha, np.float32), (n,)).copy()
    if not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    if steps < 1 or search_steps < 1:
        raise ValueError("steps and search_steps must be at least 1")
    loop = default_loop() if loop == "auto" else loop
    if loop not in ("host", "device"):
        raise ValueError(f"loop: expected 'auto', 'host' or 'device', got {loop!r}")
    dtype = _resolve_dtype(compute_dtype)

    from hasmap_jax.parallel import data_mesh, shard_batch, unshard

    mesh = mesh if mesh is not None else data_mesh()
    judge = prepare_model(model, mesh=mesh, fold_batchnorm=False, compute_dtype=jnp.float32)
    attacker = prepare_model(model, mesh=mesh, fold_batchnorm=fold_batchnorm, compute_dtype=dtype)
    if isinstance(view_size, str):
        if view_size != "auto":
            raise ValueError(f"view_size: expected 'auto', None or (height, width), got {view_size!r}")
        size = getattr(model, "input_size", None)
        view_size = tuple(size) if size is not None and tuple(size) != x8.shape[1:3] else None
    elif view_size is not None:
        view_size = tuple(int(v) for v in view_size)
    jpeg_chain = jpeg_chain_of(robust_jpeg)
    (xs, alphas_s), _ = shard_batch((x8, alphas), mesh=mesh)
    maps = sensitivity_maps(sensitivity, xs)
    if not isinstance(maps, jax.Array):
        (maps,), _ = shard_batch((maps,), mesh=mesh)
    scalars = [jnp.float32(v) for v in (threshold, confidence, learning_rate)]
    total = steps * search_steps
    plan = _Plan(
        steps=steps,
        search_steps=search_steps,
        optimizer=optimizer,
        # A stalled loss stops an image; the window is long enough that the 8-bit loss jumping
        # between "rated low" and "rated high" near the boundary is not mistaken for a stall.
        check_every=max(25, steps // 5) if early_stop else steps + 1,
        view_size=view_size,
        jpeg_chain=jpeg_chain,
        report_every=max(1, min(steps, 5)) if progress is not None and loop == "device" else 0,
    )
    report = None if progress is None else _Reporter(progress, total)
    if loop == "host":
        adv, used, used_alpha, kept = _attack_host(attacker, xs, maps, alphas_s, *scalars, plan=plan, progress=report)
    else:
        if report is not None:
            _progress_sink.append(report)
        try:
            adv, used, used_alpha, kept = _attack(attacker, xs, maps, alphas_s, *scalars, plan=plan)
            jax.block_until_ready(adv)
            jax.effects_barrier()
        finally:
            if report is not None:
                _progress_sink.remove(report)
        if report is not None:
            report(total)
    metrics = _measure(xs, adv, maps)
    metrics["score_before"] = _view_scores(judge, xs, view_size)
    metrics["score_after"] = _view_scores(judge, adv, view_size)
    adv8, used, used_alpha, kept, metrics = unshard((adv, used, used_alpha, kept, metrics), n)
    jpeg = {}
    if jpeg_chain:
        chain_scores = []
        for decoded in pillow_jpeg_chain(adv8, jpeg_chain):
            (decoded_s,), _ = shard_batch((decoded,), mesh=mesh)
            chain_scores.append(unshard(_view_scores(judge, decoded_s, view_size), n))
        jpeg["scores_jpeg_chain"] = np.stack(chain_scores, axis=1)
        jpeg["score_after_jpeg"] = chain_scores[-1]
        jpeg["success_after_jpeg"] = chain_scores[-1] <= threshold
    return AttackResult(
        images=adv8,
        success=metrics["score_after"] <= threshold,
        steps=used,
        alpha=used_alpha,
        kept=np.asarray(KEPT)[kept],
        **metrics,
        **jpeg,
    )
