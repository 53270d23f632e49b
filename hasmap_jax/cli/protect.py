"""`hasmap protect` and `hasmap evaluate`: thin command-line layers over `protect` and `evaluate`.

`register(subparsers)` adds both commands to the `hasmap` parser; `main(argv)` runs them on their own
(`python -m hasmap_jax.cli.protect protect ...`). Exit codes: 0 everything done, 1 some photos failed
or were skipped (protect) / left unmatched or unreadable (evaluate), 2 a usage error (nothing was
written), 130 interrupted (Ctrl-C; a rerun of the same command resumes).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from hasmap_jax.files import DEFAULT_MAX_PIXELS, MIN_SIDE
from hasmap_jax.runtime import compile_cache

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class ProgressBar:
    """A one-line progress bar with rate and ETA on stderr (a line per update when not a terminal)."""

    def __init__(self, label: str, *, stream=None, enabled: bool = True, width: int = 28):
        self.label, self.stream, self.enabled, self.width = label, stream or sys.stderr, enabled, width
        self.t0 = time.monotonic()
        self.first: tuple[float, int] | None = None  # (time, done) at the first finished batch
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last_line = 0.0
        self.shown = False

    def __call__(self, done: float, total: int, note: str = "") -> None:
        """`done` may be fractional: a batch in progress moves the bar by its steps."""
        if not self.enabled or total <= 0:
            return
        now = time.monotonic()
        if done > 0 and self.first is None:
            self.first = (now, done)
        frac = done / total
        bar = "#" * round(frac * self.width) + "." * (self.width - round(frac * self.width))
        text = f"{self.label} [{bar}] {int(done)}/{total} {_clock(now - self.t0)}"
        eta = self._eta(now, done, total)
        if eta is not None and done < total:
            text += f", ETA {_clock(eta)}"
        if note:
            text += f" ({note})"
        if self.tty:
            self.stream.write("\r" + text[:150].ljust(100))
            self.shown = done < total
            if done >= total:
                self.stream.write("\n")
            self.stream.flush()
        elif done >= total or (note and done == int(done) and not self.first) or now - self.last_line > 10:
            # Not a terminal (a log): a line at the start, every 10 s and at the end.
            self.stream.write(text + "\n")
            self.stream.flush()
            self.last_line = now

    def _eta(self, now: float, done: int, total: int) -> float | None:
        # The first batch includes compiling: measure the rate after it when there is one.
        if self.first is not None and done > self.first[1]:
            t1, d1 = self.first
            return (now - t1) / (done - d1) * (total - done)
        if done > 0:
            return (now - self.t0) / done * (total - done)
        return None

    def message(self, text: str) -> None:
        """Prints a line without breaking the bar."""
        if self.tty and self.shown:
            self.stream.write("\r" + " " * 100 + "\r")
        self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _quality(text: str) -> int:
    q = int(text)
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"a JPEG quality in 1..100, got {q}")
    return q


def _robust(text: str) -> int | str | None:
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    return _quality(text)


def _positive_int(text: str) -> int:
    v = int(float(text))
    if v < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, got {text}")
    return v


# --------------------------------------------------------------------------------------------
# protect

PROTECT_EPILOG = """\
presets (alpha: smaller = stronger protection, more visible change; all with margin kappa 10):
  low   alpha 40, 100 steps   faintest change, protects the fewest photos
  mid   alpha 20, 100 steps   the default
  high  alpha 10, 200 steps   protects the most photos
--steps and --confidence override the preset's values; --alpha sets alpha instead of a preset (with the
default preset's steps and margin) and cannot be given together with --preset.

behaviour:
  inputs are never modified; outputs are written atomically (temporary file + rename) as
  OUTDIR/<path inside the input folder>/<stem><suffix>.png|.jpg. OUTDIR/hasmap-manifest.jsonl records
  the settings and each photo's result: rerunning the same command skips finished photos; a rerun
  with other settings is refused unless --force (which redoes every photo with the new settings).
  The protection is made to survive re-encoding as JPEG at quality 90 (the MediaEval 2020
  protocol's; --robust-jpeg Q|off) and reported after real Pillow encoding; JPEG output is attacked
  through its own --quality first, then the re-encoding. Metadata: EXIF/XMP/comments are dropped,
  the ICC colour profile is kept
  (--keep-metadata also copies EXIF with orientation 1 and no thumbnail; --strip-icc drops the profile).
  Greyscale, palette, CMYK and 16-bit photos are converted to 8-bit RGB (noted); transparency is
  kept in PNG output and composited on white in JPEG output; animations use their first frame
  (warned); photos with a side under --min-side px are skipped; photos over --max-pixels, corrupt,
  truncated or non-image files fail with a message; the other photos still complete.

exit status: 0 every photo has its output, 1 some were skipped or failed, 2 usage error (nothing
written), 130 interrupted (rerun to resume).
"""


def add_protect_parser(sub) -> argparse.ArgumentParser:
    from hasmap_jax.protect import DEFAULT_PRESET, PRESETS

    p = sub.add_parser(
        "protect",
        help="protect photo files and folders against image-quality models",
        description="Protect photos: add a change people do not notice, placed where they are least "
        "sensitive, so that a quality model no longer rates the photos as high quality.",
        epilog=PROTECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="+", metavar="INPUT", help="image files and folders (folders are walked recursively)"
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--preset", choices=list(PRESETS), help=f"protection strength (default: {DEFAULT_PRESET})")
    g.add_argument("--alpha", type=float, help="the attack's trade-off alpha (smaller = stronger, more visible)")
    p.add_argument("--steps", type=_positive_int, help="optimisation steps (default: the preset's)")
    p.add_argument("--search-steps", type=_positive_int, help="searches over alpha per photo (default: the preset's)")
    p.add_argument("--learning-rate", type=float, default=1e-2, help="Adam learning rate (default: %(default)s)")
    p.add_argument(
        "--model", default="default", help="shipped model name, checkpoint, .pth or .h5 (default: %(default)s)"
    )
    p.add_argument(
        "--sensitivity", default="default", help="default (JND map), uniform (plain L2), or a sensitivity model path"
    )
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="output format (default: %(default)s)")
    p.add_argument("--quality", type=_quality, default=90, help="JPEG output quality (default: %(default)s)")
    p.add_argument(
        "--robust-jpeg",
        type=_robust,
        default="auto",
        metavar="Q|auto|off",
        help="JPEG re-encoding the protection must survive, judged after real JPEG (default auto: 90, "
        "the MediaEval 2020 protocol's; JPEG output is attacked through its own --quality first)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        help="margin kappa: a photo counts as protected at score <= threshold - kappa/2 (default: the preset's)",
    )
    p.add_argument("--threshold", type=float, default=50.0, help="'high' quality <=> score > T (default: %(default)s)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="photos of one size per batch (default: 4)")
    p.add_argument("--suffix", default="", help="appended to output file stems, e.g. _protected (default: none)")
    p.add_argument("--keep-metadata", action="store_true", help="copy EXIF (orientation 1, no thumbnail)")
    p.add_argument("--strip-icc", action="store_true", help="drop the ICC colour profile too")
    p.add_argument(
        "--max-pixels",
        type=_positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger photos (default: %(default)s)",
    )
    p.add_argument(
        "--min-side", type=_positive_int, default=MIN_SIDE, help="skip smaller photos (default: %(default)s px)"
    )
    p.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="the model's arithmetic during the attack; verdicts are always fp32 (default auto: bf16 on GPU/TPU, "
        "fp32 on CPU)",
    )
    p.add_argument("--force", action="store_true", help="redo everything in OUTDIR with these settings")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar or per-photo notes")
    compile_cache.add_argument(p)
    p.set_defaults(func=run_protect)
    return p


def settings_from_args(args: argparse.Namespace, model_id: str):
    """`ProtectSettings` from parsed arguments (preset first, then explicit overrides)."""
    from hasmap_jax.protect import DEFAULT_PRESET, ProtectSettings

    overrides = dict(
        learning_rate=args.learning_rate,
        threshold=args.threshold,
        format=args.format,
        quality=args.quality,
        robust_jpeg=args.robust_jpeg,
        suffix=args.suffix,
        keep_metadata=args.keep_metadata,
        strip_icc=args.strip_icc,
        max_pixels=args.max_pixels,
        min_side=args.min_side,
        model=model_id,
        sensitivity=args.sensitivity,
        precision=args.precision,
    )
    if args.alpha is not None:
        overrides["alpha"] = args.alpha
    if args.steps is not None:
        overrides["steps"] = args.steps
    if args.search_steps is not None:
        overrides["search_steps"] = args.search_steps
    if args.confidence is not None:
        overrides["confidence"] = args.confidence
    return ProtectSettings.from_preset(args.preset or DEFAULT_PRESET, **overrides)


def run_protect(args: argparse.Namespace) -> int:
    from hasmap_jax.protect import ProtectInterrupted, UsageError, model_identity, plan, protect_paths
    from hasmap_jax.weights.conversion.common import WeightError

    err = sys.stderr
    try:
        # Check the request before loading anything heavy.
        plan(args.inputs, args.output, settings_from_args(args, args.model))
        compile_cache.from_args(args)
        from hasmap_jax.protect import resolve_sensitivity
        from hasmap_jax.weights.loading import load_quality_model

        model = load_quality_model(args.model)
        sensitivity = resolve_sensitivity(args.sensitivity)
        sens_id = args.sensitivity if isinstance(sensitivity, str) else model_identity(args.sensitivity, sensitivity)
        settings = dataclasses.replace(settings_from_args(args, model_identity(args.model, model)), sensitivity=sens_id)
    except (UsageError, WeightError, FileNotFoundError, ValueError) as e:
        print(f"hasmap protect: error: {e}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hasmap protect: interrupted before any photo was written", file=err)
        return EXIT_INTERRUPTED

    bar = ProgressBar("protect", enabled=not args.quiet)

    def on_result(r) -> None:
        if r.status in ("failed", "skipped"):
            bar.message(f"{r.status}: {r.message}")
        elif not args.quiet and r.status == "ok":
            for n in r.notes:
                bar.message(f"note: {r.input}: {n}")

    try:
        summary = protect_paths(
            args.inputs,
            args.output,
            settings=settings,
            model=model,
            sensitivity=sensitivity,
            batch_size=args.batch_size,
            force=args.force,
            progress=bar,
            on_result=on_result,
        )
    except UsageError as e:
        print(f"hasmap protect: error: {e}", file=err)
        return EXIT_USAGE
    except ProtectInterrupted as e:
        bar.message("")
        print(e.summary.text(), file=err)
        return EXIT_INTERRUPTED
    print(summary.text())
    print(f"outputs in {args.output} (manifest: {args.output / 'hasmap-manifest.jsonl'}); {summary.seconds:.0f} s")
    return summary.exit_code


# --------------------------------------------------------------------------------------------
# evaluate

EVALUATE_EPILOG = """\
protocol (MediaEval 2020 Pixel Privacy): each protected photo is JPEG-compressed at --jpeg-quality
with Pillow, then scored; 'high' <=> score > --threshold; accuracy = share still rated high (lower
is better protection). Files are matched by relative path and stem; the protected folder's output
suffix comes from its manifest, else --suffix, else it is inferred.

writes OUT/results.csv, OUT/results.json and OUT/report.html (+ OUT/report_files/): original,
protected, amplified difference and sensitivity map per photo, and for several runs (e.g. an alpha
sweep: hasmap evaluate ORIGINALS RUN1 RUN2 ...) accuracy against distortion.

exit status: 0 every original matched and measured in every run, 1 some were not, 2 usage error.
"""


def add_evaluate_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser(
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
    p.add_argument("--jpeg-quality", type=_quality, default=90, help="protocol JPEG quality (default: %(default)s)")
    p.add_argument("--no-jpeg", action="store_true", help="score the files as stored (not the protocol)")
    p.add_argument(
        "-o", "--output", type=Path, default=Path("hasmap-evaluation"), help="output folder (default: %(default)s)"
    )
    p.add_argument("--suffix", default=None, help="output suffix of protected names (default: manifest or inferred)")
    p.add_argument("--names", nargs="+", help="labels of the runs (default: folder names)")
    p.add_argument("--no-lpips", action="store_true", help="skip LPIPS (the slowest metric on a CPU)")
    p.add_argument("--no-report", action="store_true", help="write CSV and JSON only")
    p.add_argument(
        "--max-preview", type=_positive_int, default=768, help="report: crop larger photos (default: 768 px)"
    )
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    compile_cache.add_argument(p)
    p.set_defaults(func=run_evaluate)
    return p


def run_evaluate(args: argparse.Namespace) -> int:
    from hasmap_jax.evaluation import evaluate, write_results
    from hasmap_jax.evaluation.report import write_report
    from hasmap_jax.weights.conversion.common import WeightError

    err = sys.stderr
    out = args.output
    try:
        if out.resolve() == args.originals.resolve() or any(out.resolve() == p.resolve() for p in args.protected):
            raise ValueError(f"the output folder {out} must not be an input folder")
        compile_cache.from_args(args)
        from hasmap_jax.weights.loading import load_quality_model

        model = load_quality_model(args.model)
        bar = ProgressBar("evaluate", enabled=not args.quiet)
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
            progress=bar,
        )
    except (WeightError, FileNotFoundError, ValueError) as e:
        print(f"hasmap evaluate: error: {e}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("hasmap evaluate: interrupted; nothing written", file=err)
        return EXIT_INTERRUPTED
    paths = write_results(ev, out)
    report = None if args.no_report else write_report(ev, out)
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
    print(f"wrote {paths['csv']}, {paths['json']}" + (f", {report}" if report else ""))
    return EXIT_OK if ev.complete else EXIT_SOME_FAILED


# --------------------------------------------------------------------------------------------


def register(subparsers) -> None:
    """Adds `protect` and `evaluate` to the `hasmap` command's subparsers."""
    add_protect_parser(subparsers)
    add_evaluate_parser(subparsers)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hasmap", description="HASMap: protect photos against image-quality models.")
    register(p.add_subparsers(dest="command", required=True))
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
