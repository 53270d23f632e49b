"""Trains the shipped default quality model: a small KonCept512 on licensed photos with synthetic degradations.

The real KonCept512 weights cannot be shipped, so `weights/default` holds the same architecture
(InceptionResNetV2 + KonCept head, Keras layout, global pooling) at a quarter of the width and with
(1, 2, 1) residual blocks, trained here to rate clean photographs about 80 and visibly degraded
ones below 50 (see `hasmap_jax.training.data` for the degradations and the target mapping).
It is a stand-in that makes `attack_batch` and the command line work out of the box, not a model of
human opinion: it knows four synthetic degradations (blur, noise, JPEG, resampling) and nothing of
tone, composition or content.

Photos (not part of the repository; see `hasmap_jax.training.photos` for the manifest):

    apt-get install --no-install-recommends mate-backgrounds=1.26.0-1 palapeli-data=4:22.12.3-1 \
        enlightenment-data=0.25.4-2 gcompris-qt-data=3.1-2 digikam-data=4:7.9.0-1 \
        scribus-template=1.2.4.1-6 sddm-theme-maldives=0.19.0-5
    pip install --no-deps --target /opt/hasmap-photos \
        scikit-image==0.26.0 scikit-learn==1.9.1 matplotlib==3.11.2 imgaug==0.4.0

(`hasmap_jax.training.photos.INSTALL_COMMANDS`; the unseen packages: `UNSEEN_INSTALL_COMMANDS`.)

Train (how long it takes: `weights/README.md`, "Training"), writing `weights/default` (refused if it
exists, unless --force):

    hasmap train-quality --photo-root /opt/hasmap-photos --force

Re-print the held-out evaluation of a checkpoint:

    hasmap train-quality --photo-root /opt/hasmap-photos --evaluate weights/default

The run is seeded: the data of step i come from `numpy.random.default_rng([seed, i])`, the weights
from `jax.random.key(seed)`, so a rerun with the same packages, seed and JAX version reproduces it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, KonCept512, koncept512
from hasmap_jax.training import data as qd
from hasmap_jax.training import photos as photo_manifest
from hasmap_jax.training.card import model_card
from hasmap_jax.training.evaluate import evaluate, format_report
from hasmap_jax.weights import checkpoint

#: Architecture of the shipped default model (on top of the "koncept512-keras" variant).
DEFAULT_MODEL: dict[str, Any] = dict(
    width=0.25, depths=(1, 2, 1), head_widths=(64, 32, 16), dropout_rates=(0.1, 0.1, 0.1), score_range=(0.0, 100.0)
)


def make_model(**overrides: Any) -> KonCept512:
    """The default model's module: Keras-layout KonCept512 (no BN gamma, global pooling), reduced."""
    return koncept512("koncept512-keras", **{**DEFAULT_MODEL, **overrides})


class TrainState(NamedTuple):
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any


def make_optimizer(*, steps: int, learning_rate: float, warmup_steps: int, weight_decay: float):
    """AdamW with linear warm-up and cosine decay to 1 % of the peak; no decay on biases and BN."""
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, learning_rate, min(warmup_steps, max(1, steps // 2)), max(steps, 2), learning_rate * 0.01
    )
    return optax.adamw(schedule, weight_decay=weight_decay, mask=functools.partial(jax.tree.map, lambda p: p.ndim > 1))


#: Training regresses the normalised score z = (score - SCORE_OFFSET) / SCORE_SCALE (about -1.8..1.3),
#: which suits Adam's step size. An unbounded model (`score_range` None) outputs z itself and
#: `fold_score_scale` then folds the affine map into `fc_out`; a bounded one outputs the score.
SCORE_OFFSET = 50.0
SCORE_SCALE = 20.0


def fold_score_scale(variables: dict[str, Any]) -> dict[str, Any]:
    """Variables whose output is SCORE_OFFSET + SCORE_SCALE * (the trained network's output), exactly."""
    params = dict(variables["params"])
    out = params["fc_out"]
    params["fc_out"] = {"kernel": out["kernel"] * SCORE_SCALE, "bias": out["bias"] * SCORE_SCALE + SCORE_OFFSET}
    return {**variables, "params": params}


def init_state(key: jax.Array, module: KonCept512, tx) -> TrainState:
    variables = module.init({"params": key}, jnp.zeros((1, 75, 75, 3), jnp.float32))
    return TrainState(
        jnp.zeros((), jnp.int32), variables["params"], variables["batch_stats"], tx.init(variables["params"])
    )


def make_train_step(
    module: KonCept512, tx, *, huber_delta: float = 8.0, group: int = 4, pair_weight: float = 1.0
) -> Callable:
    """A compiled step (state, images (B, H, W, 3) in [0, 1], targets (B,), key) -> (state, metrics).

    The loss is a Huber loss (quadratic within `huber_delta` points, linear beyond) on the score,
    plus `pair_weight` times the same loss on score differences between versions of one view
    (consecutive runs of `group` images, as `quality_data.random_batch` lays them out): there the
    photo's content cancels and only the degradations are left to explain the difference, which
    speeds up learning from scratch. BatchNorm runs on batch statistics and dropout is on, as
    `KonCept512.__call__(train=True)` does.
    """
    delta = huber_delta / SCORE_SCALE
    i, j = np.triu_indices(group, k=1)

    def loss_fn(params, batch_stats, images, targets, key):
        (out, _), updates = module.apply(
            {"params": params, "batch_stats": batch_stats},
            images,
            True,
            mutable=["batch_stats"],
            rngs={"dropout": key},
        )
        z = out if module.score_range is None else (out - SCORE_OFFSET) / SCORE_SCALE
        zt = (targets - SCORE_OFFSET) / SCORE_SCALE
        loss = jnp.mean(optax.huber_loss(z, zt, delta=delta))
        if pair_weight and group > 1:
            zg, tg = z.reshape(-1, group), zt.reshape(-1, group)
            loss += pair_weight * jnp.mean(optax.huber_loss(zg[:, i] - zg[:, j], tg[:, i] - tg[:, j], delta=delta))
        return loss * SCORE_SCALE**2, (updates["batch_stats"], SCORE_OFFSET + SCORE_SCALE * z)

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step(state: TrainState, images, targets, key):
        key = jax.random.fold_in(key, state.step)
        (loss, (batch_stats, scores)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, images, targets, key
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "mae": jnp.mean(jnp.abs(scores - targets))}
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return step


def batches(
    images: Sequence[np.ndarray],
    *,
    seed: int,
    phases: Sequence[Phase],
    size: tuple[int, int],
    group: int,
    kinds: Sequence[str] = qd.TRAINED_KINDS,
    tone: bool = False,
    weights: Sequence[float] | None = None,
    visible_percentile: float = qd.VISIBLE_PERCENTILE,
    repeat_kind: bool = False,
    cap_fade_from: float = 1.0,
    prefetch: int = 3,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The training batches in order, made by a background thread (Pillow and numpy release the
    GIL), each from its own generator `default_rng([seed, step])`, so timing never changes them
    (`weights`, `visible_percentile`, `repeat_kind`, `cap_fade_from`: as `quality_data.random_batch`)."""
    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def produce():
        try:
            i = 0
            for phase in phases:
                for _ in range(phase.steps):
                    if stop.is_set():
                        return
                    rng = np.random.default_rng([seed, i])
                    batch = qd.random_batch(
                        rng,
                        images,
                        phase.batch_size,
                        size,
                        crop=phase.crop,
                        group=group,
                        kinds=kinds,
                        tone=tone,
                        weights=weights,
                        visible_percentile=visible_percentile,
                        repeat_kind=repeat_kind,
                        cap_fade_from=cap_fade_from,
                    )
                    q.put(batch)
                    i += 1
            q.put(None)
        except BaseException as e:  # hand the error to the consumer instead of hanging it
            q.put(e)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class Phase(NamedTuple):
    """A stretch of training: `steps` steps of `batch_size` samples, each a random `crop` (h, w) of a
    384x512 view (None: the whole view)."""

    steps: int
    batch_size: int
    crop: tuple[int, int] | None = None


#: Default schedule: most steps on 128x160 patches (a tenth of the pixels, at the model's pixel
#: scale: many more updates for the same compute), then whole 384x512 views, so that the head
#: settles on features pooled over the size the model is used at.
DEFAULT_PHASES = (Phase(4000, 16, (128, 160)), Phase(400, 8, None))

#: The `KonCept512.pooling` choices a trained model may have ("window8" is the published PyTorch
#: layout's, tied to a 10x14 map; `hasmap train-quality --pooling`).
TRAINED_POOLINGS = ("global", "mean_max")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings of a training run (`train`; `train_default_model`: the options of
    `hasmap train-quality`)."""

    seed: int = 0
    phases: tuple[Phase, ...] = DEFAULT_PHASES
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    huber_delta: float = 8.0
    pair_weight: float = 1.0
    group: int = 4  # versions of each view per batch (1 clean)
    eval_views: int = 3  # views per held-out photo in the evaluation
    kinds: tuple[str, ...] = qd.TRAINED_KINDS  # degradations trained on (the evaluation shows every kind)
    tone: bool = False  # random tone changes of the views (quality_data.tone_jitter)
    # The defaults below are the shipped model's recipe (run G2, issue 26; weights/README.md has the runs
    # that chose them); the neutral values (1, qd.VISIBLE_PERCENTILE, "global", False, 1) train as run D0 did.
    calm_weight: float = 3.0  # how much more often a "calm" photo (photos.CATEGORIES) is drawn than another
    visible_percentile: float = 99.0  # the blur / resampling labels' cap (effective_severity)
    size: tuple[int, int] = KONCEPT_INPUT_SIZE  # the views' size, before the phases' crops
    precise_bn_batches: int = 24  # batches of whole views the BatchNorm statistics are recomputed on (0: keep)
    pooling: str = "mean_max"  # KonCept512.pooling of the model train_default_model trains (TRAINED_POOLINGS)
    repeat_kind: bool = True  # each group shows its first degradation kind twice (quality_data.random_group)
    cap_fade_from: float = 0.5  # the content cap fades out from this nominal severity to 1 (effective_severity)

    def __post_init__(self):
        if self.pooling not in TRAINED_POOLINGS:
            raise ValueError(f"pooling must be one of {TRAINED_POOLINGS} (KonCept512.pooling), got {self.pooling!r}")
        if not self.calm_weight > 0:
            raise ValueError(f"calm_weight must be > 0, got {self.calm_weight}")
        if not 0.0 <= self.visible_percentile <= 100.0:
            raise ValueError(f"visible_percentile must be in [0, 100], got {self.visible_percentile}")
        if not 0.0 <= self.cap_fade_from <= 1.0:
            raise ValueError(f"cap_fade_from must be in [0, 1], got {self.cap_fade_from}")
        if not self.phases or any(p.steps < 1 or p.batch_size < 1 or p.batch_size % self.group for p in self.phases):
            raise ValueError(
                f"phases: at least one, each of >= 1 step and a batch that is a multiple of group ({self.group}), "
                f"got {self.phases}"
            )
        if self.precise_bn_batches < 0:
            raise ValueError(f"precise_bn_batches must be >= 0, got {self.precise_bn_batches}")

    def photo_weights(self, photos: Sequence[photo_manifest.Photo]) -> list[float] | None:
        """The draw weight of each training photo (`calm_weight` for calm ones, 1 for the rest);
        None at calm_weight 1: uniform draws, as runs before issue 26 made them."""
        if self.calm_weight == 1.0:
            return None
        return [self.calm_weight if p.category == "calm" else 1.0 for p in photos]


def train(
    module: KonCept512,
    images: Sequence[np.ndarray],
    config: TrainConfig | None = None,
    *,
    weights: Sequence[float] | None = None,
    log_every: int = 100,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains `module` on random degraded views of prepared photos (`quality_data.prepare`), with
    the settings of `config` (default `TrainConfig()`).

    After the last step the BatchNorm statistics are recomputed exactly (`precise_batch_stats`) on
    `config.precise_bn_batches` batches of whole views, drawn with their own seeds. `weights` (one
    per image; `TrainConfig.photo_weights` for the manifest's photos) draws photos in proportion to
    them instead of uniformly. `log` receives a progress line every `log_every` steps.

    Returns:
      {"params": ..., "batch_stats": ...}, ready for `module.apply` and `checkpoint.save`.
    """
    c = config or TrainConfig()
    steps = sum(p.steps for p in c.phases)
    tx = make_optimizer(
        steps=steps, learning_rate=c.learning_rate, warmup_steps=c.warmup_steps, weight_decay=c.weight_decay
    )
    state = init_state(jax.random.key(c.seed), module, tx)
    step = make_train_step(module, tx, huber_delta=c.huber_delta, group=c.group, pair_weight=c.pair_weight)
    key = jax.random.key(c.seed + 1)
    start = time.perf_counter()
    window: list[dict[str, float]] = []
    last_shape = None
    data = batches(
        images,
        seed=c.seed,
        phases=c.phases,
        size=c.size,
        group=c.group,
        kinds=c.kinds,
        tone=c.tone,
        weights=weights,
        visible_percentile=c.visible_percentile,
        repeat_kind=c.repeat_kind,
        cap_fade_from=c.cap_fade_from,
    )
    for i, (x, y) in enumerate(data):
        state, metrics = step(state, jnp.asarray(x), jnp.asarray(y), key)
        window.append({k: float(v) for k, v in metrics.items()})
        if x.shape != last_shape:  # a new shape: this step compiled
            jax.block_until_ready(state)
            log(f"step {i + 1}: batch {x.shape} compiled and ran at {time.perf_counter() - start:.1f} s")
            last_shape = x.shape
        if (i + 1) % log_every == 0 or i + 1 == steps:
            elapsed = time.perf_counter() - start
            mean = {k: np.mean([m[k] for m in window]) for k in window[0]}
            log(
                f"step {i + 1}/{steps}  loss {mean['loss']:.2f}  mae {mean['mae']:.2f}  "
                f"{elapsed:.0f} s elapsed, ~{elapsed / (i + 1) * (steps - i - 1):.0f} s left"
            )
            window.clear()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    if c.precise_bn_batches:
        full = c.phases[-1].batch_size if c.phases[-1].crop is None else 8

        def stats_batch(k: int) -> np.ndarray:
            rng = np.random.default_rng([c.seed, 10**9 + k])
            return qd.random_batch(
                rng,
                images,
                full,
                c.size,
                group=c.group,
                kinds=c.kinds,
                tone=c.tone,
                weights=weights,
                visible_percentile=c.visible_percentile,
                repeat_kind=c.repeat_kind,
                cap_fade_from=c.cap_fade_from,
            )[0]

        stats_data = (stats_batch(k) for k in range(c.precise_bn_batches))
        variables = precise_batch_stats(module, variables, stats_data)
        log(f"BatchNorm statistics recomputed on {c.precise_bn_batches} batches of {full} whole views")
    return finished_variables(module, variables)


def finished_variables(module: KonCept512, variables: dict[str, Any]) -> dict[str, Any]:
    """The trained variables as shipped: an unbounded model (`score_range` None) was trained on the
    normalised score and gets the scale folded into fc_out (`fold_score_scale`); a bounded one
    outputs the score itself and is returned as it is."""
    return fold_score_scale(variables) if module.score_range is None else variables


def precise_batch_stats(module: KonCept512, variables: dict[str, Any], batches: Iterator[np.ndarray]) -> dict[str, Any]:
    """BatchNorm statistics averaged exactly over `batches` with the weights frozen ("precise BN",
    Wu & Johnson 2021), replacing the momentum-0.99 running averages, which lag behind weights that
    still moved in the last few hundred steps.

    Flax updates `ra = m * ra + (1 - m) * batch`; we read each batch's statistics back from one
    train-mode forward and average them.
    """
    m = 0.99  # KonCept512's BatchNorm momentum (Keras default)

    @jax.jit
    def batch_stats(variables, images):
        _, updates = module.apply(variables, images, True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        return jax.tree.map(
            lambda new, old: (new - m * old) / (1 - m), updates["batch_stats"], variables["batch_stats"]
        )

    total, n = None, 0
    for images in batches:
        stats = batch_stats(variables, jnp.asarray(images))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        n += 1
    return {**variables, "batch_stats": jax.tree.map(lambda t: t / n, total)}


# ---------------------------------------------------------------------------------------------
# The shipped default model (command line: `hasmap train-quality`)


def _write(out: Path, variables: dict[str, Any], card: dict[str, Any], *, force: bool) -> Path:
    """`checkpoint.save`, replacing an existing `out` only with `force` (staged, then swapped into
    place, so that an interrupted run never leaves `out` broken)."""
    try:
        return checkpoint.save(out, variables, card, replace=force)
    except FileExistsError:
        if force:
            raise
        raise FileExistsError(
            f"{out.expanduser().absolute()} exists; pass --force to replace it (nothing was written)"
        ) from None


def train_default_model(
    out: str | os.PathLike,
    photo_roots: Sequence[str] = (),
    config: TrainConfig | None = None,
    *,
    force: bool = False,
    command: str = "",
    log: Callable[[str], None] = print,
) -> Path:
    """Trains the default model on the manifest's training photos, evaluates it on the held-out
    ones (`format_report`, logged) and writes the checkpoint with its model card to `out`.

    Args:
      out: the checkpoint directory to write (`weights/default` for the shipped model).
      photo_roots: where the photo packages are installed (`hasmap_jax.training.data.locate`).
      config: the run's settings (default `TrainConfig()`).
      force: replace `out` if it exists.
      command: the command line that ran this, recorded in the model card.
      log: receives the progress lines and the evaluation table.

    Returns:
      The absolute path of the written checkpoint.

    Raises:
      FileExistsError: `out` exists and not `force` (checked before any work; nothing is written).
    """
    config = config or TrainConfig()
    out = Path(out).expanduser().absolute()
    if out.exists() and not force:
        raise FileExistsError(f"{out} exists; pass --force to replace it (nothing was written)")
    heldout = qd.prepared_photos("heldout", photo_roots, log)
    train_images = qd.prepared_photos("train", photo_roots, log)
    weights = config.photo_weights(photo_manifest.photos("train"))
    if weights is not None:
        calm = sum(w for w, p in zip(weights, photo_manifest.photos("train"), strict=True) if p.category == "calm")
        log(f"calm photos drawn with weight {config.calm_weight:g}: {calm / sum(weights):.0%} of the draws")
    module = make_model(pooling=config.pooling)
    start = time.perf_counter()
    variables = train(module, train_images, config, weights=weights, log=log)
    wall = time.perf_counter() - start
    log(f"trained in {wall:.0f} s; evaluating on held-out photos")
    listed = photo_manifest.photos("heldout")
    report = evaluate(
        module,
        variables,
        heldout,
        views=config.eval_views,
        groups=[p.package for p in listed],
        categories=[p.category for p in listed],
    )
    log(format_report(report))
    path = _write(out, variables, model_card(module, config, report, wall, command), force=force)
    log(f"wrote {path}")
    return path
