"""`attack_batch`: HASMap over a batch of photos, compiled end to end and sharded over devices.

The optimisation itself is `hasmap_jax.attack.loop`; this module resolves the arguments (model,
sensitivity maps, view size, dtype, loop), prepares the model once per device set, runs the loop,
and measures what it returns (`AttackResult`), with every verdict from the float32 model as given.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hasmap_jax.arrays import as_unit_float
from hasmap_jax.attack.loop import KEPT, METHODS, Inputs, Plan, default_loop, run_device, run_host
from hasmap_jax.attack.minnorm import MinNorm
from hasmap_jax.metrics import distortion
from hasmap_jax.runtime.parallel import data_mesh, replicate, shard_batch, unshard
from hasmap_jax.scoring import resolve_view_size, view_scores
from hasmap_jax.sensitivity.maps import sensitivity_maps
from hasmap_jax.transforms.chain import model_view_size, pillow_chains
from hasmap_jax.transforms.profiles import Profile, resolve_profile
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
      score_after_jpeg, success_after_jpeg: (N,) the score and the verdict after real JPEG round
        trips (Pillow) at the `robust_jpeg` qualities, one after the other; None when that was not
        asked for (also for profiles other than JPEG chains: see the checkpoints).
      scores_jpeg_chain: (N, K) the score after each of the K round trips of `robust_jpeg` (the
        last column is `score_after_jpeg`); None without `robust_jpeg`.
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
    score_after_jpeg: np.ndarray | None = None
    success_after_jpeg: np.ndarray | None = None
    scores_jpeg_chain: np.ndarray | None = None
    checkpoints: tuple[str, ...] | None = None
    scores_after_checkpoints: np.ndarray | None = None
    success_after_checkpoints: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images)


def default_compute_dtype():
    """The model's compute dtype `attack_batch(compute_dtype="auto")` uses: bf16 on GPU/TPU, else fp32."""
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32


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
    method: str | MinNorm = "cw",
    sensitivity: Any = None,
    sensitivity_floor: float = 0.0,
    threshold: float = 50.0,
    steps: int = 100,
    learning_rate: float = 1e-2,
    search_steps: int = 1,
    confidence: float = 0.0,
    optimizer: optax.GradientTransformation | None = None,
    early_stop: bool = True,
    view_size: tuple[int, int] | str | None = "auto",
    robust: str | Sequence | Profile | None = None,
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
      alpha: the trade-off alpha of the paper's method (a scalar or one per image): larger keeps
        the image closer to the original and succeeds less often (paper, Table 1: 10 ... 50).
        The minimum-norm method has no trade-off to set: each photo's budget adapts until it
        holds the least change that succeeds, and `alpha` is not used (`AttackResult.alpha` then
        reports the alpha the paper's objective would have needed at the returned image).
      method: "cw", the paper's (HASMap: Adam on alpha * ||S * d||^2 + L_C in the tanh box, one
        fixed alpha per photo, optionally the authors' search over it), or "fmn", the minimum-norm
        method (`hasmap_jax.attack.minnorm`, after FMN, Pintor et al. 2021): per photo a budget on
        the weighted norm ||S * d||, adapted at every step from whether the 8-bit image succeeds,
        normalised gradient steps in u = S * d, projection onto the budget's ball and the box.
        It returns the least-distorted success, as "cw" does, usually in fewer steps and at a
        smaller change (README, "Minimum-norm protection"); a `MinNorm` is "fmn" with other
        settings. `learning_rate`, `optimizer` and `search_steps` are the paper's method's.
      model: a `QualityModel` (`load_quality_model`); default: the shipped default model.
      sensitivity: "default" / None (the default map model), "uniform" (plain L2, the C&W attack),
        a model with `apply(images) -> maps` (e.g. a `SensitivityModel`), or maps (N, H, W) in [0, 1].
      sensitivity_floor: the maps are raised to at least this value (S' = max(S, floor), 0 .. 1):
        the least sensitive pixels still cost floor^2 per unit of squared change, so the change is
        not piled up in texture without bound (0, the default: the map as it is; 1: plain L2).
        With `robust="web"` the change grows until many transformed views fail, and the map
        alone then concentrates it in texture at a high plain-L2 cost (README, "Surviving what
        photo sites do").
      threshold: tau; an image is rated high quality when its score exceeds it (MediaEval 2020: 50).
      steps: optimisation steps per search step.
      learning_rate: Adam's learning rate on w (the authors used 5e-3 with 5 x 100 steps).
      search_steps: 1 keeps alpha fixed (the paper); more searches per image over c = 1 / alpha as
        the authors' code did (x10 on failure until bounded, then bisection), keeping the best.
      confidence: kappa, a margin: success needs Z_high - Z_low + kappa <= 0, i.e.
        score <= threshold - kappa / 2.
      optimizer: an optax transformation to use instead of Adam(learning_rate) (static: a new object
        compiles anew).
      early_stop: stop an image's search step once it stalls: "cw", once the running minimum of
        its loss improves by less than 0.01 % over a window of max(25, steps // 5) steps; "fmn",
        once its least successful distortion improves by less than `MinNorm.tolerance` (1 %)
        over max(10, steps // 10) steps.
      view_size: (height, width) the model sees: the photo resized to cover it and centre-cropped
        (`fit_view`), differentiably, while the perturbation lives at the photo's own resolution.
        "auto" (default): the model's `input_size` when the photos differ from it, else as given;
        None: as given. Each distinct photo size is its own compiled program.
      robust: what the protection must survive (`hasmap_jax.transforms.profiles`). The loss also
        scores the photo after differentiable versions of these operations (expectation over
        transformations: success needs the photo and every view of the step rated low, with the
        `confidence` margin), and the result is judged after the real (Pillow) operations at the
        profile's checkpoints (`AttackResult.checkpoints`, `scores_after_checkpoints`,
        `success_after_checkpoints`). One of:
        - None or "off": the paper's plain loss;
        - "jpeg90": the photo and its JPEG-90 round trip (the MediaEval protocol), exactly
          `robust_jpeg=90`;
        - "web": what photo sites do: at every step the photo, one JPEG at quality 60-95 and one of
          downscaling to 50-87.5 % (bicubic, then JPEG), light Gaussian blur (sigma 0.5-1.5), a
          centre crop of 90-95 % resized back, or a horizontal flip, drawn from a seeded key inside
          the compiled step (the host and device loops draw the same; each search step replays the
          same draws); checkpoints jpeg90, jpeg75, jpeg50, resize0.75+jpeg75, resize0.5+jpeg85,
          blur1, crop0.9, flip (jpeg50 is outside what it trains on: a test of generalisation);
        - operations by name (`hasmap_jax.transforms.chain`): "resize0.75+jpeg75", a
          comma-separated list, or a sequence of names: up to 3 are all scored at every step,
          more are split into 3 groups with one of each drawn per step; each is a checkpoint. A
          single JPEG ("jpeg75") is `robust_jpeg=75`;
        - a `Profile` (e.g. `PROFILES["web"].saved_as("jpeg85")` for a photo saved as JPEG 85
          before the site gets it: every view and checkpoint starts from that JPEG).
        Where views are drawn, success (what can be kept, what moves the search or the "fmn"
        budget) is decided on a fixed set instead of this step's draw: the photo and the
        profile's checkpoints in their differentiable form (the same pixels as Pillow's
        operations, but for JPEG's approximation), checked (forward passes only) at the steps
        where some photo's own view passes; never one lucky draw, never a chain's verdict from an
        earlier step. The draws still steer the gradient. Each extra view costs one
        model forward and backward per step ("jpeg90": 2 in all, "web": 3); every transform's
        shape is fixed by the photo size, so each size still compiles once (every chain of a
        profile is compiled). The differentiable resizing, blur, crop and flip compute Pillow's
        integer arithmetic (the same pixels); only JPEG is approximate. A margin (`confidence`)
        pays off: the least-distorted success sits just below the threshold, where JPEG's
        approximation, and operations outside the checkpoints, can tip it back.
        For `hasmap protect`: a JPEG output at quality Q is `PROFILES[name].saved_as(f"jpeg{Q}")`,
        whose first checkpoint is the saved file (`scores_after_checkpoints[:, 0]`).
      robust_jpeg: the older spelling of JPEG robustness, kept as it was (do not give both): a JPEG
        quality to survive (e.g. 90, as the MediaEval protocol applies), or a sequence of qualities
        applied one after the other (e.g. (85, 90): saved as JPEG 85, then re-encoded at 90): the
        loss also scores the image after each differentiable round trip (`diff_jpeg`), success
        needs all of them rated low (with the `confidence` margin), and the result reports the
        score after the real (Pillow) round trips (`score_after_jpeg`, `scores_jpeg_chain`; the
        chain's prefixes are also the checkpoints). A margin pays off here: the least-distorted
        success sits just below the threshold, where the difference between the approximation and
        libjpeg's integer pipeline can still tip it back.
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
      the goal as given (rated low, inside the margin, in every view: with "web", every chain it
      could draw) comes back unchanged.

    Raises:
      ValueError: a bad argument, e.g. an unknown profile or operation name (the message lists
        what is accepted), or both `robust` and `robust_jpeg`.
    """
    x8 = np.round(as_unit_float(images) * 255.0).astype(np.uint8)
    n = len(x8)
    model = model if model is not None else default_quality_model()
    method, minnorm = ("fmn", method) if isinstance(method, MinNorm) else (method, None)
    if method not in METHODS:
        raise ValueError(f"method: one of {', '.join(METHODS)} or a MinNorm, got {method!r}")
    alphas = np.broadcast_to(np.asarray(alpha, np.float32), (n,)).copy()
    if not np.all(np.isfinite(alphas)) or np.any(alphas <= 0):
        raise ValueError(f"alpha must be positive and finite, got {alpha}")
    if steps < 1 or search_steps < 1:
        raise ValueError("steps and search_steps must be at least 1")
    if method == "fmn" and search_steps != 1:
        raise ValueError("search_steps: the minimum-norm method adapts each photo's budget itself; give 1")
    if not (np.isfinite(sensitivity_floor) and 0.0 <= sensitivity_floor <= 1.0):
        raise ValueError(f"sensitivity_floor must be in [0, 1], got {sensitivity_floor}")
    loop = default_loop() if loop == "auto" else loop
    if loop not in ("host", "device"):
        raise ValueError(f"loop: expected 'auto', 'host' or 'device', got {loop!r}")
    dtype = _resolve_dtype(compute_dtype)

    mesh = mesh if mesh is not None else data_mesh()
    judge = prepare_model(model, mesh=mesh, fold_batchnorm=False, compute_dtype=jnp.float32)
    attacker = prepare_model(model, mesh=mesh, fold_batchnorm=fold_batchnorm, compute_dtype=dtype)
    view_size = resolve_view_size(model, x8.shape[1:3], view_size)
    profile = resolve_profile(robust, robust_jpeg)
    jpeg_chain = profile.jpeg_chain if profile is not None else ()
    (xs, alphas_s), _ = shard_batch((x8, alphas), mesh=mesh)
    maps = sensitivity_maps(sensitivity, xs)
    if sensitivity_floor:
        maps = (jnp if isinstance(maps, jax.Array) else np).maximum(maps, np.float32(sensitivity_floor))
    if not isinstance(maps, jax.Array):
        (maps,), _ = shard_batch((maps,), mesh=mesh)
    inputs = Inputs(
        x8=xs,
        maps=maps,
        alpha=alphas_s,
        threshold=jnp.float32(threshold),
        confidence=jnp.float32(confidence),
        learning_rate=jnp.float32(learning_rate),
        steps=jnp.int32(steps),
    )
    total = steps * search_steps
    plan = Plan(
        steps=steps,
        search_steps=search_steps,
        optimizer=optimizer if method == "cw" else None,
        check_every=_stall_window(method, steps) if early_stop else steps + 1,
        view_size=view_size,
        jpeg_chain=jpeg_chain,
        eot=profile.eot if profile is not None else None,
        report_every=max(1, min(steps, 5)) if progress is not None and loop == "device" else 0,
        method=method,
        minnorm=minnorm,
        checks=_checks(profile),
    )
    report = None if progress is None else _Reporter(progress, total)
    run = run_host if loop == "host" else run_device
    adv, used, used_alpha, kept, first = run(attacker, inputs, plan=plan, progress=report)
    metrics = distortion(xs, adv, maps)
    metrics["score_before"] = view_scores(judge, xs, view_size)
    metrics["score_after"] = view_scores(judge, adv, view_size)
    adv8, used, used_alpha, kept, first, metrics = unshard((adv, used, used_alpha, kept, first, metrics), n)
    judged = {} if profile is None else _judge(judge, adv8, profile, view_size, threshold, mesh)
    return AttackResult(
        images=adv8,
        success=metrics["score_after"] <= threshold,
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
    fields = {
        "checkpoints": profile.checkpoint_names,
        "scores_after_checkpoints": scores,
        "success_after_checkpoints": scores <= threshold,
    }
    if profile.jpeg_chain:  # the checkpoints are the chain's prefixes (`jpeg_profile`)
        k = len(profile.jpeg_chain)
        fields["scores_jpeg_chain"] = scores[:, :k]
        fields["score_after_jpeg"] = scores[:, k - 1]
        fields["success_after_jpeg"] = scores[:, k - 1] <= threshold
    return fields
