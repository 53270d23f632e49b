"""Pictures of sensitivity maps: the package's one colour map, overlays, and the map PNGs `hasmap sensitivity` writes.

`write_sensitivity_maps(images, DIR)` writes, for each photo `NAME.ext`, into DIR:
- `NAME_sensitivity.png`: the map as an 8-bit greyscale PNG, round(255 * S) (white = a change is
  most noticeable), at the photo's size;
- `NAME_overlay.png`: the photo blended half and half with the map in false colour (`colorize`:
  dark blue = insensitive, through purple and orange, to pale yellow = most sensitive).
Existing files are never overwritten: if any output name already exists, or two photos share a
stem, nothing is written and the error names them. Each file is written with
`hasmap_jax.files.atomic_output(path, replace=False)`, which fails rather than replaces if the name
appeared meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hasmap_jax.files import atomic_output
from hasmap_jax.sensitivity.data import read_photo
from hasmap_jax.sensitivity.maps import resolve_sensitivity

#: Colour stops of the false-colour scale, evenly spaced over [0, 1]: a perceptually ordered ramp
#: (dark blue, purple, pink, orange, pale yellow) whose brightness rises all the way, so the order
#: survives greyscale printing and colour-blind viewing.
COLOUR_STOPS = (
    np.array([[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], np.float32) / 255.0
)
#: Weight of the false-colour map in the overlay.
OVERLAY_ALPHA = 0.5


def colorize(values: np.ndarray) -> np.ndarray:
    """False colour of values in [0, 1] (clipped; NaN counts as 0): (...) -> (..., 3) float32 in [0, 1].

    Piecewise linear between `COLOUR_STOPS`; luminance increases with the value.
    """
    s = np.clip(np.nan_to_num(np.asarray(values, np.float32)), 0.0, 1.0) * (len(COLOUR_STOPS) - 1)
    i = np.minimum(np.floor(s).astype(np.int32), len(COLOUR_STOPS) - 2)
    f = (s - i.astype(np.float32))[..., None]
    return (1.0 - f) * COLOUR_STOPS[i] + f * COLOUR_STOPS[i + 1]


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] (clipped) as 8-bit levels: round(255 * v), uint8."""
    return np.round(np.clip(np.asarray(values), 0.0, 1.0) * 255.0).astype(np.uint8)


def overlay(image: np.ndarray, smap: np.ndarray, *, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The photo (H, W, 3) uint8 blended with `colorize(smap)` ((H, W) in [0, 1]): (H, W, 3) uint8."""
    return to_uint8((1.0 - alpha) * (image.astype(np.float32) / 255.0) + alpha * colorize(smap))


def output_paths(image: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(map, overlay) paths that `write_sensitivity_maps` writes for `image`."""
    stem = Path(image).stem
    out = Path(out_dir)
    return out / f"{stem}_sensitivity.png", out / f"{stem}_overlay.png"


def write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes a uint8 (H, W) or (H, W, 3) array as PNG atomically, refusing to replace `path`.

    Raises:
      FileExistsError: `path` exists (nothing is written).
    """
    path = Path(path)
    with atomic_output(path, replace=False) as f:
        Image.fromarray(np.ascontiguousarray(array)).save(f, format="PNG")
    return path


def check_outputs(images: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> list[tuple[Path, Path]]:
    """The (map, overlay) paths of each photo, after checking that none exists and none repeats.

    Raises:
      FileExistsError: an output file exists, or two photos share a stem.
    """
    targets = [output_paths(p, out_dir) for p in images]
    seen: dict[Path, str] = {}
    for src, pair in zip(images, targets, strict=True):
        if pair[0] in seen:
            raise FileExistsError(
                f"{seen[pair[0]]} and {src} would both write {pair[0].name}; map them into different folders "
                "(nothing was written)"
            )
        seen[pair[0]] = str(src)
    existing = [str(t) for pair in targets for t in pair if t.exists()]
    if existing:
        raise FileExistsError(
            f"not overwriting {', '.join(existing)}; choose another output folder (nothing was written)"
        )
    return targets


def write_sensitivity_map(image: str | os.PathLike, out_dir: str | os.PathLike, model: Any) -> tuple[Path, Path]:
    """Writes `NAME_sensitivity.png` and `NAME_overlay.png` of one photo into `out_dir` (created if missing).

    Args:
      image: a photo file (any format Pillow reads), mapped at its own size (at least 32x32 for a
        trained VGG16 model).
      out_dir: the output folder.
      model: a model with `map(images)`; see `hasmap_jax.sensitivity.resolve_sensitivity`.

    Returns:
      (map path, overlay path).

    Raises:
      FileExistsError: an output file exists (not replaced).
      DataError: the photo cannot be read.
    """
    map_path, overlay_path = output_paths(image, out_dir)
    rgb = read_photo(image)
    smap = np.asarray(model.map(rgb[None]))[0]
    write_png(to_uint8(smap), map_path)
    write_png(overlay(rgb, smap), overlay_path)
    return map_path, overlay_path


def write_sensitivity_maps(
    images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, model: Any = "default"
) -> list[tuple[Path, Path]]:
    """Each photo's sensitivity map and overlay, written into `out_dir` (see the module docstring).

    Args:
      images: photo files.
      out_dir: the output folder (created if missing).
      model: "default" (the JND map), a checkpoint path or shipped name, or a model with `map`
        (`hasmap_jax.sensitivity.resolve_sensitivity`).

    Returns:
      [(map path, overlay path)] in the order of `images`.

    Raises:
      FileExistsError: an output file exists, or two photos share a stem (nothing is written).
      DataError: a photo cannot be read (the files of the photos before it are written).
    """
    check_outputs(images, out_dir)
    model = resolve_sensitivity(model)
    return [write_sensitivity_map(p, out_dir, model) for p in images]
