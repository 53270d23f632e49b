"""`attack_batch`: HASMap over a batch of photos, compiled end to end and sharded over devices.

The optimisation itself is `hasmap_jax.attack.loop`; this module resolves the arguments (model,
sensitivity maps, view size, dtype, loop), prepares the model once per device set, runs the loop,
and measures what it returns (`AttackResult`), with every verdict from the float32 model as given.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.arrays import as_unit_float
from hasmap_jax.attack.config import AttackConfig
from hasmap_jax.attack.loop import KEPT, Inputs, Plan, run_device, run_host, with_checkpoints
from hasmap_jax.metrics import distortion
from hasmap_jax.runtime.parallel import data_mesh, replicate, shard_batch, unshard
from hasmap_jax.scoring import resolve_view_size, view_scores
from hasmap_jax.sensitivity.maps import sensitivity_maps
from hasmap_jax.transforms.chain import model_view_size, pillow_chains
from hasmap_jax.transforms.profiles import Profile
from hasmap_jax.weights.loading import default_quality_model


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
        with the `confidence` margin, in every view of `robust`), "rated_low" (none reached the
        margin: the least-distorted iterate rated low, i.e. score <= threshold, in every view), "original"
        (nothing rated low was found), or "already_low" (the photo met the goal as given: returned
        unchanged, no step spent).
      first_success: (N,) int, the optimisation steps run before the first success inside the
        margin (in every view of `robust`), over all search steps; -1 where none.
      checkpoints: the names of the real (Pillow) operations the result was judged after (the
        profile's checkpoints, e.g. ("jpeg90", "jpeg75", ..., "flip") for "web"; for `robust_jpeg`
        each prefix of its chain: ("jpeg85", "jpeg85+jpeg90")); None without robustness. Not per image.
      scores_after_checkpoints: (N, K) the score after each checkpoint, in that order; None without.
      success_after_checkpoints: (N, K) bool, rated not high after each checkpoint
        (`.all(axis=1)`: after every one); None without.
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
    first_success: np.ndarray | None = None
    checkpoints: tuple[str, ...] | None = None
    scores_after_checkpoints: np.ndarray | None = None
    success_after_checkpoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


# Models prepared for the attack (folded, cast, placed on the mesh's devices), per model object:
# the weights travel to the devices once, not at every call.
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def prepare_model(model, *, mesh: jax.sharding.Mesh, fold_batchnorm: bool = True, compute_dtype=jnp.float32):
    """`model` as the attack runs it: BatchNorm folded into the convolutions and the given compute
    dtype where the model supports it (`QualityModel.inference`), replicated over `mesh`. Cached
    per model object, mesh and settings, so repeated calls do not copy weights again."""
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


def _checks(profile: Profile | None) -> tuple:
    """With views drawn at random, the chains success is decided on: the profile's checkpoints
    (every chain it can draw where it has none)."""
    if profile is None or profile.eot is None or not profile.eot.groups:
        return ()
    if profile.checkpoints:
        return tuple(profile.checkpoints)
    eot = profile.eot
    return tuple(eot.prefix + c for c in (*eot.always, *(c for g in eot.groups for c in g)))


def _stall_window(method: str, steps: int) -> int:
    """Steps between early-stop checks. "cw": long enough that the 8-bit loss jumping between
    "rated low" and "rated high" near the boundary is not mistaken for a stall. "fmn": its least
    successful distortion only moves when a success improves on it, which a converged budget no
    longer does."""
    return max(25, steps // 5) if method == "cw" else max(10, steps // 10)


def attack_batch(
    images,
    alpha: float | Any = 10.0,
    *,
    model=None,
    sensitivity: Any = None,
    config: AttackConfig | None = None,
    mesh: jax.sharding.Mesh | None = None,
    progress: Callable[[int, int], None] | None = None,
    **options,
) -> AttackResult:
    """Protects a batch of photos against a quality model, compiled end to end and sharded over devices.

    Args:
      images: (N, H, W, 3) RGB, uint8 or float in [0, 1] (float input is rounded to 8 bits first:
        the attack returns 8-bit images and measures against what it was given).
      alpha: the trade-off alpha of the paper's method (a scalar or one per image): larger keeps
        the image closer to the original and succeeds less often (paper, Table 1: 10 ... 50).
        The minimum-norm method (`method="fmn"`) has no trade-off to set: each photo's budget
        adapts until it holds the least change that succeeds, and `alpha` is not used
        (`AttackResult.alpha` then reports the alpha the paper's objective would have needed at
        the returned image).
      model: a `QualityModel` (`load_quality_model`); default: the shipped default model.
      sensitivity: "default" / None (the default map model), "uniform" (plain L2, the C&W attack),
        a model with `apply(images) -> maps` (e.g. a `SensitivityModel`), or maps (N, H, W) in [0, 1].
      config: how to optimise (`AttackConfig`; default: `AttackConfig()`, the paper's method).
      mesh: a `jax.sharding.Mesh` with a "data" axis to shard the batch over; default: all local
        devices. Results do not depend on it.
      progress: called as `progress(steps_done, steps_total)` while the attack runs (every few
        steps; `steps_total` = steps x search_steps; an early stop skips ahead).
      **options: `AttackConfig` settings as shortcuts, applied over `config`
        (`attack_batch(x, 20, steps=50, robust="jpeg90", confidence=10)`); `robust_jpeg=Q` is
        the older spelling of `robust="jpegQ"` (`AttackConfig.replace`).

    The robustness profile (`AttackConfig.robust`, `hasmap_jax.transforms.profiles`): the loss also
    scores the photo after differentiable versions of its operations (expectation over
    transformations), and the result is judged after the real (Pillow) operations at the profile's
    checkpoints (`AttackResult.checkpoints`, `scores_after_checkpoints`,
    `success_after_checkpoints`):
    - None or "off": the paper's plain loss;
    - "jpeg90": the photo and its JPEG-90 round trip (the MediaEval protocol);
      `robust_jpeg=(85, 90)`: saved as JPEG 85, then re-encoded at 90, every prefix a view;
    - "web": what photo sites do: at every step the photo and three views drawn from a seeded key
      inside the compiled step (`PROFILES["web"]`: JPEG, downscaling then JPEG, or light blur, a
      small crop or a flip); judged after its checkpoints;
    - operations by name (`hasmap_jax.transforms.chain`): "resize0.75+jpeg75", a comma-separated
      list or a sequence: up to 3 are all scored at every step, more are split into 3 groups with
      one of each drawn per step; each is a checkpoint;
    - a `Profile` (e.g. `PROFILES["web"].saved_as("jpeg85")` for a photo saved as JPEG 85 before
      the site gets it: every view and checkpoint starts from that JPEG).
    Where views are drawn, success (what can be kept, what moves the search or the "fmn" budget)
    is decided on a fixed set instead of this step's draw: the photo and the profile's checkpoints
    in their differentiable form (the same pixels as Pillow's operations, but for JPEG's
    approximation), checked (forward passes only) at the steps where some photo's own view passes;
    never one lucky draw, never a chain's verdict from an earlier step. The draws still steer the
    gradient. Each view costs one model forward and backward per step ("jpeg90": 2 in all, "web":
    4); every transform's shape is fixed by the photo size, so each size compiles once. A margin
    (`confidence`) pays off: the least-distorted success sits just below the threshold, where
    JPEG's approximation, and operations outside the checkpoints, can tip it back.

    Returns:
      An `AttackResult`. For each image, the successful iterate with the smallest weighted
      distortion (judged after 8-bit rounding); where none reached the margin, the least-distorted
      one rated low; else the original (`AttackResult.kept` says which). A photo that already meets
      the goal as given (rated low, inside the margin, in every view that decides success) comes
      back unchanged. Every verdict comes from the model as given, in float32.

    Raises:
      ValueError: a bad setting (`AttackConfig`), e.g. an unknown profile or operation name (the
        message lists what is accepted), or both `robust` and `robust_jpeg`.
      TypeError: an unknown option.
    """
    config = (config if config is not None else AttackConfig()).replace(**options)
    x8 = np.round(as_unit_float(images) * 255.0).astype(np.uint8)
    n = len(x8)
    model = model if model is not None else default_quality_model()
    alphas = np.broadcast_to(np.asarray(alpha, np.float32), (n,)).copy()
    if not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    loop = config.resolved_loop

    mesh = mesh if mesh is not None else data_mesh()
    judge = prepare_model(model, mesh=mesh, fold_batchnorm=False, compute_dtype=jnp.float32)
    attacker = prepare_model(model, mesh=mesh, fold_batchnorm=config.fold_batchnorm, compute_dtype=config.dtype)
    view_size = resolve_view_size(model, x8.shape[1:3], config.view_size)
    profile = config.profile
    (xs, alphas_s), _ = shard_batch((x8, alphas), mesh=mesh)
    maps = sensitivity_maps(sensitivity, xs)
    if config.sensitivity_floor:
        maps = (jnp if isinstance(maps, jax.Array) else np).maximum(maps, np.float32(config.sensitivity_floor))
    if not isinstance(maps, jax.Array):
        (maps,), _ = shard_batch((maps,), mesh=mesh)
    inputs = Inputs(
        x8=xs,
        maps=maps,
        alpha=alphas_s,
        threshold=jnp.float32(config.threshold),
        confidence=jnp.float32(config.confidence),
        learning_rate=jnp.float32(config.learning_rate),
        steps=jnp.int32(config.steps),
    )
    steps = config.steps
    eot, checks, verdict_views = profile.eot if profile is not None else None, _checks(profile), 0
    if config.method == "fmn" and config.minnorm.follow_checkpoints and eot is not None and eot.groups:
        eot, verdict_views = with_checkpoints(eot, checks)
    plan = Plan(
        steps=steps,
        search_steps=config.search_steps,
        optimizer=config.optimizer if config.method == "cw" else None,
        check_every=_stall_window(config.method, steps) if config.early_stop else steps + 1,
        view_size=view_size,
        jpeg_chain=profile.jpeg_chain if profile is not None else (),
        eot=eot,
        report_every=max(1, min(steps, 5)) if progress is not None and loop == "device" else 0,
        method=config.method,
        minnorm=config.minnorm if config.method == "fmn" else None,
        checks=checks,
        verdict_views=verdict_views,
    )
    report = None if progress is None else _Reporter(progress, steps * config.search_steps)
    run = run_host if loop == "host" else run_device
    adv, used, used_alpha, kept, first = run(attacker, inputs, plan=plan, progress=report)
    metrics = distortion(xs, adv, maps)
    metrics["score_before"] = view_scores(judge, xs, view_size)
    metrics["score_after"] = view_scores(judge, adv, view_size)
    adv8, used, used_alpha, kept, first, metrics = unshard((adv, used, used_alpha, kept, first, metrics), n)
    judged = {} if profile is None else _judge(judge, adv8, profile, view_size, config.threshold, mesh)
    return AttackResult(
        images=adv8,
        success=metrics["score_after"] <= config.threshold,
        steps=used,
        alpha=used_alpha,
        kept=np.asarray(KEPT)[kept],
        first_success=first,
        **metrics,
        **judged,
    )


def _judge(judge, adv8: np.ndarray, profile: Profile, view_size, threshold: float, mesh) -> dict[str, Any]:
    """The scores after the real (Pillow) operations of the profile's checkpoints, as `AttackResult` fields."""
    n, size = len(adv8), adv8.shape[1:3]
    scores = []
    for out in pillow_chains(adv8, profile.checkpoints):
        # A photo of its own size is scored as the attack's plain view was; another size (downscaled)
        # through the view of the photo's size, as the attack saw it (`model_views`).
        vs = view_size if out.shape[1:3] == size else model_view_size(size, view_size)
        (out_s,), _ = shard_batch((out,), mesh=mesh)
        scores.append(unshard(view_scores(judge, out_s, vs), n))
    scores = np.stack(scores, axis=1)
    return {
        "checkpoints": profile.checkpoint_names,
        "scores_after_checkpoints": scores,
        "success_after_checkpoints": scores <= threshold,
    }
