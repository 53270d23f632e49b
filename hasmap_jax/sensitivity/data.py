"""Training pairs (photo, human sensitivity map): discovery, reading rules, a tfds builder, grain input.

Folder layouts (`find_pairs`)
-----------------------------
Two layouts are recognised; in both the map of the photo `NAME.<ext>` is `NAME_sensitivity.<ext>`
(any of the extensions in `IMAGE_EXTENSIONS`, case-insensitive; the two extensions may differ):

- EMOd: `DATA_DIR/images/NAME.jpg` and `DATA_DIR/sensitivity/NAME_sensitivity.jpg` (the layout of
  the EMOd data set the authors trained on). Chosen whenever `DATA_DIR/images/` exists.
- flat: both files side by side, `DATA_DIR/NAME.png` and `DATA_DIR/NAME_sensitivity.png`.

Hidden files and files with other extensions are ignored; sub-folders are not searched (other than
`images/` and `sensitivity/` in the EMOd layout).

Bad data: the rules
-------------------
- A photo without its map, or a map without its photo: a `DataWarning` naming the file; the file
  is skipped. No pair at all: `DataError`.
- Two files that claim the same name (`a.jpg` and `a.png`, or two maps of `a`): `DataError` naming
  both, since which one is meant cannot be guessed.
- A file Pillow cannot read or decode (damaged, truncated, not an image), or one of more than
  `hasmap_jax.files.DEFAULT_MAX_PIXELS` pixels: `DataError` naming it.
- A map whose size differs from its photo's: a `DataWarning` naming it; the map is stretched onto
  the photo's frame (bilinear), which is what happens to every pair anyway when both are resized
  to the training size.
- A map with more than one channel: grey stored as RGB (every pixel's channels within
  `GREY_TOLERANCE` levels of each other, as a JPEG of a grey map is) is read as its luminance
  without a word; a genuinely coloured map (a false-colour heat map, say) is a `DataError` naming
  it, because no conversion from colours to sensitivity can be assumed. An alpha channel is
  dropped; a map whose alpha is not fully opaque gets a `DataWarning`.
- Map values: 8-bit maps are divided by 255, 16-bit maps (`I;16`, `I`) by 65535; a float (`F`)
  map is a `DataError`. Maps are stored at 8 bits (EMOd's maps are 8-bit JPEGs).
- Photos are read by `hasmap_jax.files.read_image`, as every command reads them: any mode Pillow
  reads becomes 8-bit RGB (greyscale photos become grey RGB, 16-bit ones are scaled to 8 bits,
  CMYK goes through its colour profile); transparency is dropped.
- Photos and maps are turned upright by their EXIF orientation, as viewers show them.

Every pair is resized (bilinear, Pillow, antialiased when shrinking) to the training size, both
the photo and the map, without cropping: a photo of another aspect ratio is stretched, and so is
its map, so the two stay aligned.

Split, storage and input pipeline
---------------------------------
`split_pairs` holds out `round(val_fraction * n)` pairs (at least 1) for validation, drawn by name
with `numpy.random.default_rng(seed)`; the draw depends only on the sorted names and the seed.
`prepare` writes both splits with `SensitivityPairs`, a `tfds.core.GeneratorBasedBuilder` using
`file_format="array_record"`, which needs no TensorFlow: photos and maps are encoded by Pillow
(the builder is handed PIL images, which tfds encodes without TensorFlow), and
`builder.as_data_source(split)` returns numpy examples `{"image": (H, W, 3) uint8, "map": (H, W, 1)
uint8, "name": bytes}`. The builder's config name is a fingerprint of the files' contents and of the
preparation settings, so changed data never reuses a stale cache.

`train_dataset` builds one epoch as a `grain.MapDataset`: a shuffle and an augmentation seeded by
(seed, epoch), so epoch k is the same whether training ran straight through or resumed.
Augmentation keeps photo and map aligned: a random zoom by s in [1, max_scale] (both resized,
bilinear) with a random crop back to the training size, and a horizontal flip with probability
1/2. No vertical flip: where people look depends on which way is up.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hasmap_jax import files
from hasmap_jax.files import ImageReadError

#: File extensions read as images (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
#: The suffix of a map's stem: the map of `NAME.jpg` is `NAME_sensitivity.<ext>`.
MAP_SUFFIX = "_sensitivity"
#: A multi-channel map whose channels differ by at most this many 8-bit levels is grey.
GREY_TOLERANCE = 8
#: Bump when what `prepare` writes changes, so old caches are not reused.
_FORMAT_VERSION = 2


class DataError(ValueError):
    """Training data that cannot be used; the message names the file."""


class DataWarning(UserWarning):
    """Training data used with a documented fix, or skipped; the message names the file."""


@dataclasses.dataclass(frozen=True)
class Pair:
    """A photo and its sensitivity map.

    Attributes:
      name: the photo's stem, unique within a data set.
      image: path of the photo.
      map: path of the map.
    """

    name: str
    image: Path
    map: Path


@dataclasses.dataclass(frozen=True)
class PairList:
    """What `find_pairs` found.

    Attributes:
      root: the data folder.
      layout: "emod" or "flat".
      pairs: the usable pairs, sorted by name.
      skipped: files skipped for want of a partner (each was warned about).
    """

    root: Path
    layout: str
    pairs: tuple[Pair, ...]
    skipped: tuple[str, ...]


def _image_files(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _by_stem(files: Sequence[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise DataError(
                f"{out[p.stem]} and {p}: two {what} files named {p.stem!r}; keep one (which is meant cannot be guessed)"
            )
        out[p.stem] = p
    return out


def find_pairs(data_dir: str | os.PathLike) -> PairList:
    """The (photo, map) pairs in `data_dir`, EMOd or flat layout (see the module docstring).

    Warns (`DataWarning`) about each photo without a map and each map without a photo, which are
    skipped.

    Raises:
      FileNotFoundError: `data_dir` (or, in the EMOd layout, its `sensitivity/` folder) is missing.
      DataError: two files claim the same name, or no pair is left.
    """
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such data directory")
    if (root / "images").is_dir():
        layout = "emod"
        map_dir = root / "sensitivity"
        if not map_dir.is_dir():
            raise FileNotFoundError(
                f"{map_dir}: {root} has an images/ folder (EMOd layout) but no sensitivity/ folder of maps "
                f"(expected images/NAME.jpg with sensitivity/NAME{MAP_SUFFIX}.jpg)"
            )
        images = _by_stem(_image_files(root / "images"), "photo")
        maps = _by_stem(_image_files(map_dir), "map")
    else:
        layout = "flat"
        found = _image_files(root)
        images = _by_stem([p for p in found if not p.stem.endswith(MAP_SUFFIX)], "photo")
        maps = _by_stem([p for p in found if p.stem.endswith(MAP_SUFFIX)], "map")
    pairs, skipped = [], []
    for stem, path in images.items():
        partner = maps.get(stem + MAP_SUFFIX)
        if partner is None:
            warnings.warn(f"{path}: no sensitivity map {stem}{MAP_SUFFIX}.* beside it; skipped", DataWarning, 2)
            skipped.append(str(path))
        else:
            pairs.append(Pair(stem, path, partner))
    for stem, path in maps.items():
        photo = stem[: -len(MAP_SUFFIX)] if stem.endswith(MAP_SUFFIX) else None
        if photo is None:
            warnings.warn(
                f"{path}: a file in the map folder whose name does not end in {MAP_SUFFIX!r}; skipped",
                DataWarning,
                2,
            )
            skipped.append(str(path))
        elif photo not in images:
            warnings.warn(f"{path}: a sensitivity map without its photo {photo}.*; skipped", DataWarning, 2)
            skipped.append(str(path))
    if not pairs:
        raise DataError(
            f"{root}: no (photo, map) pairs found ({layout} layout); expected NAME.jpg with "
            f"NAME{MAP_SUFFIX}.jpg side by side, or images/NAME.jpg with sensitivity/NAME{MAP_SUFFIX}.jpg"
        )
    return PairList(root, layout, tuple(sorted(pairs, key=lambda p: p.name)), tuple(skipped))


def _unreadable(path: Path, e: ImageReadError) -> DataError:
    detail = str(e).removeprefix(f"{path}: ")
    return DataError(f"{path}: cannot read the image ({detail})")


def read_photo(path: str | os.PathLike) -> np.ndarray:
    """A photo as (H, W, 3) uint8 RGB, upright, read by `hasmap_jax.files.read_image` (any mode to
    8-bit RGB, transparency dropped; no minimum size).

    Raises:
      DataError: the file cannot be read or is over `files.DEFAULT_MAX_PIXELS` (the message names it).
    """
    path = Path(path)
    try:
        return files.read_image(path, min_side=1).judged
    except ImageReadError as e:
        raise _unreadable(path, e) from None


def read_map(path: str | os.PathLike) -> np.ndarray:
    """A sensitivity map as (H, W) float32 in [0, 1], by the rules in the module docstring.

    Raises:
      DataError: unreadable, a colour (not grey) map, or a float map (the message names the file).
    """
    path = Path(path)
    try:
        with files.open_image(path, min_side=1) as im:
            return _map_values(path, im)
    except ImageReadError as e:
        raise _unreadable(path, e) from None


def _map_values(path: Path, im: Image.Image) -> np.ndarray:
    """`read_map` of an opened, upright image in its file's own mode."""
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("1", "L"):
        return np.asarray(im.convert("L"), np.float32) / 255.0
    if mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        a = np.asarray(im, np.float64)
        if a.min() < 0 or a.max() > 65535:
            raise DataError(f"{path}: a 32-bit integer map with values outside 0..65535; save it as 8- or 16-bit")
        return (a / 65535.0).astype(np.float32)
    if mode == "F":
        raise DataError(f"{path}: a floating-point map; save it as an 8- or 16-bit greyscale PNG")
    bands = im.getbands()
    if "A" in bands:
        alpha = np.asarray(im.getchannel("A"))
        if alpha.min() < 255:
            warnings.warn(f"{path}: the map's alpha channel is ignored (it is not fully opaque)", DataWarning, 3)
    if mode == "LA":
        return np.asarray(im.getchannel("L"), np.float32) / 255.0
    rgb = np.asarray(im.convert("RGB"), np.int16)
    spread = int((rgb.max(axis=-1) - rgb.min(axis=-1)).max())
    if spread > GREY_TOLERANCE:
        raise DataError(
            f"{path}: a colour sensitivity map (its channels differ by up to {spread} levels); a map must be "
            f"greyscale (a grey map stored as RGB, channels within {GREY_TOLERANCE} levels, is accepted). "
            "Convert it to greyscale yourself if its brightness is the sensitivity."
        )
    luma = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as Pillow's "L"
    return (luma / 255.0).astype(np.float32)


def _resize(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of uint8 (H, W[, 3]) to `size` (height, width)."""
    if a.shape[:2] == tuple(size):
        return a
    return np.asarray(Image.fromarray(a).resize((size[1], size[0]), Image.Resampling.BILINEAR))


def load_pair(pair: Pair, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A pair read by the rules of the module docstring and resized to `size` (height, width).

    Returns:
      (image (H, W, 3) uint8, map (H, W) uint8), H, W = size.

    Raises:
      DataError: naming the file that cannot be used.
    """
    image = read_photo(pair.image)
    smap = read_map(pair.map)
    if smap.shape != image.shape[:2]:
        warnings.warn(
            f"{pair.map}: map is {smap.shape[1]}x{smap.shape[0]} but its photo {pair.image.name} is "
            f"{image.shape[1]}x{image.shape[0]} (WxH); the map is stretched onto the photo",
            DataWarning,
            2,
        )
    smap8 = np.round(np.clip(smap, 0.0, 1.0) * 255.0).astype(np.uint8)
    return _resize(image, size), _resize(smap8, size)


def split_pairs(pairs: Sequence[Pair], *, val_fraction: float, seed: int) -> tuple[tuple[Pair, ...], tuple[Pair, ...]]:
    """(train, validation): `round(val_fraction * n)` pairs, at least 1, held out at random.

    Raises:
      ValueError: `val_fraction` not in (0, 1), or fewer than 2 pairs.
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    ordered = sorted(pairs, key=lambda p: p.name)
    n = len(ordered)
    if n < 2:
        raise DataError(f"{n} pair(s): training needs at least 2 (one of them held out for validation)")
    n_val = min(max(1, round(val_fraction * n)), n - 1)
    held = set(np.random.default_rng(seed).permutation(n)[:n_val].tolist())
    train = tuple(p for i, p in enumerate(ordered) if i not in held)
    val = tuple(p for i, p in enumerate(ordered) if i in held)
    return train, val


def fingerprint(pairs: Sequence[Pair], **settings: Any) -> str:
    """sha256 over the pairs' names and file contents and the given settings."""
    h = hashlib.sha256(repr((_FORMAT_VERSION, sorted(settings.items()))).encode())
    for p in sorted(pairs, key=lambda p: p.name):
        h.update(f"\0{p.name}\0{p.image.name}\0{p.map.name}\0".encode())
        for f in (p.image, p.map):
            h.update(bytes.fromhex(files.sha256_file(f)))
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The tensorflow-datasets builder (array_record, no TensorFlow)


def _builder_class():
    """`SensitivityPairs`, defined on first use so that importing this module does not import tfds
    (a slow import that only training needs)."""
    global _BUILDER
    if _BUILDER is not None:
        return _BUILDER
    import tensorflow_datasets as tfds  # the [train] extra: only training needs it

    class SensitivityPairs(tfds.core.GeneratorBasedBuilder):
        """(photo, sensitivity map) pairs at a fixed size, split into train and validation.

        Not a registered catalogue data set: it is built from a `PairList` found on disk. Examples are
        `{"image": (H, W, 3) uint8, "map": (H, W, 1) uint8, "name": str}`, PNG-encoded by Pillow.
        """

        VERSION = tfds.core.Version("1.0.0")
        RELEASE_NOTES = {"1.0.0": "First version."}

        # tfds looks for a checksums file beside a catalogue data set's code; locating the module
        # imports `importlib_resources`, which tfds 4.9.10 uses but does not declare. Nothing is
        # downloaded here, so there is no code path to look in.
        @tfds.core.utils.classproperty
        @classmethod
        def code_path(cls):
            return None

        def __init__(self, *, splits: dict[str, Sequence[Pair]], size: tuple[int, int], config, data_dir):
            self._splits = splits
            self._size = tuple(size)
            super().__init__(data_dir=data_dir, config=config, file_format="array_record")

        def _info(self):
            h, w = self._size
            return tfds.core.DatasetInfo(
                builder=self,
                description="Photos and human sensitivity maps (1 = a change there is most noticeable).",
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(h, w, 3), encoding_format="png"),
                        "map": tfds.features.Image(shape=(h, w, 1), encoding_format="png"),
                        "name": tfds.features.Text(),
                    }
                ),
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing is downloaded
            return {split: self._generate_examples(pairs) for split, pairs in self._splits.items()}

        def _generate_examples(self, pairs):
            for pair in pairs:
                image, smap = load_pair(pair, self._size)
                # PIL images: tfds encodes them with Pillow; numpy arrays would need TensorFlow.
                yield pair.name, {"image": Image.fromarray(image), "map": Image.fromarray(smap), "name": pair.name}

    SensitivityPairs.__module__ = __name__
    _BUILDER = SensitivityPairs
    return _BUILDER


_BUILDER = None


class _QuietTfds(logging.Filter):
    """Drops two absl notices tfds logs on every run here, both expected: our builder config is
    not a catalogue one, and Pillow (not OpenCV) decodes the PNGs."""

    _NOTICES = ("Using custom data configuration", "OpenCV is not installed")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._NOTICES)


def _quiet_tfds() -> None:
    logger = logging.getLogger("absl")
    if not any(isinstance(f, _QuietTfds) for f in logger.filters):
        logger.addFilter(_QuietTfds())


@dataclasses.dataclass(frozen=True)
class PreparedData:
    """Both splits, stored by tfds and readable as numpy.

    Attributes:
      train, validation: random-access sources (`len`, `[i]` -> example dict of numpy arrays).
      description: JSON-ready summary for the model card (folder, layout, counts, names held out,
        fingerprint, skipped files).
      builder: the tfds builder.
    """

    train: Any
    validation: Any
    description: dict[str, Any]
    builder: Any


def prepare(
    data_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    *,
    size: tuple[int, int],
    val_fraction: float = 0.1,
    seed: int = 0,
) -> PreparedData:
    """Finds the pairs in `data_dir`, splits them and stores both splits under `cache_dir` (tfds).

    Reuses `cache_dir` when the same files were prepared with the same settings before.

    Args:
      data_dir: the data folder (layouts and bad-data rules in the module docstring).
      cache_dir: where tfds writes the array_record files.
      size: (height, width) every pair is resized to.
      val_fraction: share of the pairs held out for validation (see `split_pairs`).
      seed: the draw of the held-out pairs.

    Raises:
      DataError: naming the file that cannot be used (see the rules).
    """
    import tensorflow_datasets as tfds  # the [train] extra: only training needs it

    _quiet_tfds()
    size = (int(size[0]), int(size[1]))
    if min(size) < 32:
        raise ValueError(f"size must be at least 32x32 (VGG16 pools 5 times), got {size}")
    found = find_pairs(data_dir)
    train, val = split_pairs(found.pairs, val_fraction=val_fraction, seed=seed)
    digest = fingerprint(found.pairs, size=size, val_fraction=val_fraction, seed=seed)
    config = tfds.core.BuilderConfig(
        name=f"h{size[0]}w{size[1]}_{digest[:16]}", description=f"{found.root}, {len(found.pairs)} pairs"
    )
    cls = _builder_class()
    builder = cls(
        splits={"train": train, "validation": val},
        size=size,
        config=config,
        data_dir=os.fspath(Path(cache_dir).expanduser().absolute()),
    )
    builder.download_and_prepare()
    description = {
        "source": str(found.root.absolute()),
        "layout": found.layout,
        "pairs": len(found.pairs),
        "train": len(train),
        "validation": len(val),
        "validation_names": [p.name for p in val],
        "size": list(size),
        "val_fraction": val_fraction,
        "split_seed": seed,
        "sha256": digest,
        "skipped": list(found.skipped),
    }
    return PreparedData(builder.as_data_source("train"), builder.as_data_source("validation"), description, builder)


# --------------------------------------------------------------------------------------------
# grain input pipeline


def augment(example: dict[str, Any], rng: np.random.Generator, *, max_scale: float = 1.25, flip: bool = True):
    """A random zoom-and-crop and horizontal flip applied identically to photo and map.

    Args:
      example: {"image": (H, W, 3) uint8, "map": (H, W) or (H, W, 1) uint8, ...}.
      rng: the source of randomness (grain passes one seeded by (seed, index)).
      max_scale: zoom factor drawn uniformly in [1, max_scale]; 1 disables zooming.
      flip: flip left-right with probability 1/2.

    Returns:
      {"image": (H, W, 3) uint8, "map": (H, W) uint8}, the same size as the input.
    """
    image, smap = example["image"], np.asarray(example["map"]).reshape(example["image"].shape[:2])
    h, w = image.shape[:2]
    scale = float(rng.uniform(1.0, max_scale)) if max_scale > 1.0 else 1.0
    if scale > 1.0:
        hs, ws = max(h, round(h * scale)), max(w, round(w * scale))
        top, left = int(rng.integers(0, hs - h + 1)), int(rng.integers(0, ws - w + 1))
        image = _resize(image, (hs, ws))[top : top + h, left : left + w]
        smap = _resize(smap, (hs, ws))[top : top + h, left : left + w]
    if flip and rng.random() < 0.5:
        image, smap = image[:, ::-1], smap[:, ::-1]
    return {"image": np.ascontiguousarray(image), "map": np.ascontiguousarray(smap)}


def _plain(example: dict[str, Any]) -> dict[str, Any]:
    image = example["image"]
    return {"image": image, "map": np.asarray(example["map"]).reshape(image.shape[:2])}


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A 32-bit seed for one epoch's shuffle (stream 0) or augmentation (stream 1)."""
    return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def train_dataset(
    source,
    *,
    epoch: int,
    batch_size: int,
    seed: int = 0,
    max_scale: float = 1.25,
    flip: bool = True,
):
    """One training epoch as a `grain.MapDataset` of batches {"image": (B, H, W, 3), "map": (B, H, W)}.

    Shuffled and augmented with seeds derived from (seed, epoch) only, so any epoch can be rebuilt
    exactly (resuming). The last incomplete batch is dropped (a fresh shuffle each epoch means
    every pair is still seen); a source smaller than `batch_size` gives no batch.
    """
    import grain  # the [train] extra: only training needs it

    ds = grain.MapDataset.source(source).shuffle(seed=epoch_seed(seed, epoch, 0))
    ds = ds.random_map(
        lambda ex, rng: augment(ex, rng, max_scale=max_scale, flip=flip), seed=epoch_seed(seed, epoch, 1)
    )
    return ds.batch(batch_size, drop_remainder=True)


def eval_dataset(source, *, batch_size: int):
    """The source in order, unaugmented, as a `grain.MapDataset` of batches (the last may be smaller)."""
    import grain  # the [train] extra: only training needs it

    return grain.MapDataset.source(source).map(_plain).batch(batch_size)
