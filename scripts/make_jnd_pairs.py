"""Writes (photo, JND sensitivity map) pairs in the EMOd layout, for training a sensitivity network
when no human-annotated maps are at hand.

The human sensitivity annotations the paper's maps were trained on (EMOd) are not public, so the
only targets available offline are the training-free default map's (`hasmap_jax.sensitivity`, 3 /
JND). A network trained on these pairs learns to imitate that map; it is NOT a model of human
sensitivity. What it is good for: exercising `hasmap train-sensitivity` end to end on real photos,
and giving `benchmarks/sensitivity_effect.py` a trained row. Photos: the TRAIN split of the
default quality model's manifest (`hasmap_jax.training.photos`; the held-out photos, which the
examples come from, are never used), `--views` random 384x512 views of each (the centre view first):

    python scripts/make_jnd_pairs.py --photo-root /opt/hasmap-photos -o /tmp/jnd-pairs
    hasmap train-sensitivity /tmp/jnd-pairs -o /tmp/jnd-sensitivity --size 192x256 --epochs 8

Writes OUT/images/NNNN.png and OUT/sensitivity/NNNN_sensitivity.png (8-bit greyscale, 255 = 1).
Refuses an existing OUT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE
from hasmap_jax.training import data as quality_data
from hasmap_jax.training import photos


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--photo-root", action="append", default=[], help="pip --target folder or Debian prefix")
    p.add_argument("-o", "--out", type=Path, required=True, help="new folder to write the pairs into")
    p.add_argument("--views", type=int, default=3, help="views per photo (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.out.exists():
        print(f"{args.out} exists; choose a new folder", file=sys.stderr)
        return 2

    import jax.numpy as jnp

    from hasmap_jax.sensitivity import jnd_sensitivity

    tmp = args.out.with_name(args.out.name + ".partial")
    (tmp / "images").mkdir(parents=True, exist_ok=False)
    (tmp / "sensitivity").mkdir()
    k = 0
    for i, photo in enumerate(photos.photos("train")):
        image = quality_data.prepare(quality_data.load_photo(photo, args.photo_root))
        rng = np.random.default_rng([args.seed, i])
        for v in range(args.views):
            view = (
                quality_data.center_view(image, KONCEPT_INPUT_SIZE)
                if v == 0
                else quality_data.random_view(rng, image, KONCEPT_INPUT_SIZE)
            )
            s = np.asarray(jnd_sensitivity(jnp.asarray(view[None], jnp.float32) / 255.0))[0]
            k += 1
            Image.fromarray(np.ascontiguousarray(view)).save(tmp / "images" / f"{k:04d}.png")
            Image.fromarray(np.round(np.clip(s, 0, 1) * 255).astype(np.uint8), "L").save(
                tmp / "sensitivity" / f"{k:04d}_sensitivity.png"
            )
    tmp.rename(args.out)
    print(f"wrote {k} pairs to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
