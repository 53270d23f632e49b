"""`hasmap score IMAGE...`: each image's quality score, one line each (name, score, high/low)."""

from __future__ import annotations

import argparse
import sys

from hasmap_jax.files import DEFAULT_MAX_PIXELS, ImageReadError, read_image
from hasmap_jax.runtime import compile_cache
from hasmap_jax.scoring import score_images


def register(subparsers) -> None:
    s = subparsers.add_parser("score", help="print each image's quality score")
    s.add_argument(
        "images", nargs="+", help="image files; other sizes than the model's are resized to cover it and centre-cropped"
    )
    s.add_argument(
        "--model", default="default", help="shipped model name, checkpoint, .pth or .h5 (default: %(default)s)"
    )
    s.add_argument(
        "--threshold", type=float, default=50.0, help="'high' when the score exceeds this (default: %(default)s)"
    )
    s.add_argument(
        "--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (default: %(default)s)"
    )
    compile_cache.add_argument(s)
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Prints `NAME<tab>SCORE<tab>high|low` per image; an unreadable image is reported (exit status 1)."""
    from hasmap_jax.weights.loading import load_quality_model  # looked up now: tests replace it

    compile_cache.from_args(args)
    model = load_quality_model(args.model)
    status = 0
    for name in args.images:
        try:  # the reader `protect` and `evaluate` use: upright (EXIF orientation), size guards
            rgb = read_image(name, max_pixels=args.max_pixels, min_side=1).judged
        except ImageReadError as e:
            print(f"{name}: {e}", file=sys.stderr)
            status = 1
            continue
        s = float(score_images(model, rgb[None])[0])
        print(f"{name}\t{s:.3f}\t{'high' if s > args.threshold else 'low'}")
    return status
