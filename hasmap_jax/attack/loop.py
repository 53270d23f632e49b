"""The attack's optimisation loop, batched: the steps, the search over alpha, and two drivers.

Both drivers are made of the same pieces (`begin`, `batch_step`, `next_search`, `outcome`), so they
compute the same thing:

- `run_device`: the whole attack as one compiled program (`lax.while_loop` over the steps,
  `lax.fori_loop` over the search), with no host round trip: GPU, TPU.
- `run_host`: one compiled step per iteration, called from Python over donated state: XLA:CPU runs
  a loop body about 2.6x slower than the same computation outside a loop (measured on KonCept-shaped
  models; no flag changed it). The host reads the "done" flags only where they can change.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hasmap_jax.attack.loss import cw_loss, from_tanh_space, hasmap_loss, to_tanh_space
from hasmap_jax.models.koncept import quality_logits
from hasmap_jax.transforms.profiles import EOT

Array = jax.Array


class ImageState(NamedTuple):
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
    # With EOT draws: each drawable chain's score the last time it was drawn in this search step
    # (inf before), laid out as `EOT.group_offsets`; None without draws.
    drawn: Array | None = None


class Search(NamedTuple):
    """The per-image search over c = 1 / alpha (authors' code): x10 on failure until bounded, then bisection."""

    c: Array  # the constant the next search step uses
    c_lo: Array
    c_hi: Array
    alpha_now: Array  # alpha of the search step that is running (or ran last)
    skip: Array  # rated low (inside the margin) as given: returned unchanged, no step spent
    w0: Array | None  # the original in tanh space, kept for restarts when there is more than one search step


@dataclasses.dataclass(frozen=True)
class Plan:
    """Static settings of one attack program (hashable: a jit static argument)."""

    steps: int
    search_steps: int
    optimizer: optax.GradientTransformation | None
    check_every: int
    view_size: tuple[int, int] | None
    jpeg_chain: tuple[int, ...]
    report_every: int = 0  # device loop: call the progress sink every this many steps (0: never)
    eot: EOT | None = None  # transformed views besides the JPEG chain (`model_views`)

    def opt(self, learning_rate: Array) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else optax.adam(learning_rate)


def image_step(
    state,
    i,
    x8,
    sensitivity,
    alpha,
    model,
    threshold,
    confidence,
    optimizer,
    check_every,
    view_size,
    jpeg_chain,
    eot=None,
    draw=None,
):
    """One optimisation step for one image (vmapped over the batch by the caller; `draw`, this
    step's EOT draw, is the same for the whole batch)."""
    x = x8.astype(jnp.float32) / 255.0
    args = (state.w, x, sensitivity, alpha, model, threshold, confidence, view_size, jpeg_chain, eot, draw)
    active = ~state.done
    if draw is None:
        (loss, (dist, lc, score)), grad = jax.value_and_grad(hasmap_loss, has_aux=True)(*args)
        success, rated_low, drawn = lc <= 0.0, score <= threshold, state.drawn
    else:
        objective = functools.partial(hasmap_loss, per_view=True)
        (loss, (dist, lc, score, scores)), grad = jax.value_and_grad(objective, has_aux=True)(*args)
        # One draw says little about the chains not drawn: an iterate counts as a success when this
        # step's views succeed and every drawable chain did the last time it was drawn (not before
        # each has been drawn once in this search step). Otherwise the least-distorted "success"
        # would be the first lucky draw. The loss and its gradient are this step's views only.
        drawn = state.drawn.at[eot.group_offsets + draw].set(scores[-len(eot.groups) :])
        drawn_lc = jax.vmap(cw_loss, in_axes=(0, None))(quality_logits(drawn, threshold), confidence)
        success = (lc <= 0.0) & jnp.all(drawn_lc <= 0.0)
        rated_low = (score <= threshold) & jnp.all(drawn <= threshold)
    # Keep the iterate just evaluated if it succeeds (L_C == 0) with less distortion than the best,
    # and, as a fallback for when none reaches the margin, the least-distorted one rated low.
    better = active & success & (dist < state.best_dist)
    lower = active & rated_low & (dist < state.low_dist)
    adv8 = jnp.round(from_tanh_space(state.w) * 255.0).astype(jnp.uint8)
    updates, opt = optimizer.update(grad, state.opt, state.w)
    w = optax.apply_updates(state.w, updates)
    # Early stop when the running minimum of the loss improves by less than 0.01 % over a window
    # of `check_every` steps (the running minimum, since the 8-bit rounding makes single losses noisy).
    min_loss = jnp.minimum(state.min_loss, loss)
    check = (i + 1) % check_every == 0
    stalled = check & (min_loss > 0.9999 * state.last_check)
    keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731  (done images stop changing)
    return ImageState(
        w=keep(w, state.w),
        opt=jax.tree.map(keep, opt, state.opt),
        best=jnp.where(better, adv8, state.best),
        best_dist=jnp.where(better, dist, state.best_dist),
        best_alpha=jnp.where(better, alpha, state.best_alpha),
        low=jnp.where(lower, adv8, state.low),
        low_dist=jnp.where(lower, dist, state.low_dist),
        low_alpha=jnp.where(lower, alpha, state.low_alpha),
        found=state.found | (active & success),
        done=state.done | (active & stalled),
        min_loss=jnp.where(active, min_loss, state.min_loss),
        last_check=jnp.where(active & check, min_loss, state.last_check),
        steps=state.steps + active.astype(jnp.int32),
        drawn=None if drawn is None else keep(drawn, state.drawn),
    )


# --------------------------------------------------------------------------------------------
# The program's pieces, batched. Both loops (`run_device` on the device, `_HostLoop` from the host)
# are made of exactly these, so they compute the same thing.


def _fresh(x8, w0, learning_rate, state: ImageState | None, alpha, skip, *, plan: Plan) -> ImageState:
    """The state at the start of a search step: from the original image w0 with a new optimiser (as
    C&W do), keeping the best iterates and the step count of earlier search steps."""
    n = x8.shape[0]
    inf = jnp.full((n,), jnp.inf, jnp.float32)
    return ImageState(
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
        drawn=_unseen(n, plan.eot),
    )


def _unseen(n: int, eot: EOT | None) -> Array | None:
    """`ImageState.drawn` before any draw: every chain's verdict unknown (inf: not a success)."""
    if eot is None or not eot.groups:
        return None
    return jnp.full((n, eot.drawable), jnp.inf, jnp.float32)


def begin(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, *, plan: Plan):
    c0 = 1.0 / alpha
    # w0 is computed once: the restarts then begin from bit-identical parameters whichever loop
    # runs them (XLA may evaluate arctanh differently inside and outside a loop).
    w0 = to_tanh_space(x8.astype(jnp.float32) / 255.0)
    # A photo whose loss is already zero (rated low, inside the margin, in every view: with EOT,
    # every chain it can draw) needs no change: it is returned as given and spends no step (its
    # loss could never stall either).
    lc0 = jax.vmap(
        lambda w, x, s: hasmap_loss(
            w, x, s, 1.0, model, threshold, confidence, plan.view_size, plan.jpeg_chain, plan.eot
        )[1][1]
    )(w0, x8.astype(jnp.float32) / 255.0, sensitivity)
    skip = lc0 <= 0.0
    search = Search(
        c=c0,
        c_lo=jnp.zeros_like(c0),
        c_hi=jnp.full_like(c0, 1e10),
        alpha_now=alpha,
        skip=skip,
        w0=w0 if plan.search_steps > 1 else None,
    )
    return _fresh(x8, w0, learning_rate, None, alpha, skip, plan=plan), search


def next_search(x8, learning_rate, state: ImageState, search: Search, *, plan: Plan) -> tuple[ImageState, Search]:
    """Bounds c by this search step's outcome and starts the next search step with it."""
    ok = state.found
    c_hi = jnp.where(ok, jnp.minimum(search.c_hi, search.c), search.c_hi)
    c_lo = jnp.where(ok, search.c_lo, jnp.maximum(search.c_lo, search.c))
    c = jnp.where(c_hi < 1e9, (c_lo + c_hi) / 2.0, search.c * 10.0)
    alpha_now = 1.0 / c
    state = _fresh(x8, search.w0, learning_rate, state, alpha_now, search.skip, plan=plan)
    return state, Search(c, c_lo, c_hi, alpha_now, search.skip, search.w0)


def batch_step(model, state, i, x8, sensitivity, alpha, threshold, confidence, learning_rate, *, plan: Plan):
    # The EOT draw comes from the step index inside the compiled step, so the host loop and the
    # device loop draw the same chains, and each search step replays the same sequence of draws
    # (its alpha is then the only difference from the last one).
    draw = plan.eot.draw(i) if plan.eot is not None and plan.eot.groups else None
    step = functools.partial(
        image_step,
        optimizer=plan.opt(learning_rate),
        check_every=plan.check_every,
        view_size=plan.view_size,
        jpeg_chain=plan.jpeg_chain,
        eot=plan.eot,
        draw=draw,
    )
    return jax.vmap(step, in_axes=(0, None, 0, 0, 0, None, None, None))(
        state, i, x8, sensitivity, alpha, model, threshold, confidence
    )


#: What `attack_batch` returned per image (`AttackResult.kept`), by code.
KEPT = ("margin", "rated_low", "original", "already_low")


def outcome(state: ImageState, search: Search):
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
def _device_program(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, *, plan: Plan):
    def run(k, state, alpha_now):
        def cond(carry):
            i, s = carry
            return (i < plan.steps) & ~jnp.all(s.done)

        def body(carry):
            i, s = carry
            s = batch_step(model, s, i, x8, sensitivity, alpha_now, threshold, confidence, learning_rate, plan=plan)
            if plan.report_every:
                done = k * plan.steps + i + 1
                jax.lax.cond(done % plan.report_every == 0, lambda: jax.debug.callback(_report, done), lambda: None)
            return i + 1, s

        return jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1]

    def search(k, carry):
        state, srch = carry
        state, srch = jax.lax.cond(
            k == 0, lambda: (state, srch), lambda: next_search(x8, learning_rate, state, srch, plan=plan)
        )
        return run(k, state, srch.alpha_now), srch

    state, srch = begin(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, plan=plan)
    if plan.search_steps == 1:
        return outcome(run(0, state, srch.alpha_now), srch)
    return outcome(*jax.lax.fori_loop(0, plan.search_steps, search, (state, srch)))


# Progress from inside the device loop goes to whatever `run_device` call is running (one at a
# time per process: the compiled program does not depend on the callback, so it compiles once).
_progress_sink: list[Callable[[int], None]] = []


def _report(done) -> None:
    if _progress_sink:
        _progress_sink[-1](int(done))


def run_device(
    model,
    x8,
    sensitivity,
    alpha,
    threshold,
    confidence,
    learning_rate,
    *,
    plan: Plan,
    progress: Callable[[int], None] | None = None,
):
    """The attack as one compiled program; returns `outcome`'s (image, steps, alpha, kept code).

    `progress(steps_done)` is called from inside the program every `plan.report_every` steps (when
    that is set) and once at the end.
    """
    if progress is not None:
        _progress_sink.append(progress)
    try:
        out = _device_program(model, x8, sensitivity, alpha, threshold, confidence, learning_rate, plan=plan)
        jax.block_until_ready(out)
        jax.effects_barrier()
    finally:
        if progress is not None:
            _progress_sink.remove(progress)
    if progress is not None:
        progress(plan.steps * plan.search_steps)
    return out


# --------------------------------------------------------------------------------------------
# The host loop: one compiled step over donated state, driven from Python (XLA:CPU)
#
# XLA:CPU runs a loop body about 2.6x slower than the same computation outside a loop (measured on
# KonCept-shaped models; no flag changed it), so there the host calls one compiled step per
# iteration. The state stays on the device and is donated (updated in place); the host reads the
# "done" flags only where they can change (the early-stop checks), so no step waits on the host.

_j_begin = jax.jit(begin, static_argnames="plan")
_j_next_search = jax.jit(next_search, static_argnames="plan", donate_argnames="state")
_j_step = jax.jit(batch_step, static_argnames="plan", donate_argnames="state")
_j_outcome = jax.jit(outcome)


def run_host(
    model,
    x8,
    sensitivity,
    alpha,
    threshold,
    confidence,
    learning_rate,
    *,
    plan: Plan,
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
