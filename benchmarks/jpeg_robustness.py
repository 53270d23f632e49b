"""Does the protection survive JPEG-90? With and without `robust_jpeg`, compared at equal PSNR.

On a photo set (default: the shipped example photos, at their own size) with the shipped default
quality model and sensitivity map, for each setting ("plain": the 8-bit loss only; "robust": the
loss also scores a differentiable JPEG round trip at `--quality`) this attacks every photo at each
alpha of `--alphas`, saves nothing, and measures

- protected after JPEG: the share of photos rated not high (score <= threshold) after a real Pillow
  JPEG round trip at `--quality` (the MediaEval 2020 protocol's step; 1 - accuracy);
- protected as saved (8-bit PNG), PSNR and mean SSIM. PSNR here is that of the whole set,
  -10 log10(mean over photos of the MSE), pixels in [0, 1]: a photo left unchanged (infinite PSNR
  of its own) then counts as zero distortion instead of breaking the mean.

A stronger loss changes the image more, so the two settings are compared at equal distortion: for
each plain run, the robust run with the closest PSNR is paired with it, and when none is within
`--tolerance` dB (0.5) the robust alpha is refined (up to `--refine` more runs: bisection on log
alpha between bracketing runs, secant steps outside them) until one is. Pairs that still miss are
printed as such, and the curves are also compared by linear interpolation in PSNR. Prints the
machine, the settings and the command first.

    PYTHONPATH=. python benchmarks/jpeg_robustness.py --alphas 5,10,20,40 --steps 100
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_photos(folder: Path) -> tuple[list[str], list[np.ndarray]]:
    from hasmap_jax.files import find_images, read_image

    files = find_images(folder)
    if not files:
        raise SystemExit(f"no photos in {folder}")
    return [f.name for f in files], [read_image(f).rgb for f in files]


def run(images, alpha, robust, args, model, kappa: float = 0.0) -> dict:
    """One attack of every photo (grouped by size) at `alpha`; the measurements of `main`'s doc."""
    from hasmap_jax.attack import attack_batch
    from hasmap_jax.scoring import score_images

    t0 = time.perf_counter()
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(im.shape, []).append(i)
    after = np.zeros(len(images))
    saved = np.zeros(len(images), bool)
    mse = np.zeros(len(images))
    ssim = np.zeros(len(images))
    for idx in groups.values():
        for k in range(0, len(idx), args.batch_size):
            part = idx[k : k + args.batch_size]
            r = attack_batch(
                np.stack([images[i] for i in part]),
                alpha,
                model=model,
                steps=args.steps,
                threshold=args.threshold,
                robust_jpeg=args.quality if robust else None,
                confidence=kappa,
            )
            # Judged the same way for both settings: the evaluation's Pillow round trip and view.
            after[part] = score_images(model, r.images, jpeg_quality=args.quality)
            saved[part] = r.success
            mse[part] = 10.0 ** (-np.asarray(r.psnr, np.float64) / 10.0)  # inf dB -> 0
            ssim[part] = r.ssim
    return {
        "setting": f"robust k={kappa:g}" if robust else "plain",
        "alpha": float(alpha),
        "protected_after_jpeg": float(np.mean(after <= args.threshold)),
        "protected_as_saved": float(np.mean(saved)),
        "mean_psnr": float(-10.0 * np.log10(max(np.mean(mse), 1e-12))),
        "mean_ssim": float(np.mean(ssim)),
        "seconds": time.perf_counter() - t0,
    }


def refine_alpha(rows: list[dict], target_psnr: float) -> float:
    """The next robust alpha to try for `target_psnr`: bisection in log alpha between the runs that
    bracket it (PSNR jumps where the attack stops succeeding, which defeats secant steps), else a
    secant step from the two nearest runs, at most x8 beyond them."""
    pts = sorted((r["mean_psnr"], math.log(r["alpha"])) for r in rows)
    below = [p for p in pts if p[0] <= target_psnr]
    above = [p for p in pts if p[0] > target_psnr]
    if below and above:
        return math.exp((below[-1][1] + above[0][1]) / 2.0)
    if len(pts) < 2 or abs(pts[-1][0] - pts[0][0]) < 1e-6:
        return math.exp(pts[-1][1] if below else pts[0][1]) * (2.0 if below else 0.5)
    (p0, a0), (p1, a1) = (pts[-2], pts[-1]) if below else (pts[0], pts[1])
    a = a0 + (target_psnr - p0) * (a1 - a0) / (p1 - p0) if abs(p1 - p0) > 1e-6 else a1
    lo, hi = min(a0, a1) - math.log(8), max(a0, a1) + math.log(8)
    return math.exp(min(max(a, lo), hi))


def interpolate(rows: list[dict], psnr: float) -> float | None:
    pts = sorted((r["mean_psnr"], r["protected_after_jpeg"]) for r in rows)
    xs = [p[0] for p in pts]
    if not pts or psnr < xs[0] or psnr > xs[-1]:
        return None
    return float(np.interp(psnr, xs, [p[1] for p in pts]))


def fmt(r: dict) -> str:
    return (
        f"{r['setting']:>12}  alpha {r['alpha']:8.3g}  PSNR {r['mean_psnr']:6.2f} dB (set)  SSIM {r['mean_ssim']:.4f}  "
        f"protected as saved {r['protected_as_saved']:6.1%}  after JPEG {r['protected_after_jpeg']:6.1%}  "
        f"({r['seconds']:.0f} s)"
    )


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", type=Path, default=ROOT / "examples", help="folder of photos (default: examples/)")
    p.add_argument("--alphas", default="5,10,20,40", help="comma-separated alphas, both settings")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--quality", type=int, default=90, help="JPEG quality to survive and to judge after")
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--model", default="default")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.5, help="PSNR match, dB")
    p.add_argument("--refine", type=int, default=4, help="extra robust runs to match PSNR")
    p.add_argument("--confidences", default="0", help="margins kappa of the robust setting (comma-separated)")
    p.add_argument("--json", type=Path, help="also write every row here")
    args = p.parse_args(argv)

    from hasmap_jax.scoring import score_images
    from hasmap_jax.weights.loading import load_quality_model

    model = load_quality_model(args.model)
    names, images = load_photos(args.photos)
    sizes = sorted({f"{im.shape[1]}x{im.shape[0]}" for im in images})
    print(format_machine(describe_machine()))
    print(
        f"settings : model={args.model} (input {tuple(model.input_size)}) sensitivity=default steps={args.steps} "
        f"JPEG quality={args.quality} threshold={args.threshold} alphas={args.alphas} tolerance={args.tolerance} dB\n"
        f"photos   : {len(names)} from {args.photos} ({', '.join(sizes)})\n"
        f"command  : {' '.join([sys.executable, *sys.argv])}"
    )
    high = [float(score_images(model, im[None], jpeg_quality=args.quality)[0]) > args.threshold for im in images]
    print(f"before   : {np.mean(high):.1%} of the photos rated high after JPEG-{args.quality} (unprotected)")

    alphas = [float(v) for v in args.alphas.split(",")]
    kappas = [float(k) for k in args.confidences.split(",")]
    rows: dict[str, list[dict]] = {"plain": []}
    for a in alphas:
        rows["plain"].append(run(images, a, False, args, model))
        print(fmt(rows["plain"][-1]), flush=True)
    for kappa in kappas:
        name = f"robust k={kappa:g}"
        rows[name] = []
        for a in alphas:
            rows[name].append(run(images, a, True, args, model, kappa))
            print(fmt(rows[name][-1]), flush=True)

    for kappa in kappas:
        name = f"robust k={kappa:g}"
        robust = rows[name]
        print(f"\nmatched at equal PSNR, plain vs {name} (robust alpha refined where needed):")
        for pr in rows["plain"]:
            for attempt in range(args.refine + 1):
                best = min(robust, key=lambda r: abs(r["mean_psnr"] - pr["mean_psnr"]))
                if abs(best["mean_psnr"] - pr["mean_psnr"]) <= args.tolerance or attempt == args.refine:
                    break
                a = refine_alpha(robust, pr["mean_psnr"])
                if any(abs(math.log(a / r["alpha"])) < 0.02 for r in robust):
                    break  # PSNR jumps between neighbouring alphas here: another run at ~a decides nothing
                robust.append(run(images, a, True, args, model, kappa))
                print("  refine: " + fmt(robust[-1]), flush=True)
            gap = best["mean_psnr"] - pr["mean_psnr"]
            tag = "matched" if abs(gap) <= args.tolerance else f"NOT matched ({gap:+.2f} dB)"
            print(
                f"  PSNR {pr['mean_psnr']:6.2f} / {best['mean_psnr']:6.2f} dB: protected after JPEG-{args.quality} "
                f"plain {pr['protected_after_jpeg']:6.1%} (alpha {pr['alpha']:.3g}) vs {name} "
                f"{best['protected_after_jpeg']:6.1%} (alpha {best['alpha']:.3g})  [{tag}]"
            )
        print(f"interpolated in PSNR ({name} curve at each plain run's PSNR):")
        for pr in rows["plain"]:
            v = interpolate(robust, pr["mean_psnr"])
            shown = "outside the robust runs' PSNR range" if v is None else f"{v:6.1%}"
            print(f"  PSNR {pr['mean_psnr']:6.2f} dB: plain {pr['protected_after_jpeg']:6.1%}, {name} {shown}")
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "args": vars(args), "rows": rows}, default=str))


if __name__ == "__main__":
    main()
