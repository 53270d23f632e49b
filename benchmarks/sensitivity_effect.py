"""Where the perturbation goes: uniform vs default (JND) vs trained sensitivity map, at equal attack success.

For each sensitivity map (uniform = plain C&W L2; the default training-free JND map; a trained
`SensitivityNet` checkpoint if one is given), attacks the same photos with the same quality model
and reports how much of the perturbation's energy falls on the pixels where people notice change
most, plus PSNR and SSIM.

Protocol
--------
- Photos: the shipped examples (`examples/*.png`, 512x384), fitted to the quality model's input
  size as `alpha_sweep.py` does (they already are that size).
- Equal attack success: every map runs the alpha search (`--search-steps`, default 5: the
  authors' search over c = 1 / alpha, x10 until success then bisection, starting at `--alpha`),
  so each photo gets the smallest weighted distortion that still flips it to "low quality". The
  energy and quality columns are averaged over the photos that *every* map protected (the common
  set, whose size is printed), so the rows compare the same photos at the same success.
- The judge: "the most sensitive 20 %" is fixed by ONE reference map for all rows, the default
  JND map of the clean photo (`--reference default`; or a trained checkpoint). Per photo, the
  ceil(20 % of the pixels) with the highest reference values (ties broken by pixel order) form the
  sensitive set. The energy of the perturbation d (8-bit output minus input, in [0, 1] units) at a
  pixel is the sum of d^2 over the colour channels. `top20` = share of the photo's energy inside
  the sensitive set (20 % means spread evenly; lower is better). Note that the default map is both
  a contestant and the judge here: its row is expected to win, and a trained map judged by it is
  not judged by people.
- The trained map: `--trained CKPT_DIR` (from `hasmap train-sensitivity`), or its maps of these
  photos computed beforehand (`--trained CKPT_DIR --write-trained-maps F.npz` writes them and
  exits; `--trained-maps F.npz` uses them: a VGG16 checkpoint is 59 MB, the maps of six photos
  a few MB, which suits a copy to an accelerator machine). Without either the row is skipped with
  the reason: no human-annotated sensitivity data is available in this environment (the EMOd maps
  are not public), so no trained checkpoint ships. `scripts/make_jnd_pairs.py` makes pairs whose
  targets are the default map itself, so a network trained on them imitates the judge.

    PYTHONPATH=. python benchmarks/sensitivity_effect.py                       # GPU: minutes
    PYTHONPATH=. python benchmarks/sensitivity_effect.py --limit 2 --steps 20 --search-steps 2   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOP_FRACTION = 0.2
NO_TRAINED = (
    "no trained sensitivity checkpoint given (--trained CKPT_DIR): no human-annotated sensitivity data is "
    "available here (the EMOd maps are not public), so none ships; train one with `hasmap train-sensitivity`"
)


def load_photos(pattern: str, size: tuple[int, int]) -> tuple[list[str], np.ndarray]:
    """Photos matching `pattern`, upright RGB, fitted (cover + centre crop) to `size` (H, W); uint8."""
    from PIL import Image, ImageOps

    files = sorted(Path("/").glob(pattern[1:])) if Path(pattern).is_absolute() else sorted(Path().glob(pattern))
    if not files:
        raise SystemExit(f"no photos match {pattern}")
    out = []
    for f in files:
        with Image.open(f) as im:
            im = ImageOps.fit(ImageOps.exif_transpose(im).convert("RGB"), size[::-1], Image.Resampling.BICUBIC)
            out.append(np.asarray(im))
    return [f.name for f in files], np.stack(out)


def sensitive_mask(reference: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """(N, H, W) bool: per image, the ceil(fraction * H * W) pixels with the highest reference values
    (ties broken by pixel order, so exactly that many)."""
    n = len(reference)
    flat = reference.reshape(n, -1)
    k = math.ceil(fraction * flat.shape[1])
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    mask = np.zeros_like(flat, dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask.reshape(reference.shape)


def energy_split(clean: np.ndarray, adv: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
    """Per image: total perturbation energy sum(d^2) and the share of it inside `mask` (NaN if d = 0)."""
    d = adv.astype(np.float64) / 255.0 - clean.astype(np.float64) / 255.0
    e = np.sum(d * d, axis=-1)
    total = e.reshape(len(e), -1).sum(1)
    inside = np.where(mask, e, 0.0).reshape(len(e), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, inside / total, np.nan)
    return {"energy": total, "top_share": share}


def run(
    x: np.ndarray,
    *,
    model: Any,
    maps: dict[str, Any],
    reference: Any = "default",
    alpha: float = 10.0,
    steps: int = 100,
    search_steps: int = 5,
    threshold: float = 50.0,
    batch_size: int = 8,
) -> dict[str, Any]:
    """Attacks `x` (N, H, W, 3) uint8 once per entry of `maps` (name -> `attack_batch` sensitivity)
    and measures each result against the reference map's sensitive set. Returns per-run arrays and the
    common set of photos every run protected."""
    from hasmap_jax.attack import attack_batch, sensitivity_maps

    chunks = [x[i : i + batch_size] / np.float32(255) for i in range(0, len(x), batch_size)]
    ref = np.concatenate([np.asarray(sensitivity_maps(reference, c)) for c in chunks])
    mask = sensitive_mask(ref)
    runs = {}
    for name, sensitivity in maps.items():
        t = time.perf_counter()
        parts = [
            attack_batch(
                x[i : i + batch_size],
                alpha,
                model=model,
                sensitivity=sensitivity[i : i + batch_size] if isinstance(sensitivity, np.ndarray) else sensitivity,
                steps=steps,
                search_steps=search_steps,
                threshold=threshold,
            )
            for i in range(0, len(x), batch_size)
        ]
        adv = np.concatenate([p.images for p in parts])
        runs[name] = {
            "success": np.concatenate([p.success for p in parts]),
            "psnr": np.concatenate([np.minimum(p.psnr, 100.0) for p in parts]),
            "ssim": np.concatenate([p.ssim for p in parts]),
            "alpha": np.concatenate([p.alpha for p in parts]),
            "score_after": np.concatenate([p.score_after for p in parts]),
            **energy_split(x, adv, mask),
            "seconds": time.perf_counter() - t,
        }
        print(f"  done {name} ({runs[name]['seconds']:.0f} s)", file=sys.stderr, flush=True)
    common = np.logical_and.reduce([r["success"] for r in runs.values()]) if runs else np.zeros(len(x), bool)
    return {"runs": runs, "common": common}


def _mean(v: np.ndarray, sel: np.ndarray) -> float | None:
    return float(np.mean(v[sel])) if sel.any() else None


def summarise(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per map, averaged over the photos every map protected (and with a non-zero change)."""
    common = result["common"]
    rows = []
    for name, r in result["runs"].items():
        sel = common & np.isfinite(r["top_share"])
        pooled = None
        if sel.any():
            pooled = float(np.sum(r["top_share"][sel] * r["energy"][sel]) / np.sum(r["energy"][sel]))
        rows.append(
            {
                "map": name,
                "success": float(np.mean(r["success"])),
                "photos_compared": int(sel.sum()),
                "top20_share_mean": _mean(r["top_share"], sel),
                "top20_share_pooled": pooled,
                "energy_mean": _mean(r["energy"], sel),
                "psnr": _mean(r["psnr"], sel),
                "ssim": _mean(r["ssim"], sel),
                "alpha_median": float(np.median(r["alpha"][sel])) if sel.any() else None,
                "seconds": r["seconds"],
            }
        )
    return rows


def _f(v, fmt):
    return "-" if v is None else format(v, fmt)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=str(ROOT / "examples" / "*.png"), help="glob of the photo set")
    p.add_argument("--limit", type=int, default=None, help="use only the first N photos")
    p.add_argument("--model", default="default", help="quality model (default: %(default)s)")
    p.add_argument("--trained", default=None, help="a trained sensitivity checkpoint (hasmap train-sensitivity)")
    p.add_argument("--trained-maps", default=None, help="the trained map's maps of these photos (.npz by file name)")
    p.add_argument("--write-trained-maps", default=None, help="with --trained: write its maps (.npz) and exit")
    p.add_argument("--reference", default="default", help="the judging map: 'default' (JND) or a checkpoint")
    p.add_argument("--alpha", type=float, default=10.0, help="starting alpha of the search (default: %(default)s)")
    p.add_argument("--steps", type=int, default=100, help="steps per search step (default: %(default)s)")
    p.add_argument("--search-steps", type=int, default=5, help="alpha search steps (default: %(default)s)")
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)

    from hasmap_jax.weights.loading import load_quality_model, load_sensitivity_model

    model = load_quality_model(args.model)
    names, x = load_photos(args.photos, tuple(model.input_size))
    if args.limit:
        names, x = names[: args.limit], x[: args.limit]
    maps: dict[str, Any] = {"uniform": "uniform", "default (JND)": "default"}
    skipped = {}
    if args.trained and args.write_trained_maps:
        trained = load_sensitivity_model(args.trained)
        out = dict(zip(names, trained.map(x, batch_size=1), strict=True))
        np.savez_compressed(args.write_trained_maps, **out)
        print(f"wrote the maps of {len(out)} photos to {args.write_trained_maps}")
        return
    if args.trained_maps:
        with np.load(args.trained_maps) as f:
            missing = [n for n in names if n not in f.files]
            if missing:
                raise SystemExit(f"{args.trained_maps} has no map for {', '.join(missing)}")
            maps[f"trained ({Path(args.trained_maps).name})"] = np.stack([f[n] for n in names]).astype(np.float32)
    elif args.trained:
        maps[f"trained ({args.trained})"] = load_sensitivity_model(args.trained)
    else:
        skipped["trained"] = NO_TRAINED
    reference = "default" if args.reference == "default" else load_sensitivity_model(args.reference)

    print(format_machine(describe_machine()))
    print(
        f"settings : model={args.model} photos={len(names)} ({args.photos}) size={x.shape[1]}x{x.shape[2]} "
        f"alpha0={args.alpha} steps={args.steps} search_steps={args.search_steps} threshold={args.threshold} "
        f"reference={args.reference} top={TOP_FRACTION:.0%}\ncommand  : {' '.join(sys.argv)}"
    )
    result = run(
        x,
        model=model,
        maps=maps,
        reference=reference,
        alpha=args.alpha,
        steps=args.steps,
        search_steps=args.search_steps,
        threshold=args.threshold,
        batch_size=args.batch_size,
    )
    rows = summarise(result)
    print(
        "\n| map | success | photos compared | energy in top 20 % (mean / pooled) | mean sum d^2 | PSNR dB | SSIM "
        "| median alpha | s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['map']} | {r['success']:.0%} | {r['photos_compared']} | {_f(r['top20_share_mean'], '.1%')} / "
            f"{_f(r['top20_share_pooled'], '.1%')} | {_f(r['energy_mean'], '.3g')} | {_f(r['psnr'], '.2f')} | "
            f"{_f(r['ssim'], '.4f')} | {_f(r['alpha_median'], '.3g')} | {r['seconds']:.0f} |"
        )
    for name, why in skipped.items():
        print(f"| {name} | skipped: {why} |")
    print(
        f"\nphotos compared = those every map protected (score <= {args.threshold} after 8-bit rounding). "
        f"Energy in top 20 % = share of sum d^2 on the 20 % of pixels the {args.reference} map rates most "
        "sensitive (20 % = spread evenly; lower = less change where people notice). PSNR capped at 100 dB."
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "rows": rows, "skipped": skipped}, indent=2))


if __name__ == "__main__":
    main()
