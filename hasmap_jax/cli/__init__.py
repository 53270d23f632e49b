"""The `hasmap` command line: one parser, one small module per command.

Each command module holds its arguments (`register(subparsers)`) and a `run(args)` that calls the
library and prints; the work itself is done by the library.

    hasmap convert            cli/convert.py            weights into a checkpoint
    hasmap score              cli/score.py              quality scores of images
    hasmap protect            cli/protect.py            protect photos (hasmap_jax.protect)
    hasmap evaluate           cli/evaluate.py           accuracy, distortion, HTML report (hasmap_jax.evaluation)
    hasmap train-sensitivity  cli/train_sensitivity.py  train the sensitivity network (hasmap_jax.training.sensitivity)
    hasmap sensitivity        cli/sensitivity.py        sensitivity maps as PNG (hasmap_jax.sensitivity.render)
    hasmap train-quality      cli/train_quality.py      train the default quality model (hasmap_jax.training.train)

`cli/common.py` holds the argument types and exit statuses the commands share, `cli/progress.py`
the progress bar (rich) of `protect` and `evaluate`.
"""

from __future__ import annotations

import argparse
import sys

from hasmap_jax.cli import (
    convert,
    evaluate,
    protect,
    score,
    sensitivity,
    train_quality,
    train_sensitivity,
)
from hasmap_jax.models.variables import WeightError

COMMANDS = (convert, score, protect, evaluate, train_sensitivity, sensitivity, train_quality)


def build_parser() -> argparse.ArgumentParser:
    """The `hasmap` parser with every command; `args.func(args)` runs the chosen one."""
    p = argparse.ArgumentParser(prog="hasmap", description="HASMap: protect photos against image-quality models.")
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs `hasmap ARGV...`; returns the exit status (2 for a usage error, with a one-line message)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        return args.func(args)
    except (WeightError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"hasmap {args.command}: error: {e}", file=sys.stderr)
        return 2


__all__ = ["build_parser", "main"]
