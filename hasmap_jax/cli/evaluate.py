"""`hasmap evaluate ORIGINALS PROTECTED... -o OUT`: arguments and printing over `hasmap_jax.evaluation`.

Exit codes: 0 every original matched and measured in every run, 1 some were left unmatched or
unreadable, 2 a usage error, 130 interrupted (nothing written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hasmap_jax.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, jpeg_quality, positive_int
from hasmap_jax.cli.progress import photo_progress
from hasmap_jax.evaluation import evaluate, write_results
from hasmap_jax.evaluation.report import write_report
from hasmap_jax.models.variables import WeightError
from hasmap_jax.runtime import compile_cache
from hasmap_jax.transforms.chain import parse_chains

EVALUATE_EPILOG = """\
protocol (MediaEval 2020 Pixel Privacy): each protected photo is JPEG-compressed at --jpeg-quality
with Pillow, then scored; 'high' <=> score > --threshold; accuracy = share still rated high (lower
is better protection). Files are matched by relative path and stem; the protected folder's output
suffix comes from its manifest, else --suffix, else it is inferred.

robustness (--attacks): each protected photo and its original also go through real (Pillow)
operations of what photo sites do, then are scored; the summary, results.csv/json and the report
give per operation the share still rated high (and rated low), next to the originals'. Names:
  jpegQ (1-100), webpQ (0-100), resizeF (downscale each side to F in (0, 1], bicubic), lanczosF,
  blurS (Gaussian blur, sigma S), cropF (centre crop keeping F of each side, resized back), flip;
  chain with '+', list with ',': --attacks jpeg50,jpeg70,resize0.5,resize0.75+jpeg75,blur1,crop0.9,flip

writes OUT/results.csv, OUT/results.json and OUT/report.html (+ OUT/report_files/): original,
sensitivity map, a heat map of the change (its scale in the caption) and protected photo per photo,
and for several runs (e.g. an alpha sweep: hasmap evaluate ORIGINALS RUN1 RUN2 ...) accuracy against
distortion.

exit status: 0 every original matched and measured in every run, 1 some were not, 2 usage error.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score protected photos (MediaEval 2020 protocol) and measure distortion; HTML report",
        description="Evaluate protected photos against their originals: accuracy after JPEG, PSNR, SSIM, "
        "LPIPS, L2, Linf, sensitivity-weighted L2, and an HTML report.",
        epilog=EVALUATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("originals", type=Path, help="folder of original photos")
    p.add_argument("protected", type=Path, nargs="+", help="folder(s) of protected photos (one per run)")
    p.add_argument(
        "--model", default="default", help="shipped model name, checkpoint, .pth or .h5 (default: %(default)s)"
    )
    p.add_argument("--threshold", type=float, default=50.0, help="'high' <=> score > T (default: %(default)s)")
    p.add_argument("--jpeg-quality", type=jpeg_quality, default=90, help="protocol JPEG quality (default: %(default)s)")
    p.add_argument("--no-jpeg", action="store_true", help="score the files as stored (not the protocol)")
    p.add_argument(
        "--attacks",
        type=attack_list,
        default=(),
        metavar="LIST",
        help="robustness: operations to score after, e.g. jpeg50,resize0.75+jpeg75,blur1,crop0.9,flip,webp80",
    )
    p.add_argument(
        "-o", "--output", type=Path, default=Path("hasmap-evaluation"), help="output folder (default: %(default)s)"
    )
    p.add_argument("--suffix", default=None, help="output suffix of protected names (default: manifest or inferred)")
    p.add_argument("--names", nargs="+", help="labels of the runs (default: folder names)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (the slowest metric on a CPU)")
    p.add_argument("--no-report", action="store_true", help="write CSV and JSON only")
    p.add_argument("--max-preview", type=positive_int, default=768, help="report: crop larger photos (default: 768 px)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    compile_cache.add_argument(p)
    p.set_defaults(func=run)


def attack_list(text: str):
    """--attacks: chains of named operations (`hasmap_jax.transforms.chain.parse_chains`)."""
    try:
        return parse_chains(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Evaluates the runs, writes results (and the report) and prints one summary line per run."""
    err = sys.stderr
    out = args.output
    try:
        if out.resolve() == args.originals.resolve() or any(out.resolve() == p.resolve() for p in args.protected):
            raise ValueError(f"the output folder {out} must not be an input folder")
        compile_cache.from_args(args)
        from hasmap_jax.weights.loading import load_quality_model  # looked up now: tests replace it

        model = load_quality_model(args.model)
        with photo_progress("evaluate", quiet=args.quiet) as bar:
            ev = evaluate(
                args.originals,
                args.protected,
                model=model,
                model_name=args.model,
                threshold=args.threshold,
                jpeg_quality=None if args.no_jpeg else args.jpeg_quality,
                suffix=args.suffix,
                lpips=not args.no_lpips,
                exclude=[out],
                names=args.names,
                attacks=args.attacks,
                progress=bar,
            )
    except (WeightError, FileNotFoundError, ValueError) as e:
        print(f"hasmap evaluate: error: {e}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hasmap evaluate: interrupted; nothing written", file=err)
        return EXIT_INTERRUPTED
    paths = write_results(ev, out)
    report = None if args.no_report else write_report(ev, out, max_preview=args.max_preview)
    after = f"after JPEG-{args.jpeg_quality}" if not args.no_jpeg else "as stored"
    for r in ev.runs:
        s = r.summary
        acc = "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.1f} %"
        base = "" if s["accuracy_originals"] is None else f" (originals {100 * s['accuracy_originals']:.1f} %)"
        line = f"{r.name}: {s['images']} photos, accuracy {acc} {after}{base}"
        if s["outputs_missing_or_unusable"]:
            line += f", {s['outputs_missing_or_unusable']} without a usable protected output (counted as rated high)"
        for k, fmt in (("psnr", "PSNR {:.2f} dB"), ("ssim", "SSIM {:.4f}"), ("lpips", "LPIPS {:.4f}")):
            if s.get(f"mean_{k}") is not None:
                line += ", " + fmt.format(s[f"mean_{k}"])
        print(line)
        m = r.match
        for f in m.unmatched_originals:
            print(f"  {r.name}: no protected file for {f}", file=err)
        for f in m.unmatched_protected:
            print(f"  {r.name}: no original for {f}", file=err)
        for k, c in m.ambiguous.items():
            print(f"  {r.name}: several protected files for {k}: {', '.join(map(str, c))}", file=err)
        for row in r.rows:
            if row["error"]:
                print(f"  {r.name}: {row['key']}: {row['error']}", file=err)
    if ev.attacks:
        print(robustness_table(ev))
    print(f"wrote {paths['csv']}, {paths['json']}" + (f", {report}" if report else ""))
    return EXIT_OK if ev.complete else EXIT_SOME_FAILED


def robustness_table(ev) -> str:
    """The printed robustness table: per operation, the originals' share rated high, then per run
    the share still rated high and the share rated low."""

    def pct(v):
        return "n/a" if v is None else f"{100 * v:.1f} %"

    width = max(len("operation"), *(len(a) for a in ev.attacks))
    cols = [max(17, len(r.name)) for r in ev.runs]  # a run's name heads its two columns, whole
    head = f"{'operation':<{width}}  {'originals':>9}" + "".join(
        f"  {r.name:>{c}}" for r, c in zip(ev.runs, cols, strict=True)
    )
    sub = f"{'':<{width}}  {'high':>9}" + "".join(f"  {'high':>{c - 9}} {'low':>8}" for c in cols)
    lines = ["robustness: share of photos rated high after each operation (lower is better protection)", head, sub]
    for a in ev.attacks:
        per = [r.summary.get("robustness", {}).get(a, {}) for r in ev.runs]
        base = next((p.get("originals_high") for p in per if p.get("originals_high") is not None), None)
        cells = "".join(
            f"  {pct(p.get('high')):>{c - 9}} {pct(p.get('low')):>8}" for p, c in zip(per, cols, strict=True)
        )
        lines.append(f"{a:<{width}}  {pct(base):>9}{cells}")
    return "\n".join(lines)
