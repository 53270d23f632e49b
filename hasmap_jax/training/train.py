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

Train (about 20 minutes on 2 CPU cores), writing `weights/default` (refused if it exists, unless --force):

    hasmap train-quality --photo-root /opt/hasmap-photos --force

Re-print the held-out evaluation of a checkpoint:

    hasmap train-quality --photo-root /opt/hasmap-photos --evaluate weights/default

The run is seeded: the data of step i come from `numpy.random.default_rng([seed, i])`, the weights
from `jax.random.key(seed)`, so a rerun with the same packages, seed and JAX version reproduces it.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import platform
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

from hasmap_jax.metrics import spearman
from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, KonCept512, koncept512
from hasmap_jax.training import data as qd
from hasmap_jax.training import photos as photo_manifest
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
    prefetch: int = 3,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The training batches in order, made by a background thread (Pillow and numpy release the
    GIL), each from its own generator `default_rng([seed, step])`, so timing never changes them
    (`weights`, `visible_percentile`: as `quality_data.random_batch`)."""
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


def train(
    module: KonCept512,
    images: Sequence[np.ndarray],
    *,
    seed: int = 0,
    phases: Sequence[Phase] = DEFAULT_PHASES,
    learning_rate: float = 3e-3,
    warmup_steps: int = 100,
    weight_decay: float = 1e-4,
    huber_delta: float = 8.0,
    group: int = 4,
    pair_weight: float = 1.0,
    kinds: Sequence[str] = qd.TRAINED_KINDS,
    tone: bool = False,
    weights: Sequence[float] | None = None,
    visible_percentile: float = qd.VISIBLE_PERCENTILE,
    size: tuple[int, int] = KONCEPT_INPUT_SIZE,
    precise_bn_batches: int = 24,
    log_every: int = 100,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Trains `module` on random degraded views of prepared photos (`quality_data.prepare`).

    After the last step the BatchNorm statistics are recomputed exactly (`precise_batch_stats`) on
    `precise_bn_batches` batches of whole views, drawn with their own seeds. `weights` (one per image)
    draws photos in proportion to them instead of uniformly; `visible_percentile` sets the blur and
    resampling labels' cap (`quality_data.effective_severity`).

    Returns:
      {"params": ..., "batch_stats": ...}, ready for `module.apply` and `checkpoint.save`.
    """
    steps = sum(p.steps for p in phases)
    tx = make_optimizer(steps=steps, learning_rate=learning_rate, warmup_steps=warmup_steps, weight_decay=weight_decay)
    state = init_state(jax.random.key(seed), module, tx)
    step = make_train_step(module, tx, huber_delta=huber_delta, group=group, pair_weight=pair_weight)
    key = jax.random.key(seed + 1)
    start = time.perf_counter()
    window: list[dict[str, float]] = []
    last_shape = None
    data = batches(
        images,
        seed=seed,
        phases=phases,
        size=size,
        group=group,
        kinds=kinds,
        tone=tone,
        weights=weights,
        visible_percentile=visible_percentile,
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
    if precise_bn_batches:
        full = phases[-1].batch_size if phases[-1].crop is None else 8

        def stats_batch(k: int) -> np.ndarray:
            rng = np.random.default_rng([seed, 10**9 + k])
            return qd.random_batch(
                rng,
                images,
                full,
                size,
                group=group,
                kinds=kinds,
                tone=tone,
                weights=weights,
                visible_percentile=visible_percentile,
            )[0]

        stats_data = (stats_batch(k) for k in range(precise_bn_batches))
        variables = precise_batch_stats(module, variables, stats_data)
        log(f"BatchNorm statistics recomputed on {precise_bn_batches} batches of {full} whole views")
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
# Held-out evaluation


def evaluate(
    module: KonCept512,
    variables: dict[str, Any],
    images: Sequence[np.ndarray],
    *,
    seed: int = 1234,
    views: int = 3,
    batch_size: int = 16,
    threshold: float = 50.0,
    groups: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores held-out photos clean and degraded (`quality_data.evaluation_samples`).

    Accuracy counts a clean view correct when its score is > `threshold` and a degraded view
    correct when it is <= `threshold`; degraded views count for the headline only at clearly
    visible effective severities (>= `quality_data.CLEAR_SEVERITY`; see
    `quality_data.effective_severity`), milder ones are reported alone, by nominal level.

    "issue_clear" counts the degradations the default model's specification calls clearly
    degraded (`quality_data.is_clearly_degraded`: blur sigma >= 3, noise std >= 25/255, JPEG quality
    <= 10), per kind and together. `groups` (one label per image, e.g. its package) and `categories`
    (one label per image, e.g. `Photo.category`: "calm" or "general") add the same figures per label
    (`_subset_summary`: clean rated high, clearly degraded rated low, rank correlations, score range).

    Returns:
      a JSON-able report: per kind and severity the mean score and share rated low, accuracies
      ("clean", "degraded_clear", "overall", "balanced", "issue_clear"), MAE and Spearman
      correlation to targets, the score range, "per_group" when `groups` is given and
      "per_category" when `categories` is given.
    """
    for name, labels in (("groups", groups), ("categories", categories)):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{name} has {len(labels)} labels for {len(images)} images")
    # Scored as they are made, in batches that run on across photos, keeping only the scores and
    # labels: the images of 55 photos (6600 at 384x512) would take 16 GB at once.
    apply = jax.jit(lambda v, x: module.apply(v, x)[0])
    samples: list[qd.Sample] = []
    owner: list[int] = []
    pending: list[np.ndarray] = []
    scored: list[np.ndarray] = []

    def flush():
        scored.append(np.asarray(apply(variables, jnp.asarray(np.stack(pending)))))
        pending.clear()

    for i, image in enumerate(images):
        for sample in qd.evaluation_samples(np.random.default_rng([seed, i]), image, views=views):
            pending.append(sample.image)
            samples.append(dataclasses.replace(sample, image=None))
            owner.append(i)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    scores = np.concatenate(scored)
    kinds = np.asarray([s.kind for s in samples])
    sev = np.asarray([s.severity for s in samples])
    nominal = np.asarray([s.nominal for s in samples])
    targets = np.asarray([s.target for s in samples])
    high = scores > threshold

    def share(mask, values):
        return float(np.mean(values[mask])) if mask.any() else float("nan")

    per_kind: dict[str, Any] = {}
    for kind in ("clean", "clean-jpeg90"):
        m = kinds == kind
        per_kind[kind] = {"n": int(m.sum()), "mean_score": share(m, scores), "share_high": share(m, high)}
    for kind in qd.KINDS:
        levels = {}
        for s in qd.LEVELS:
            m = (kinds == kind) & np.isclose(nominal, s)
            levels[f"{s:.1f}"] = {"mean_score": share(m, scores), "share_low": share(m, ~high)}
        clear = (kinds == kind) & (sev >= qd.CLEAR_SEVERITY - 1e-9)
        per_kind[kind] = {"n_clear": int(clear.sum()), "share_low_clear": share(clear, ~high), "levels": levels}
    per_kind_rank = severity_rank_correlations(scores, kinds, nominal)
    for kind in qd.KINDS:
        per_kind[kind]["severity_rank"] = per_kind_rank[kind]
    clean = kinds == "clean"
    degraded_clear = np.isin(kinds, qd.KINDS) & (sev >= qd.CLEAR_SEVERITY - 1e-9)
    acc_clean = share(clean, high)
    acc_degraded = share(degraded_clear, ~high)
    counted = clean | degraded_clear
    correct = np.where(clean, high, ~high)
    issue = np.asarray([qd.is_clearly_degraded(k, s) for k, s in zip(kinds, nominal, strict=True)], bool)
    base = np.asarray([k.removeprefix(qd.CLEAR_PREFIX) for k in kinds])
    issue_clear = {}
    for kind in qd.CLEAR_PARAMETERS:
        m = issue & (base == kind)
        issue_clear[kind] = {"n": int(m.sum()), "share_low": share(m, ~high)}
    issue_clear["all"] = {"n": int(issue.sum()), "share_low": share(issue, ~high)}
    owner = np.asarray(owner)

    def per_label(labels: Sequence[str]) -> dict[str, Any]:
        out = {}
        for g in dict.fromkeys(labels):
            mine = np.flatnonzero(np.asarray(labels) == g)
            out[g] = {"photos": len(mine), **_subset_summary(np.isin(owner, mine), scores, kinds, nominal, high, issue)}
        return out

    return {
        "photos": len(images),
        "views_per_photo": views,
        "images_scored": len(samples),
        "threshold": threshold,
        "accuracy": {
            "clean": acc_clean,
            "clean_jpeg90": per_kind["clean-jpeg90"]["share_high"],
            "degraded_clear": acc_degraded,
            "overall": float(np.mean(correct[counted])),
            "balanced": (acc_clean + acc_degraded) / 2,
            "issue_clear": issue_clear["all"]["share_low"],
        },
        "issue_clear": issue_clear,
        "mae": float(np.mean(np.abs(scores - targets))),
        "score_range": [float(scores.min()), float(scores.max())],
        "spearman": spearman(scores, targets),
        "per_kind": per_kind,
        **({"per_group": per_label(groups)} if groups is not None else {}),
        **({"per_category": per_label(categories)} if categories is not None else {}),
    }


#: The kinds whose rank correlation and "clearly degraded" share the per-label summaries report.
SUMMARY_KINDS = tuple(qd.CLEAR_PARAMETERS)


def _subset_summary(m, scores, kinds, nominal, high, issue) -> dict[str, Any]:
    """The headline figures of the evaluation images selected by `m` (whole photos): clean views
    rated high, the specification's clearly degraded ones rated low (together and per kind), the
    per-view severity-score rank correlations of `SUMMARY_KINDS` and the score range."""

    def share(mask, values):
        return float(np.mean(values[mask])) if mask.any() else float("nan")

    base = np.asarray([k.removeprefix(qd.CLEAR_PREFIX) for k in kinds])
    rank = severity_rank_correlations(scores[m], kinds[m], nominal[m])
    return {
        "clean": share(m & (kinds == "clean"), high),
        "clean_jpeg90": share(m & (kinds == "clean-jpeg90"), high),
        "issue_clear": share(m & issue, ~high),
        "issue_clear_per_kind": {k: share(m & issue & (base == k), ~high) for k in qd.CLEAR_PARAMETERS},
        "severity_rank": {
            k: {"mean": rank[k]["mean"], "share_at_goal": rank[k]["share_at_goal"]} for k in SUMMARY_KINDS
        },
        "score_range": [float(scores[m].min()), float(scores[m].max())] if m.any() else [float("nan")] * 2,
    }


#: The per-view severity-score rank correlation a good model reaches (issue: default quality model).
RANK_GOAL = -0.9


def severity_rank_correlations(scores, kinds, nominal) -> dict[str, dict[str, float]]:
    """Per degradation kind, how consistently the score falls as the degradation grows.

    `scores`, `kinds` and `nominal` (applied severity) are the evaluation images in the order
    `quality_data.evaluation_samples` lays them out: each view starts with its "clean" image. Per
    view and kind, Spearman's correlation between severity (0 for the clean image, then each level)
    and score: -1 when every stronger degradation scores lower.

    Returns:
      per kind: "mean" (over views), "worst" (the highest), "share_at_goal" (share of views with a
      correlation <= `RANK_GOAL`), "views".
    """
    kinds = np.asarray(kinds)
    view = np.cumsum(kinds == "clean") - 1
    if view.min(initial=0) < 0:
        raise ValueError("the evaluation images must start with a clean view")
    out = {}
    for kind in qd.KINDS:
        rhos = []
        for v in range(int(view.max(initial=-1)) + 1):
            m = (view == v) & (kinds == kind)
            if not m.any():
                continue
            clean = (view == v) & (kinds == "clean")
            sev = np.concatenate([np.zeros(int(clean.sum())), np.asarray(nominal)[m]])
            sc = np.concatenate([np.asarray(scores)[clean], np.asarray(scores)[m]])
            rhos.append(spearman(sev, sc))
        r = np.asarray(rhos, np.float64)
        ok = r[np.isfinite(r)]
        out[kind] = {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "worst": float(ok.max()) if ok.size else float("nan"),
            "share_at_goal": float(np.mean(r <= RANK_GOAL)) if r.size else float("nan"),
            "views": int(r.size),
        }
    return out


def _range(report: dict[str, Any]) -> str:
    lo_hi = report.get("score_range")  # absent from reports written before it was added
    return f"; scores {lo_hi[0]:.1f} .. {lo_hi[1]:.1f}" if lo_hi else ""


def format_report(report: dict[str, Any]) -> str:
    """The held-out evaluation as a text table."""
    acc = report["accuracy"]
    lines = [
        f"held-out: {report['photos']} photos x {report['views_per_photo']} views, {report['images_scored']} images; "
        f"high <=> score > {report['threshold']:g}",
        f"{'kind':<13}{'correct':>9}   mean score (share rated low) at nominal severity "
        + " ".join(f"{s:>12.1f}" for s in qd.LEVELS),
    ]
    for kind in ("clean", "clean-jpeg90"):
        k = report["per_kind"][kind]
        lines.append(f"{kind:<13}{k['share_high']:>8.1%}   mean score {k['mean_score']:.1f} (rated high)")
    for kind in qd.KINDS:
        k = report["per_kind"][kind]
        cells = " ".join(f"{v['mean_score']:>5.1f} ({v['share_low']:>4.0%})" for v in k["levels"].values())
        lines.append(f"{kind:<13}{k['share_low_clear']:>8.1%}   {' ' * 51}{cells}")
    lines += [
        f"correct: clean {acc['clean']:.1%}, clean after JPEG 90 {acc['clean_jpeg90']:.1%}, "
        f"clearly degraded (severity >= {qd.CLEAR_SEVERITY}) {acc['degraded_clear']:.1%}",
        f"overall {acc['overall']:.1%} (clean + clearly degraded), balanced {acc['balanced']:.1%}; "
        f"MAE to target {report['mae']:.1f}, Spearman {report['spearman']:.3f}" + _range(report),
    ]
    ranks = {k: report["per_kind"][k].get("severity_rank") for k in qd.KINDS}
    if all(ranks.values()):
        lines.append(
            f"severity-score rank correlation per view (mean / worst / share <= {RANK_GOAL}): "
            + ", ".join(f"{k} {r['mean']:.2f} / {r['worst']:.2f} / {r['share_at_goal']:.0%}" for k, r in ranks.items())
        )
    issue = report.get("issue_clear")  # absent from reports written before it was added
    if issue:
        lines.append(
            "rated low at the specification's 'clearly degraded' (blur sigma >= 3, noise std >= 25/255, "
            f"JPEG quality <= 10): {issue['all']['share_low']:.1%} of {issue['all']['n']} ("
            + ", ".join(f"{k} {v['share_low']:.1%}" for k, v in issue.items() if k != "all")
            + ")"
        )
    for title, key in (("per category", "per_category"), ("per package", "per_group")):
        if report.get(key):
            lines.append(f"{title}:")
            lines += [f"  {g}: {_summary_line(r)}" for g, r in report[key].items()]
    return "\n".join(lines)


def _summary_line(r: dict[str, Any]) -> str:
    """One label's figures (`_subset_summary`); reports written before issue 26 lack the rank part."""
    text = f"{r['photos']} photos, clean rated high {r['clean']:.1%}, clearly degraded rated low {r['issue_clear']:.1%}"
    per_kind = r.get("issue_clear_per_kind")
    if per_kind:
        text += " (" + ", ".join(f"{k} {v:.0%}" for k, v in per_kind.items()) + ")"
    rank = r.get("severity_rank")
    if rank:
        text += ", rank " + " / ".join(f"{k} {v['mean']:.2f}" for k, v in rank.items())
    return text + f", scores {r['score_range'][0]:.1f} .. {r['score_range'][1]:.1f}"


# ---------------------------------------------------------------------------------------------
# The shipped default model (command line: `hasmap train-quality`)


def _prepared(split: str, roots: Sequence[str], log) -> list[np.ndarray]:
    out = []
    for p in photo_manifest.photos(split):
        out.append(qd.prepare(qd.load_photo(p, roots)))
    log(f"{split}: {len(out)} photos loaded and checked against the manifest")
    return out


def _card(
    module: KonCept512, config: TrainConfig, report: dict[str, Any], wall_s: float, command: str
) -> dict[str, Any]:
    # The photos the training reads (train, and heldout for its evaluation); "unseen" packages are not its data.
    read = [p for p in photo_manifest.PHOTOS if p.split != "unseen"]
    manifest = [
        {
            "name": p.name,
            "package": p.package,
            "version": p.version,
            "source": p.source,
            "path": p.path,
            "offset": p.offset,
            "sha256": p.sha256,
            "license": p.license,
            "credit": p.credit,
            "split": p.split,
            "category": p.category,
        }
        for p in read
    ]
    return {
        "kind": "quality",
        "variant": "hasmap-default-small",
        "architecture": "KonCept512 layout (InceptionResNetV2 + MLP head, Keras variant) at reduced width and depth",
        "config": module.config(),
        "input_size": list(KONCEPT_INPUT_SIZE),
        "preprocessing": "RGB in [0, 1] -> (x - 0.5) / 0.5; images scored at the size given",
        "output": (
            "quality score on a 0..100 scale"
            + (" (100 * sigmoid of the last layer: never outside it)" if module.score_range == (0.0, 100.0) else "")
            + f": clean photos trained towards {qd.CLEAN_SCORE:g}, degraded ones lower with severity; "
            "high quality <=> score > 50"
        ),
        "source": {
            "format": "trained",
            "trainer": "hasmap_jax.training.train",
            "command": command,
        },
        "notice": (
            "Not KonCept512 and not trained on human opinion scores: a small stand-in trained on "
            f"{len(photo_manifest.photos('train'))} photographs with synthetic degradations so that the "
            "library runs out of the box. For the MediaEval 2020 protocol bring the real KonCept512 weights."
        ),
        "training_data": {
            "description": (
                "Natural photographs shipped by Debian and PyPI packages, read from the installed "
                "packages (never downloaded at run time); split by photo into train / heldout."
            ),
            "install": list(photo_manifest.INSTALL_COMMANDS),
            "manifest_module": "hasmap_jax.training.photos",
            "photos": manifest,
            "licenses": sorted({p.license for p in read}),
        },
        "degradations": {
            "kinds": {
                k: {"severity_0": lo, "severity_1": hi, "interpolation": "linear" if k == "contrast" else "geometric"}
                for k, (lo, hi) in qd.RANGES.items()
            },
            "parameters": {
                "blur": "Gaussian sigma in pixels (Pillow GaussianBlur)",
                "noise": "additive Gaussian std on [0, 1], per channel",
                "jpeg": "Pillow JPEG quality",
                "contrast": "factor towards the mean luminance",
                "exposure": "|EV| in linear light (gamma 2.2), sign random, clipped",
                "resample": "downscale factor (box), upscaled back bicubic or bilinear",
                "color_cast": "amplitude of the channel gains",
            },
            "trained": list(config.kinds),
            "views": "random crop 384x512 at a random scale (1-1.5x the covering scale, never upscaled), random mirror"
            + (
                "; random tone (each with p 1/2: exposure EV {exposure}, contrast factor {contrast}, colour cast "
                "amplitude {color_cast}), the same for the clean and degraded versions".format(**qd.TONE_JITTER)
                if config.tone
                else ""
            ),
            "clean_augmentation": "JPEG quality 75-95 (p 0.5), Gaussian noise std <= 0.004 (p 1/3); target stays clean",
            "batches": f"groups of {config.group}: one random view clean plus {config.group - 1} degradations "
            "of distinct trained kinds at uniform severities",
            "photo_draws": "uniform"
            if config.calm_weight == 1.0
            else f"calm photos weighted {config.calm_weight:g}, the others 1",
            "content_cap": "blur and resampling severity capped by the RMS change at the "
            f"{config.visible_percentile:g}th percentile of {qd.VISIBLE_BLOCK}x{qd.VISIBLE_BLOCK} blocks",
        },
        "target_mapping": {
            "formula": f"score = {qd.CLEAN_SCORE:g} - {qd.CLEAN_SCORE - qd.WORST_SCORE:g} * severity",
            "clean": qd.CLEAN_SCORE,
            "levels": {f"{s:.1f}": float(qd.target_score(s)) for s in qd.LEVELS},
            "clearly_visible_from_severity": qd.CLEAR_SEVERITY,
        },
        "training": {
            "seed": config.seed,
            "phases": [
                {"steps": ph.steps, "batch_size": ph.batch_size, "crop": list(ph.crop) if ph.crop else [384, 512]}
                for ph in config.phases
            ],
            "optimizer": f"AdamW, peak lr {config.learning_rate:g}, {config.warmup_steps} warm-up steps, cosine "
            f"decay to 1 %, weight decay {config.weight_decay:g} (kernels only)",
            "loss": f"Huber (delta {config.huber_delta:g} points) on the score + {config.pair_weight:g} x Huber on "
            "score differences between versions of the same view; on (score - 50) / 20"
            + (", folded into fc_out" if module.score_range is None else ""),
            "batchnorm": "statistics recomputed exactly on 24 batches of whole views after training (precise BN)",
            "wall_time_s": round(wall_s, 1),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__} ({jax.default_backend()})",
        },
        "heldout_evaluation": report,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


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


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """The settings of a `train_default_model` run (the options of `hasmap train-quality`)."""

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
    calm_weight: float = 1.0  # how much more often a "calm" photo (photos.CATEGORIES) is drawn than another
    visible_percentile: float = qd.VISIBLE_PERCENTILE  # the blur / resampling labels' cap (effective_severity)
    pooling: str = "global"  # KonCept512.pooling of the trained model ("global" or "mean_max")

    def __post_init__(self):
        if self.pooling not in ("global", "mean_max"):
            raise ValueError(f"pooling must be 'global' or 'mean_max' (KonCept512.pooling), got {self.pooling!r}")
        if not self.calm_weight > 0:
            raise ValueError(f"calm_weight must be > 0, got {self.calm_weight}")
        if not 0.0 <= self.visible_percentile <= 100.0:
            raise ValueError(f"visible_percentile must be in [0, 100], got {self.visible_percentile}")

    def photo_weights(self, photos: Sequence[photo_manifest.Photo]) -> list[float] | None:
        """The draw weight of each training photo (`calm_weight` for calm ones, 1 for the rest);
        None at calm_weight 1: uniform draws, as runs before issue 26 made them."""
        if self.calm_weight == 1.0:
            return None
        return [self.calm_weight if p.category == "calm" else 1.0 for p in photos]


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
    heldout = _prepared("heldout", photo_roots, log)
    train_images = _prepared("train", photo_roots, log)
    weights = config.photo_weights(photo_manifest.photos("train"))
    if weights is not None:
        calm = sum(w for w, p in zip(weights, photo_manifest.photos("train"), strict=True) if p.category == "calm")
        log(f"calm photos drawn with weight {config.calm_weight:g}: {calm / sum(weights):.0%} of the draws")
    module = make_model(pooling=config.pooling)
    start = time.perf_counter()
    variables = train(
        module,
        train_images,
        seed=config.seed,
        phases=config.phases,
        learning_rate=config.learning_rate,
        warmup_steps=config.warmup_steps,
        weight_decay=config.weight_decay,
        huber_delta=config.huber_delta,
        group=config.group,
        pair_weight=config.pair_weight,
        kinds=config.kinds,
        tone=config.tone,
        weights=weights,
        visible_percentile=config.visible_percentile,
        log=log,
    )
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
    path = _write(out, variables, _card(module, config, report, wall, command), force=force)
    log(f"wrote {path}")
    return path


def evaluate_checkpoint(
    source: str | os.PathLike,
    photo_roots: Sequence[str] = (),
    *,
    views: int = 3,
    split: str = "heldout",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The evaluation (`evaluate`) of a quality checkpoint on the photos of `split` ("heldout": held-out
    photos of the training's packages; "unseen": packages it never read); print it with `format_report`."""
    from hasmap_jax.weights.loading import load_quality_model

    if split not in ("heldout", "unseen"):
        raise ValueError(f"evaluate on 'heldout' or 'unseen' photos, not {split!r}")
    model = load_quality_model(source)
    photos = _prepared(split, photo_roots, log)
    listed = photo_manifest.photos(split)
    report = evaluate(
        model.module,
        model.variables,
        photos,
        views=views,
        groups=[p.package for p in listed],
        categories=[p.category for p in listed],
    )
    return {**report, "split": split}


def record_evaluation(source: str | os.PathLike, report: dict[str, Any], *, command: str = "") -> Path:
    """Writes `report` (from `evaluate_checkpoint`) into the checkpoint's model card as
    "<split>_evaluation" (e.g. "unseen_evaluation"), with the command that made it; the card is
    replaced in one step (`hasmap_jax.files.atomic_output`), the weights are not touched.

    Returns:
      The card's path.
    """
    from hasmap_jax.files import atomic_output

    card_path = Path(source).expanduser() / checkpoint.CARD_NAME
    card = checkpoint.read_card(card_path.parent)
    card[f"{report.get('split', 'heldout')}_evaluation"] = {**report, "command": command}
    with atomic_output(card_path, "w", replace=True) as f:
        f.write(json.dumps(card, indent=2) + "\n")
    return card_path
