"""The `hasmap` command line; a thin layer over the importable API."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hasmap_jax.files import DEFAULT_MAX_PIXELS
from hasmap_jax.runtime import compile_cache


def _convert(args: argparse.Namespace) -> int:
    from hasmap_jax.weights.loading import convert

    out = convert(args.src, args.dst)
    print(f"wrote {out} (model card: {out / 'model_card.json'})")
    return 0


def _score(args: argparse.Namespace) -> int:
    from hasmap_jax.evaluation import score_images
    from hasmap_jax.files import ImageReadError, read_image
    from hasmap_jax.weights.loading import load_quality_model

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hasmap", description="HASMap: protect photos against image-quality models.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert KonCept512 .pth / .h5 weights into a hasmap_jax checkpoint")
    c.add_argument(
        "src", help="KonCept512.pth (PyTorch), koncep512-trained-model.h5 (Keras) or a VGG16 sensitivity model"
    )
    c.add_argument("dst", type=Path, help="new checkpoint directory (must not exist)")
    c.set_defaults(func=_convert)

    s = sub.add_parser("score", help="print each image's quality score")
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
    s.set_defaults(func=_score)

    from hasmap_jax.cli import protect as protect_cli
    from hasmap_jax.cli import sensitivity as sensitivity_cli

    protect_cli.register(sub)
    sensitivity_cli.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hasmap_jax.weights.conversion.common import WeightError

    try:
        return args.func(args)
    except (WeightError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"hasmap {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
