"""Where a quality checkpoint stops ranking blur (or resampling) severities, per category of photo.

For each view of the evaluation (`hasmap_jax.training.evaluate.evaluate`'s views: the same seed,
the centre view and two random ones per photo), scores the clean view and the five nominal
levels of each kind, then prints per category the mean rank correlation (as the model card's
"rank") and how many views score a level at least as high as the one below it ("inversions"), for
each step clean -> 0.2 -> 0.4 -> 0.6 -> 0.8 -> 1.0 (blur sigma 0.53 / 0.94 / 1.69 / 2.99 / 5.3 px).
Issue 26 used it to find that the models scored blur sigma 5.3 above sigma 3 on most views.

    python benchmarks/blur_inversions.py weights/default --photo-root /opt/tuxpaint --photo-root /opt/tuxtype \
        --photo-root /opt/lxqt-themes --photo-root /opt/libelementary-data --photo-root /opt/afterstep-data
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

from hasmap_jax.metrics import spearman  # noqa: E402
from hasmap_jax.training import data as qd  # noqa: E402
from hasmap_jax.training import photos as manifest  # noqa: E402
from hasmap_jax.weights.loading import load_quality_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a shipped model name or a checkpoint folder")
    p.add_argument("--photo-root", action="append", default=[], help="where a photo package is unpacked (repeat)")
    p.add_argument("--split", default="unseen", choices=("heldout", "unseen"))
    p.add_argument("--kinds", default="blur,resample", help="comma-separated degradation kinds (default blur,resample)")
    p.add_argument("--views", type=int, default=3)
    p.add_argument("--seed", type=int, default=1234, help="the evaluation's seed (default: evaluate's, 1234)")
    args = p.parse_args(argv)
    kinds = qd.check_kinds(args.kinds.split(","))

    print(format_machine(describe_machine()))
    print(
        f"settings : model={args.model} split={args.split} kinds={','.join(kinds)} views={args.views} seed={args.seed}"
    )
    model = load_quality_model(args.model)
    apply = jax.jit(lambda v, x: model.module.apply(v, x)[0])
    listed = manifest.photos(args.split)
    images = qd.prepared_photos(args.split, args.photo_root)
    # per (category, kind): rank correlations and, per step, the views whose score does not fall
    rhos: dict[tuple[str, str], list[float]] = {}
    rises: dict[tuple[str, str], np.ndarray] = {}
    for i, (photo, image) in enumerate(zip(listed, images, strict=True)):
        samples = qd.evaluation_samples(np.random.default_rng([args.seed, i]), image, views=args.views)
        view = np.cumsum([s.kind == "clean" for s in samples]) - 1
        keep = [j for j, s in enumerate(samples) if s.kind == "clean" or s.kind in kinds]
        scores = np.zeros(len(samples), np.float32)
        scores[keep] = np.asarray(apply(model.variables, jnp.asarray(np.stack([samples[j].image for j in keep]))))
        for v in range(args.views):
            clean = next(j for j in keep if view[j] == v and samples[j].kind == "clean")
            for kind in kinds:
                levels = sorted((samples[j].nominal, j) for j in keep if view[j] == v and samples[j].kind == kind)
                sev = np.asarray([0.0] + [s for s, _ in levels])
                sc = np.asarray([scores[clean]] + [scores[j] for _, j in levels])
                key = (photo.category, kind)
                rhos.setdefault(key, []).append(spearman(sev, sc))
                rises[key] = rises.get(key, np.zeros(len(levels), int)) + (np.diff(sc) >= 0)
    steps = " ".join(f"{a:g}->{b:g}" for a, b in zip((0.0, *qd.LEVELS[:-1]), qd.LEVELS, strict=True))
    print(f"{'category':<9} {'kind':<9} {'views':>5} {'rank':>6} {'<=-0.9':>7}   inversions per step ({steps})")
    for (category, kind), r in sorted(rhos.items()):
        r = np.asarray(r)
        print(
            f"{category:<9} {kind:<9} {r.size:>5} {r.mean():>6.3f} {np.mean(r <= -0.9):>7.0%}   "
            + " ".join(f"{n:>7d}" for n in rises[(category, kind)])
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
