"""bf16 against float32: how far the model's scores move, and whether a verdict would change.

`attack_batch(compute_dtype=bf16)` runs the quality model in bfloat16 during the optimisation (the
perturbation, the loss terms and Adam stay float32) and judges the result in float32. This script
measures what that trade costs on a photo set (default: the shipped example photos) with a model
(default: the shipped one):

1. scores of the clean photos, of clearly degraded versions (Gaussian blur sigma 3, noise sigma 25,
   JPEG quality 10) and of their JPEG-90 round trips, float32 versus the bf16 inference graph
   (folded BatchNorm, bf16 backbone): max / mean |difference| and how many verdicts (score > 50)
   differ;
2. the attack itself with `compute_dtype` bf16 and fp32 at the `hasmap protect` defaults (alpha
   20, kappa 10, JPEG-90-robust): the protected images' float32 scores against the bf16 scores the
   loop saw, verdicts that would differ, and the share protected (judged in float32, as reported).

    python benchmarks/bf16_agreement.py --steps 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402
from alpha_sweep import load_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def degraded(x: np.ndarray) -> dict[str, np.ndarray]:
    from PIL import Image, ImageFilter

    from hasmap_jax.transforms.jpeg import pillow_jpeg

    rng = np.random.RandomState(0)
    blur = np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(3))) for i in x])
    noise = np.clip(x + rng.normal(0, 25, x.shape), 0, 255).round().astype(np.uint8)
    return {"blur3": blur, "noise25": noise, "jpeg10": pillow_jpeg(x, 10)}


def compare(name: str, f32: np.ndarray, b16: np.ndarray, threshold: float) -> dict:
    d = np.abs(f32 - b16)
    flips = int(np.sum((f32 > threshold) != (b16 > threshold)))
    row = dict(set=name, n=len(f32), max_abs=float(d.max()), mean_abs=float(d.mean()), verdicts_differ=flips)
    print(
        f"  {name:<26} n={len(f32):>3}  max |fp32-bf16| {d.max():6.3f}  mean {d.mean():6.3f}  verdicts differ {flips}"
    )
    return row


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=str(ROOT / "examples" / "*.png"), help="glob of the photo set")
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=100, help="attack steps (0: scores only)")
    p.add_argument("--alpha", type=float, default=20.0)
    p.add_argument("--confidence", type=float, default=10.0)
    p.add_argument("--robust-jpeg", type=int, default=90)
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    import jax.numpy as jnp

    from hasmap_jax.attack import attack_batch
    from hasmap_jax.transforms.jpeg import pillow_jpeg
    from hasmap_jax.weights.loading import load_quality_model

    model = load_quality_model(args.model)
    bf16 = model.inference(fold_bn=True, dtype=jnp.bfloat16)
    names, x = load_photos(args.photos, tuple(model.input_size))
    print(format_machine(describe_machine()))
    print(
        f"settings : model={args.model} photos={len(names)} ({args.photos}) steps={args.steps} alpha={args.alpha} "
        f"kappa={args.confidence} robust_jpeg={args.robust_jpeg} threshold={args.threshold}\n"
        f"command  : {' '.join(sys.argv)}"
    )
    rows = []
    print("scores, float32 model against its bf16 inference graph (folded BatchNorm):")
    sets = {"clean": x, "clean, JPEG-90": pillow_jpeg(x, 90)}
    for k, v in degraded(x).items():
        sets[k] = v
    for name, imgs in sets.items():
        rows.append(compare(name, model.score(imgs), bf16.score(imgs), args.threshold))
    if args.steps:
        print(f"attack ({args.steps} steps), protected images scored by both:")
        kw = dict(
            model=model,
            steps=args.steps,
            confidence=args.confidence,
            robust_jpeg=args.robust_jpeg,
            threshold=args.threshold,
        )
        for dtype in ("bf16", "fp32"):
            t = time.perf_counter()
            r = attack_batch(x, args.alpha, compute_dtype=dtype, **kw)
            secs = time.perf_counter() - t
            row = compare(f"protected with {dtype}", r.score_after, bf16.score(r.images), args.threshold)
            jpeg = pillow_jpeg(r.images, args.robust_jpeg)
            row2 = compare(f"  ... after JPEG-{args.robust_jpeg}", model.score(jpeg), bf16.score(jpeg), args.threshold)
            row.update(
                compute_dtype=dtype,
                seconds=secs,
                protected_fp32=float(np.mean(r.success_after_checkpoints[:, -1])),
                mean_psnr=float(np.mean(r.psnr)),
                after_jpeg=row2,
            )
            print(
                f"    {dtype}: protected after JPEG-{args.robust_jpeg} (fp32 verdict) "
                f"{np.mean(r.success_after_checkpoints[:, -1]):.0%}, mean PSNR {np.mean(r.psnr):.2f} dB, {secs:.0f} s"
            )
            rows.append(row)
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
