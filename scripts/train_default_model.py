"""Trains the shipped default quality model into `weights/default` (see hasmap_jax.training.train).

    python scripts/train_default_model.py --photo-root DIR [--force]

is the same as `hasmap train-quality --photo-root DIR [--force]` (all its options apply); run it
from the repository root.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hasmap_jax.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["train-quality", *sys.argv[1:]]))
