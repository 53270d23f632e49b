"""`hasmap sensitivity IMAGE... -o DIR [--model default|PATH]`: each photo's sensitivity map and overlay.

The files and the never-overwrite rule are described in `hasmap_jax.sensitivity.render`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hasmap_jax.sensitivity import resolve_sensitivity
from hasmap_jax.sensitivity.data import DataError
from hasmap_jax.sensitivity.render import check_outputs, write_sensitivity_map


def register(subparsers) -> None:
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
    s.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Writes each photo's map and overlay; prints one line per photo.

    A photo that cannot be read is reported and skipped (exit status 1); the others are written.
    """
    check_outputs(args.images, args.output)  # before any work: nothing is written if a name is taken
    model = resolve_sensitivity(args.model)
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
