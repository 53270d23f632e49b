"""The paper's Table 1 on our model: protection versus alpha, after 8-bit rounding and after JPEG-90.

For each alpha, attacks a fixed photo set (default: the shipped example photos) with the shipped
default quality model and sensitivity map, then reports the share of photos still rated high
quality (accuracy, lower is better protection) as saved (8-bit PNG) and after the MediaEval 2020
protocol's JPEG quality 90 (Pillow), with mean PSNR / SSIM. `--robust-jpeg 90` repeats the sweep
with the JPEG-robust loss, once per margin kappa of `--robust-confidences` (default 0).

    python benchmarks/alpha_sweep.py --alphas 1,2,5,10,20,30,40,50 --steps 100
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

ROOT = Path(__file__).resolve().parents[1]


def load_photos(pattern: str, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    from PIL import Image, ImageOps

    files = sorted(Path().glob(pattern)) if not Path(pattern).is_absolute() else sorted(Path("/").glob(pattern[1:]))
    if not files:
        raise SystemExit(f"no photos match {pattern}")
    out = []
    for f in files:
        with Image.open(f) as im:
            im = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), size[::-1], Image.BICUBIC)
            out.append(np.asarray(im))
    return [f.name for f in files], np.stack(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=str(ROOT / "examples" / "*.png"), help="glob of the photo set")
    p.add_argument("--alphas", default="1,2,5,10,20,30,40,50")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--search-steps", type=int, default=1)
    p.add_argument("--model", default="default")
    p.add_argument("--sensitivity", default="default")
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--robust-jpeg", type=int, default=None, help="also sweep with the JPEG-robust loss")
    p.add_argument(
        "--robust-confidences", default="0", help="margins kappa of the JPEG-robust sweeps (comma-separated)"
    )
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    from hasmap_jax.attack import attack_batch
    from hasmap_jax.transforms.jpeg import pillow_jpeg
    from hasmap_jax.weights.loading import load_quality_model

    model = load_quality_model(args.model)
    names, x = load_photos(args.photos, tuple(model.input_size))
    print(format_machine(describe_machine()))
    print(
        f"settings : model={args.model} sensitivity={args.sensitivity} steps={args.steps} "
        f"search_steps={args.search_steps} threshold={args.threshold} photos={len(names)} ({args.photos}) "
        f"size={tuple(model.input_size)}\ncommand  : {' '.join(sys.argv)}"
    )
    clean = model.score(x, batch_size=args.batch_size)
    jpeg_clean = model.score(pillow_jpeg(x, 90), batch_size=args.batch_size)
    print(
        f"before   : {np.mean(clean > args.threshold):.1%} rated high as given, "
        f"{np.mean(jpeg_clean > args.threshold):.1%} after JPEG-90"
    )
    rows = []
    modes = [(None, 0.0)]
    if args.robust_jpeg:
        modes += [(args.robust_jpeg, float(k)) for k in args.robust_confidences.split(",")]
    for robust, kappa in modes:
        for alpha in (float(a) for a in args.alphas.split(",")):
            t = time.perf_counter()
            parts = [
                attack_batch(
                    x[i : i + args.batch_size],
                    alpha,
                    model=model,
                    sensitivity=args.sensitivity,
                    steps=args.steps,
                    search_steps=args.search_steps,
                    threshold=args.threshold,
                    robust_jpeg=robust,
                    confidence=kappa,
                )
                for i in range(0, len(x), args.batch_size)
            ]
            adv = np.concatenate([r.images for r in parts])
            after = np.concatenate([r.score_after for r in parts])
            after_jpeg = model.score(pillow_jpeg(adv, 90), batch_size=args.batch_size)
            rows.append(
                dict(
                    robust_jpeg=robust,
                    confidence=kappa,
                    alpha=alpha,
                    acc_8bit=float(np.mean(after > args.threshold)),
                    acc_jpeg90=float(np.mean(after_jpeg > args.threshold)),
                    psnr=float(np.mean(np.concatenate([np.minimum(r.psnr, 100.0) for r in parts]))),
                    ssim=float(np.mean(np.concatenate([r.ssim for r in parts]))),
                    mean_score_after=float(after.mean()),
                    mean_score_jpeg=float(after_jpeg.mean()),
                    seconds=time.perf_counter() - t,
                )
            )
            print(f"  done robust={robust} kappa={kappa} alpha={alpha}", file=sys.stderr, flush=True)
    print(
        "\n| loss | alpha | rated high, 8-bit | rated high, JPEG-90 | PSNR dB | SSIM | mean score (8-bit / JPEG) | s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        loss = "plain" if r["robust_jpeg"] is None else f"JPEG-robust q{r['robust_jpeg']} kappa {r['confidence']:g}"
        print(
            f"| {loss} | {r['alpha']:g} | {r['acc_8bit']:.1%} | {r['acc_jpeg90']:.1%} | {r['psnr']:.2f} | "
            f"{r['ssim']:.4f} | {r['mean_score_after']:.1f} / {r['mean_score_jpeg']:.1f} | {r['seconds']:.0f} |"
        )
    print(
        "\nrated high = share of photos with score > threshold (the paper's 'accuracy'; lower = better "
        "protection). PSNR capped at 100 dB for unchanged photos."
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
