"""`hasmap convert SRC DST`: KonCept512 / VGG16 weights into a hasmap_jax checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path

from hasmap_jax.weights.loading import convert


def register(subparsers) -> None:
    c = subparsers.add_parser("convert", help="convert KonCept512 .pth / .h5 weights into a hasmap_jax checkpoint")
    c.add_argument(
        "src", help="KonCept512.pth (PyTorch), koncep512-trained-model.h5 (Keras) or a VGG16 sensitivity model"
    )
    c.add_argument("dst", type=Path, help="new checkpoint directory (must not exist)")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = convert(args.src, args.dst)
    print(f"wrote {out} (model card: {out / 'model_card.json'})")
    return 0
