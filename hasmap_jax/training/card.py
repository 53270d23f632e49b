"""The model card of the shipped default quality model: what it is, what it read, how it trained."""

from __future__ import annotations

import datetime
import os
import platform
from typing import TYPE_CHECKING, Any

import jax

from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, KonCept512
from hasmap_jax.training import data as qd
from hasmap_jax.training import photos as photo_manifest

if TYPE_CHECKING:  # train.py writes the card through this module: a run-time import would be circular
    from hasmap_jax.training.train import TrainConfig


def model_card(
    module: KonCept512, config: TrainConfig, report: dict[str, Any], wall_s: float, command: str
) -> dict[str, Any]:
    """The card of a trained default model: architecture, photos read (with their licences),
    degradations, target mapping, training settings and machine, and the held-out evaluation.

    Args:
      module: the trained module.
      config: the run's settings.
      report: its held-out evaluation (`hasmap_jax.training.evaluate.evaluate`).
      wall_s: the training's wall time in seconds.
      command: the command line that ran it.
    """
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
            + (
                "at uniform severities, the last of the same kind as the first, the others distinct trained kinds"
                if config.repeat_kind and config.group >= 3
                else "of distinct trained kinds at uniform severities"
            ),
            "photo_draws": "uniform"
            if config.calm_weight == 1.0
            else f"calm photos weighted {config.calm_weight:g}, the others 1",
            "content_cap": "blur and resampling severity capped by the RMS change at the "
            f"{config.visible_percentile:g}th percentile of {qd.VISIBLE_BLOCK}x{qd.VISIBLE_BLOCK} blocks"
            + (
                f", fading out linearly from nominal severity {config.cap_fade_from:g} to 1"
                if config.cap_fade_from < 1.0
                else ""
            ),
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
