"""The attack's optimisation loop, batched: two methods, one rule for what is kept, two drivers.

Methods (`Plan.method`):

- "cw", the paper's: Adam on w (x' = (tanh(w) + 1) / 2) over alpha * ||S * d||^2 + L_C, one fixed
  alpha per photo, optionally the authors' search over c = 1 / alpha (`next_search`);
- "fmn", the minimum-norm method (`hasmap_jax.attack.minnorm`): a budget on ||S * d|| per photo,
  adapted at every step from the success signal.

A step has three pieces, each written once for one image and vmapped over the batch:

- `evaluate`: the model's views of the 8-bit candidate (what would be saved), the loss and its
  gradient, and whether this step's views rate it low (with the margin: a success);
- `check`, only with views drawn at random (`EOT.groups`): success is then decided by a fixed,
  deterministic set of views, the photo and the profile's checkpoints (the operations the result
  is judged after, in their differentiable form: Pillow's arithmetic but for JPEG's approximation),
  never by this step's draw: one lucky draw, or a chain's stale verdict from an earlier step, would
  make a "success" that a real operation overturns, and an unlucky one would move the budget for
  nothing. A candidate is checked where it could change what is kept (or the budget) and its own
  view already passes; the batch runs the check only at steps where some photo needs it;
- `update`: keep the least-distorted success (and the least-distorted iterate rated low), move the
  parameters, stop a photo whose progress has stalled.

Both drivers are made of these pieces, so they compute the same thing:

- `run_device`: the whole attack as one compiled program (`lax.while_loop` over the steps,
  `lax.fori_loop` over the search, `lax.cond` around the check), with no host round trip: GPU, TPU.
- `run_host`: compiled pieces called from Python over donated state: XLA:CPU runs a loop body
  markedly slower than the same computation outside a loop, whatever its flags (docs/results.md,
  "CPU: the host loop against a PyTorch peer"). The host reads the "done" flags only where they
  can change, and with drawn views one flag per step (whether any photo needs the check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import threading
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hasmap_jax.attack.config import METHODS, AttackConfig
from hasmap_jax.attack.loss import (
    checkpoint_views,
    cw_loss,
    from_tanh_space,
    hasmap_loss,
    margin_loss,
    model_views,
    to_tanh_space,
)
from hasmap_jax.attack.minnorm import MinNorm, budget_step, initial_budget
from hasmap_jax.models.koncept import quality_logits
from hasmap_jax.transforms.profiles import EOT

Array = jax.Array


class Inputs(NamedTuple):
    """The batch's data, one pytree (`IN_AXES`: the batch axis first, scalars shared)."""

    x8: Array  # (N, H, W, 3) uint8 originals
    maps: Array  # (N, H, W) sensitivity maps in [0, 1]
    alpha: Array  # (N,) the trade-off ("cw")
    threshold: Array  # () tau
    confidence: Array  # () kappa
    learning_rate: Array  # () Adam's ("cw")
    steps: Array  # () int32 steps per search step (the "fmn" schedules anneal over them)


IN_AXES = Inputs(0, 0, 0, None, None, None, None)


class ImageState(NamedTuple):
    params: Array  # (H, W, 3) "cw": w in tanh space; "fmn": d, the continuous perturbation
    opt: Any  # "cw": the optimiser state; "fmn": its `Budget`
    best: Array  # (H, W, 3) uint8: least-distorted success (inside the margin kappa), else the original
    best_dist: Array  # its D, inf while none
    best_alpha: Array  # "cw": alpha of the search step that produced `best`; "fmn": see `outcome`
    low: Array  # (H, W, 3) uint8: least-distorted iterate rated low (maybe not inside the margin)
    low_dist: Array  # its D, inf while none
    low_alpha: Array
    found: Array  # a success was found ("cw": in this search step)
    done: Array  # stopped (stalled) in this search step
    measure: Array  # what the stall check watches: "cw" the running minimum loss, "fmn" best_dist
    last_check: Array  # `measure` at the last stall check
    steps: Array  # steps run, all search steps together
    first: Array  # steps run before the first success (-1 while none)


class Candidate(NamedTuple):
    """One image's iterate as `evaluate` found it."""

    adv8: Array  # (H, W, 3) uint8: what would be saved
    dist: Array  # its D = ||S * d||^2
    loss: Array  # the method's loss
    grad: Array  # (H, W, 3) the loss's gradient with respect to `ImageState.params`
    success: Array  # rated low inside the margin (in this step's views; in the checked views once checked)
    rated_low: Array  # rated low (score <= threshold), likewise
    photo_success: Array  # the photo's own view (view 0) inside the margin
    photo_low: Array  # the photo's own view rated low
    drawn_success: Array  # this step's views inside the margin (`success` before any check)


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
    method: str = "cw"
    minnorm: MinNorm | None = None  # the "fmn" settings (default `MinNorm()`)
    checks: tuple = ()  # with drawn views: the chains success is checked on (the profile's checkpoints)
    verdict_views: int = 0  # > 0: success is read from the step's first this many views (`with_checkpoints`)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method: one of {', '.join(METHODS)}, got {self.method!r}")
        if self.method == "fmn" and self.minnorm is None:
            object.__setattr__(self, "minnorm", MinNorm())
        if self.draws and not self.checks:
            raise ValueError("views drawn at random need checkpoints to decide success on (Plan.checks)")

    def opt(self, learning_rate: Array) -> optax.GradientTransformation:
        return self.optimizer if self.optimizer is not None else optax.adam(learning_rate)

    @property
    def draws(self) -> bool:
        """Views are drawn at random per step."""
        return self.eot is not None and bool(self.eot.groups)

    @property
    def checks_apart(self) -> bool:
        """Success is decided by a separate check on the checkpoints (views drawn at random, and the
        step's views do not hold the checkpoints themselves)."""
        return self.draws and not self.verdict_views

    def draw(self, i: Array) -> Array | None:
        return self.eot.draw(i) if self.draws else None

    @property
    def views(self) -> tuple:
        """`model_views`' static arguments after the image: (view_size, jpeg_chain, eot)."""
        return self.view_size, self.jpeg_chain, self.eot


def with_checkpoints(eot: EOT, checks: tuple) -> tuple[EOT, int]:
    """`eot` with the checkpoints `checks` scored at every step ahead of its other chains, and how
    many of the step's views then decide success: the photo, the prefix's result (if any) and each
    checkpoint, the views `checkpoint_views` shows (`MinNorm.follow_checkpoints`). Every checkpoint
    starts with the prefix (a profile's `saved_as` makes them so); (eot, 0) where one does not."""
    n = len(eot.prefix)
    if not checks or any(tuple(c[:n]) != tuple(eot.prefix) for c in checks):
        return eot, 0
    rest = tuple(tuple(c[n:]) for c in checks if len(c) > n)  # the prefix itself is already a view
    return dataclasses.replace(eot, always=rest + tuple(eot.always)), 1 + bool(eot.prefix) + len(rest)


# --------------------------------------------------------------------------------------------
# The pieces, for one image


def _evaluate_one(model, state: ImageState, inp: Inputs, draw, plan: Plan) -> Candidate:
    x = inp.x8.astype(jnp.float32) / 255.0
    if plan.method == "cw":
        objective = functools.partial(hasmap_loss, alpha=inp.alpha)
        adv8 = jnp.round(from_tanh_space(state.params) * 255.0)
    else:
        objective = margin_loss
        adv8 = jnp.round(jnp.clip(x + state.params, 0.0, 1.0) * 255.0)
    (loss, (dist, lc, score, scores)), grad = jax.value_and_grad(
        lambda p: objective(
            p,
            x=x,
            sensitivity=inp.maps,
            model=model,
            threshold=inp.threshold,
            confidence=inp.confidence,
            view_size=plan.view_size,
            jpeg_chain=plan.jpeg_chain,
            eot=plan.eot,
            draw=draw,
            per_view=True,
        ),
        has_aux=True,
    )(state.params)
    photo = cw_loss(quality_logits(scores[0], inp.threshold), inp.confidence) <= 0.0
    drawn = lc <= 0.0
    if plan.verdict_views:  # the photo and the checkpoints lead the step's views
        decide = scores[: plan.verdict_views]
        margins = jax.vmap(cw_loss, in_axes=(0, None))(quality_logits(decide, inp.threshold), inp.confidence)
        success, rated_low = jnp.sum(margins) <= 0.0, jnp.max(decide) <= inp.threshold
    else:
        success, rated_low = drawn, score <= inp.threshold
    return Candidate(
        adv8.astype(jnp.uint8),
        dist,
        loss,
        grad,
        success,
        rated_low,
        photo,
        scores[0] <= inp.threshold,
        drawn,
    )


def _verdict_one(model, image8: Array, inp: Inputs, plan: Plan) -> tuple[Array, Array, Array]:
    """(success, rated low, L_C) of one 8-bit image in the views that decide success: with views
    drawn at random, the image and its checkpoints (`checkpoint_views`); else every view of the
    profile (the image, every JPEG of the chain, every chain of the EOT)."""
    x = image8.astype(jnp.float32) / 255.0
    views = checkpoint_views(x, plan.view_size, plan.checks) if plan.draws else model_views(x, *plan.views)
    scores = model.apply(views)
    lc = jnp.sum(jax.vmap(cw_loss, in_axes=(0, None))(quality_logits(scores, inp.threshold), inp.confidence))
    return lc <= 0.0, jnp.max(scores) <= inp.threshold, lc


def _update_one(state: ImageState, cand: Candidate, inp: Inputs, i, plan: Plan) -> ImageState:
    active = ~state.done
    better = active & cand.success & (cand.dist < state.best_dist)
    lower = active & cand.rated_low & (cand.dist < state.low_dist)
    if plan.method == "cw":
        updates, opt = plan.opt(inp.learning_rate).update(cand.grad, state.opt, state.params)
        params = optax.apply_updates(state.params, updates)
        # The running minimum, since the 8-bit rounding makes single losses noisy.
        measure = jnp.minimum(state.measure, cand.loss)
        tolerance = 1e-4
        alpha = inp.alpha
    else:
        x = inp.x8.astype(jnp.float32) / 255.0
        # Where this step's views pass but the checked ones do not, the linear distance along this
        # step's gradient says nothing about what is left (it would overshoot): the budget grows
        # by 1 + gamma instead, as after a failure once a success was found.
        grow = state.found | (cand.drawn_success & ~cand.success)
        params, opt = budget_step(
            state.params,
            cand.grad,
            x,
            inp.maps,
            cand.loss,
            cand.success,
            grow,
            state.opt,
            i,
            inp.steps,
            plan.minnorm,
        )
        measure = jnp.where(better, cand.dist, state.best_dist)
        tolerance = plan.minnorm.tolerance
        alpha = _equivalent_alpha(cand, inp.maps, plan.minnorm)
    # Early stop when `measure` improves by less than `tolerance` over `check_every` steps.
    check = (i + 1) % plan.check_every == 0
    stalled = check & (measure > (1.0 - tolerance) * state.last_check)
    keep = lambda new, old: jnp.where(active, new, old)  # noqa: E731  (done images stop changing)
    return ImageState(
        params=keep(params, state.params),
        opt=jax.tree.map(keep, opt, state.opt),
        best=jnp.where(better, cand.adv8, state.best),
        best_dist=jnp.where(better, cand.dist, state.best_dist),
        best_alpha=jnp.where(better, alpha, state.best_alpha),
        low=jnp.where(lower, cand.adv8, state.low),
        low_dist=jnp.where(lower, cand.dist, state.low_dist),
        low_alpha=jnp.where(lower, alpha, state.low_alpha),
        found=state.found | (active & cand.success),
        done=state.done | (active & stalled),
        measure=keep(measure, state.measure),
        last_check=jnp.where(active & check, measure, state.last_check),
        steps=state.steps + active.astype(jnp.int32),
        first=jnp.where(active & cand.success & (state.first < 0), state.steps, state.first),
    )


def _equivalent_alpha(cand: Candidate, maps: Array, cfg: MinNorm) -> Array:
    """The alpha at which the paper's objective alpha * ||u||^2 + L_C would be stationary at this
    iterate, linearised: ||grad_u L_C|| / (2 ||u||) with u = S * d (the trade-off the photo needed)."""
    g = cand.grad / jnp.maximum(maps, cfg.min_sensitivity)[..., None]
    return jnp.linalg.norm(g) / (2.0 * jnp.sqrt(jnp.maximum(cand.dist, 1e-30)))


# --------------------------------------------------------------------------------------------
# The pieces, batched. Both drivers are made of exactly these.

_in_state = 0  # the state and candidates have the batch axis first on every leaf


def evaluate(model, state: ImageState, i, inp: Inputs, *, plan: Plan) -> Candidate:
    """This step's candidates; the EOT draw comes from the step index inside the compiled step, so
    both drivers draw the same chains, and each search step replays the same sequence of draws."""
    one = functools.partial(_evaluate_one, draw=plan.draw(i), plan=plan)
    return jax.vmap(one, in_axes=(None, _in_state, IN_AXES))(model, state, inp)


def needs_check(state: ImageState, cand: Candidate, *, plan: Plan) -> Array:
    """(N,) bool: the candidates to check. With views drawn at random: where the photo's own view
    passes (a success needs it) and the verdict could change the state: a success that could be
    kept, be this search step's first, or move the "fmn" budget; an iterate rated low that could be
    kept as the fallback. Else none (the step's views are every view)."""
    if not plan.checks_apart:
        return jnp.zeros_like(state.done)
    relevant = (cand.dist < state.best_dist) | ~state.found | (plan.method == "fmn")
    return ~state.done & ((cand.photo_success & relevant) | (cand.photo_low & (cand.dist < state.low_dist)))


def check(model, cand: Candidate, needed: Array, inp: Inputs, *, plan: Plan) -> Candidate:
    """Success decided on the checked views (`_verdict_one`) where `needed`, whatever this step
    drew; the others count as neither a success nor rated low (`needs_check`: they could not change
    the state)."""
    ok, low, _ = jax.vmap(functools.partial(_verdict_one, plan=plan), in_axes=(None, 0, IN_AXES))(model, cand.adv8, inp)
    return cand._replace(success=needed & ok, rated_low=needed & low)


def unchecked(cand: Candidate) -> Candidate:
    """No candidate needed the check (the other branch of `check`)."""
    return cand._replace(success=jnp.zeros_like(cand.success), rated_low=jnp.zeros_like(cand.rated_low))


def update(state: ImageState, cand: Candidate, i, inp: Inputs, *, plan: Plan) -> ImageState:
    one = functools.partial(_update_one, plan=plan)
    return jax.vmap(one, in_axes=(_in_state, _in_state, IN_AXES, None))(state, cand, inp, i)


def batch_step(model, state: ImageState, i, inp: Inputs, *, plan: Plan) -> ImageState:
    """One whole step in one program (the device loop's body; the host loop's step without draws)."""
    cand = evaluate(model, state, i, inp, plan=plan)
    if plan.checks_apart:
        needed = needs_check(state, cand, plan=plan)
        cand = jax.lax.cond(
            jnp.any(needed), lambda: check(model, cand, needed, inp, plan=plan), lambda: unchecked(cand)
        )
    return update(state, cand, i, inp, plan=plan)


def _fresh(inp: Inputs, w0, state: ImageState | None, alpha, skip, *, plan: Plan) -> ImageState:
    """The state at the start of a search step: from the original image (w0 for "cw") with a new
    optimiser (as C&W do), keeping the best iterates and the step count of earlier search steps."""
    n = inp.x8.shape[0]
    inf = jnp.full((n,), jnp.inf, jnp.float32)
    if plan.method == "cw":
        params, opt = w0, jax.vmap(plan.opt(inp.learning_rate).init)(w0)
    else:
        params = jnp.zeros(inp.x8.shape, jnp.float32)
        opt = jax.tree.map(lambda v: jnp.broadcast_to(v, (n,)), initial_budget())
    return ImageState(
        params=params,
        opt=opt,
        best=inp.x8 if state is None else state.best,
        best_dist=inf if state is None else state.best_dist,
        best_alpha=alpha if state is None else state.best_alpha,
        low=inp.x8 if state is None else state.low,
        low_dist=inf if state is None else state.low_dist,
        low_alpha=alpha if state is None else state.low_alpha,
        found=jnp.zeros((n,), jnp.bool_),
        done=skip,
        measure=inf,
        last_check=inf,
        steps=jnp.zeros((n,), jnp.int32) if state is None else state.steps,
        first=jnp.full((n,), -1, jnp.int32) if state is None else state.first,
    )


def begin(model, inp: Inputs, *, plan: Plan) -> tuple[ImageState, Search]:
    """The first state; photos already rated low (inside the margin, in every view that decides
    success: `_verdict_one`) need no change: returned as given, no step spent."""
    skip = jax.vmap(functools.partial(_verdict_one, plan=plan), in_axes=(None, 0, IN_AXES))(model, inp.x8, inp)[0]
    # w0 is computed once: the restarts then begin from bit-identical parameters whichever loop
    # runs them (XLA may evaluate arctanh differently inside and outside a loop).
    w0 = to_tanh_space(inp.x8.astype(jnp.float32) / 255.0) if plan.method == "cw" else None
    c0 = 1.0 / inp.alpha
    search = Search(
        c=c0,
        c_lo=jnp.zeros_like(c0),
        c_hi=jnp.full_like(c0, 1e10),
        alpha_now=inp.alpha,
        skip=skip,
        w0=w0 if plan.search_steps > 1 else None,
    )
    return _fresh(inp, w0, None, inp.alpha, skip, plan=plan), search


def next_search(inp: Inputs, state: ImageState, search: Search, *, plan: Plan) -> tuple[ImageState, Search]:
    """Bounds c by this search step's outcome and starts the next search step with it ("cw")."""
    ok = state.found
    c_hi = jnp.where(ok, jnp.minimum(search.c_hi, search.c), search.c_hi)
    c_lo = jnp.where(ok, search.c_lo, jnp.maximum(search.c_lo, search.c))
    c = jnp.where(c_hi < 1e9, (c_lo + c_hi) / 2.0, search.c * 10.0)
    alpha_now = 1.0 / c
    state = _fresh(inp._replace(alpha=alpha_now), search.w0, state, alpha_now, search.skip, plan=plan)
    return state, Search(c, c_lo, c_hi, alpha_now, search.skip, search.w0)


#: What `attack_batch` returned per image (`AttackResult.kept`), by code.
KEPT = ("margin", "rated_low", "original", "already_low")


def outcome(state: ImageState, search: Search):
    """The image to return: the least-distorted success inside the margin, else the least-distorted
    iterate rated low, else the original; with the steps run, the alpha that produced it ("fmn":
    the equivalent alpha at it, `_equivalent_alpha`), which one it is (a `KEPT` code) and the
    steps run before the first success (-1: none)."""
    margin, low = jnp.isfinite(state.best_dist), jnp.isfinite(state.low_dist)
    image = jnp.where(margin[:, None, None, None], state.best, state.low)  # low is the original while none
    used_alpha = jnp.where(margin, state.best_alpha, jnp.where(low, state.low_alpha, search.alpha_now))
    kept = jnp.where(search.skip, 3, jnp.where(margin, 0, jnp.where(low, 1, 2)))
    return image, state.steps, used_alpha, kept, state.first


def _inputs_for(inp: Inputs, search: Search) -> Inputs:
    return inp._replace(alpha=search.alpha_now)


# --------------------------------------------------------------------------------------------
# The device loop: the whole attack as one compiled program (GPU, TPU)


@functools.partial(jax.jit, static_argnames="plan")
def _device_program(model, inp: Inputs, channel, *, plan: Plan):
    def run(k, state, inp_k):
        def cond(carry):
            i, s = carry
            return (i < plan.steps) & ~jnp.all(s.done)

        def body(carry):
            i, s = carry
            s = batch_step(model, s, i, inp_k, plan=plan)
            if plan.report_every:
                done = k * plan.steps + i + 1
                jax.lax.cond(
                    done % plan.report_every == 0,
                    lambda: jax.debug.callback(_PROGRESS.report, channel, done),
                    lambda: None,
                )
            return i + 1, s

        return jax.lax.while_loop(cond, body, (jnp.int32(0), state))[1]

    def search(k, carry):
        state, srch = carry
        state, srch = jax.lax.cond(k == 0, lambda: (state, srch), lambda: next_search(inp, state, srch, plan=plan))
        return run(k, state, _inputs_for(inp, srch)), srch

    state, srch = begin(model, inp, plan=plan)
    if plan.search_steps == 1:
        return outcome(run(0, state, inp), srch)
    return outcome(*jax.lax.fori_loop(0, plan.search_steps, search, (state, srch)))


class _Channels:
    """Where progress from inside a running device program goes: the program takes a channel
    number as an input, and its callback hands each count to the sink opened under that number.

    A compiled program cannot hold a Python callable that changes from call to call without being
    compiled anew for each; a number it is given can. Calls running at the same time (threads)
    each have their own channel."""

    def __init__(self):
        self._sinks: dict[int, Callable[[int], None]] = {}
        self._numbers = itertools.count()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def open(self, sink: Callable[[int], None] | None):
        """A channel number for the duration of the block (-1: nowhere)."""
        if sink is None:
            yield -1
            return
        with self._lock:
            number = next(self._numbers)
            self._sinks[number] = sink
        try:
            yield number
        finally:
            with self._lock:
                del self._sinks[number]

    def report(self, channel, done) -> None:
        sink = self._sinks.get(int(channel))
        if sink is not None:
            sink(int(done))


_PROGRESS = _Channels()


def run_device(model, inp: Inputs, *, plan: Plan, progress: Callable[[int], None] | None = None):
    """The attack as one compiled program; returns `outcome`'s tuple.

    `progress(steps_done)` is called from inside the program every `plan.report_every` steps (when
    that is set) and once at the end.
    """
    with _PROGRESS.open(progress) as channel:
        out = _device_program(model, inp, jnp.int32(channel), plan=plan)
        jax.block_until_ready(out)
        jax.effects_barrier()
    if progress is not None:
        progress(plan.steps * plan.search_steps)
    return out


# --------------------------------------------------------------------------------------------
# The host loop: compiled pieces over donated state, driven from Python (XLA:CPU)
#
# XLA:CPU runs a loop body markedly slower than the same computation outside a loop, whatever its
# flags (docs/results.md, "CPU: the host loop against a PyTorch peer"), so there the host calls one
# compiled step per iteration. The state stays on the device and is donated (updated in place). Without drawn views
# the host reads the "done" flags only where they can change (the early-stop checks), so no step
# waits on the host; with drawn views it reads one flag per step, whether any candidate needs the
# check (a `lax.cond` there would run its branch as a nested computation, the slow case).

_j_begin = jax.jit(begin, static_argnames="plan")
_j_next_search = jax.jit(next_search, static_argnames="plan", donate_argnames="state")
_j_step = jax.jit(batch_step, static_argnames="plan", donate_argnames="state")
_j_outcome = jax.jit(outcome)


@functools.partial(jax.jit, static_argnames="plan")
def _j_evaluate(model, state, i, inp, *, plan):
    cand = evaluate(model, state, i, inp, plan=plan)
    return cand, needs_check(state, cand, plan=plan)


@functools.partial(jax.jit, static_argnames=("plan", "checked"), donate_argnames="state")
def _j_finish(model, state, cand, needed, i, inp, *, plan, checked):
    cand = check(model, cand, needed, inp, plan=plan) if checked else unchecked(cand)
    return update(state, cand, i, inp, plan=plan)


def _host_step(model, state, i, inp, plan):
    if not plan.checks_apart:
        return _j_step(model, state, i, inp, plan=plan)
    cand, needed = _j_evaluate(model, state, i, inp, plan=plan)
    return _j_finish(model, state, cand, needed, i, inp, plan=plan, checked=bool(jnp.any(needed)))


def run_host(
    model,
    inp: Inputs,
    *,
    plan: Plan,
    progress: Callable[[int], None] | None = None,
    report_every: int = 5,
):
    # The step does not depend on the number of steps (the schedules read it from `inp`): one
    # compiled step serves every count.
    step_plan = dataclasses.replace(plan, steps=0, search_steps=0, report_every=0)
    begin_plan = dataclasses.replace(plan, steps=0, report_every=0)
    state, search = _j_begin(model, inp, plan=begin_plan)
    for k in range(plan.search_steps):
        if k:
            state, search = _j_next_search(inp, state, search, plan=begin_plan)
        if bool(jnp.all(state.done)):  # every photo already rated low as given
            break
        inp_k = _inputs_for(inp, search)
        for i in range(plan.steps):
            state = _host_step(model, state, jnp.int32(i), inp_k, step_plan)
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
    return AttackConfig(loop="auto").resolved_loop
