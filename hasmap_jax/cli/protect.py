"""`hasmap protect INPUT... -o OUTDIR`: arguments and printing over `hasmap_jax.protect.protect_paths`.

Exit codes: 0 everything done, 1 some photos failed or were skipped, 2 a usage error (nothing was
written), 3 stopped by a full disk, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM); after 3, 130
and 143 a rerun of the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import textwrap
import threading
from pathlib import Path

from hasmap_jax.cli.common import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USAGE,
    jpeg_quality,
    positive_int,
)
from hasmap_jax.cli.progress import photo_progress
from hasmap_jax.files import DEFAULT_MAX_PIXELS, MIN_SIDE
from hasmap_jax.runtime import compile_cache


def _memory_size(text: str) -> int:
    from hasmap_jax.protect.memory import parse_size

    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _robust(text: str) -> int | str | None:
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    return jpeg_quality(text)


PROTECT_EPILOG = """\
methods (--method):
  fmn   the default: the minimum-norm method finds each photo's least change that the quality model
        no longer rates high (a budget per photo, adapted at every step)
  cw    the paper's HASMap: one fixed trade-off alpha for every photo (smaller alpha = stronger
        protection, more visible change)
  A rerun into a folder whose manifest records a method keeps it unless --method is given (a manifest
  from before --method existed records the paper's, cw).

profiles (--robust):
{profiles}

presets (kappa: the margin below the threshold; a wider one survives more re-encoding):
{presets}
--steps and --confidence override the preset's values; --alpha (the paper's method: implies --method cw)
sets alpha instead of a preset (with the default preset's steps and margin) and cannot be given together
with --preset.

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
  truncated, unreadable (a symbolic link loop) or non-image files fail with a message; the other
  photos still complete. Folders inside an input folder that hold a hasmap-manifest*.jsonl are
  earlier runs' outputs and are left out (said in the summary).
  Memory: photos of one size are batched as far as --memory allows (counted as {pixel_mib} MiB per
  megapixel in a batch plus {process_gib:.1f} GiB for the process; --robust web: {web_mib} MiB plus
  {web_gib:.1f} GiB); a photo too large for all the memory there is fails alone. Ctrl-C and SIGTERM
  finish the write in progress, print the summary and release the folder; temporary files a killed
  run left are removed by the next run.

exit status: 0 every photo has its output, 1 some were skipped or failed, 2 usage error (nothing
written; also an output folder that cannot be written), 3 the disk is full (stopped at the first
failed write; free space and rerun), 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). After 3,
130 and 143 the same command resumes: finished photos are kept and skipped.
"""


def _preset_lines() -> str:
    """The presets of the epilog, from the tables themselves (per method and profile)."""
    from hasmap_jax.protect import DEFAULT_METHOD, DEFAULT_PRESET, PRESET_TABLES

    lines = []
    for (method, robust), table in PRESET_TABLES.items():
        default = " (the default)" if method == DEFAULT_METHOD and robust == "jpeg90" else ""
        lines.append(f"  --method {method}" + (" --robust web" if robust == "web" else "") + f":{default}")
        for name, p in table.items():
            what = "the default" if name == DEFAULT_PRESET else p.description.split(";")[0]
            alpha = "" if p.alpha is None else f"alpha {p.alpha:g}, "
            floor = f", map floor {p.sensitivity_floor:g}" if p.sensitivity_floor else ""
            lines.append(f"    {name:<5} {alpha}kappa {p.confidence:g}, {p.steps} steps{floor}   {what}")
    return "\n".join(lines)


def _profile_lines() -> str:
    """The --robust profiles of the epilog, described from the profile table itself."""
    from hasmap_jax.transforms.profiles import PROFILES, describe

    return "\n".join(
        textwrap.fill(describe(PROFILES[name]), 100, initial_indent=f"  {name:<7} ", subsequent_indent=" " * 10)
        for name in ("jpeg90", "web", "off")
    )


def register(subparsers) -> None:
    from hasmap_jax.protect import DEFAULT_METHOD, DEFAULT_PRESET, METHODS, PRESET_TABLES
    from hasmap_jax.protect import memory as mem

    p = subparsers.add_parser(
        "protect",
        help="protect photo files and folders against image-quality models",
        description="Protect photos: add a change people do not notice, placed where they are least "
        "sensitive, so that a quality model no longer rates the photos as high quality.",
        epilog=PROTECT_EPILOG.format(
            presets=_preset_lines(),
            profiles=_profile_lines(),
            pixel_mib=round(mem.PIXEL_BYTES * 1e6 / 2**20),
            process_gib=mem.PROCESS_BYTES / 2**30,
            web_mib=round(mem.PIXEL_BYTES_WEB * 1e6 / 2**20),
            web_gib=mem.PROCESS_BYTES_WEB / 2**30,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files and folders (folders are walked recursively)"
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="OUTDIR", help="output folder")
    p.add_argument(
        "--files-from",
        metavar="LIST",
        help="also protect the files listed in LIST, one path per line ('-': standard input); relative "
        "paths keep their folders under OUTDIR",
    )
    d = p.add_argument_group("multi-process jobs (TPU pod slices, GPU clusters, several processes on one machine)")
    d.add_argument(
        "--distributed",
        action="store_true",
        help="join a job of several processes (jax.distributed): started with the same arguments on every "
        "process; without the next three options JAX detects the job (TPU pod slice, SLURM, Open MPI)",
    )
    d.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (with --distributed)")
    d.add_argument("--num-processes", type=positive_int, metavar="N", help="processes in the job (with --distributed)")
    d.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0 .. N-1 (with --distributed)")
    p.add_argument(
        "--method",
        choices=list(METHODS),
        help=f"fmn: each photo's least change (minimum-norm); cw: the paper's fixed alpha (default: {DEFAULT_METHOD}, "
        "or the method the output folder's manifest records)",
    )
    g = p.add_mutually_exclusive_group()
    presets = next(iter(PRESET_TABLES.values()))
    g.add_argument("--preset", choices=list(presets), help=f"protection strength (default: {DEFAULT_PRESET})")
    g.add_argument(
        "--alpha",
        type=float,
        help="the paper's trade-off alpha (smaller = stronger, more visible; implies --method cw)",
    )
    p.add_argument("--steps", type=positive_int, help="optimisation steps (default: the preset's)")
    p.add_argument(
        "--search-steps", type=positive_int, help="searches over alpha per photo (--method cw; default: the preset's)"
    )
    p.add_argument(
        "--learning-rate", type=float, default=1e-2, help="Adam learning rate (--method cw; default: %(default)s)"
    )
    p.add_argument(
        "--model", default="default", help="shipped model name, checkpoint, .pth or .h5 (default: %(default)s)"
    )
    p.add_argument(
        "--sensitivity", default="default", help="default (JND map), uniform (plain L2), or a sensitivity model path"
    )
    p.add_argument(
        "--sensitivity-floor",
        type=float,
        metavar="F",
        help="raise the sensitivity map to at least F (0..1): the change is not piled up in texture without "
        "bound (default: the preset's; 0 for jpeg90)",
    )
    p.add_argument("--format", choices=["png", "jpeg"], default="png", help="output format (default: %(default)s)")
    p.add_argument("--quality", type=jpeg_quality, default=90, help="JPEG output quality (default: %(default)s)")
    p.add_argument(
        "--robust-jpeg",
        type=_robust,
        default="auto",
        metavar="Q|auto|off",
        help="JPEG re-encoding the protection must survive, judged after real JPEG (default auto: 90, "
        "the MediaEval 2020 protocol's; JPEG output is attacked through its own --quality first)",
    )
    p.add_argument(
        "--robust",
        choices=["jpeg90", "web", "off"],
        default="jpeg90",
        help="what the protection must survive: jpeg90 (default: the JPEG re-encoding of --robust-jpeg), web "
        "(what photo sites do: re-encoding, downscaling, light blur, small crops and flips, drawn at every step; "
        "judged after the real operations: see 'profiles' below), off (the paper's plain loss)",
    )
    p.add_argument(
        "--confidence",
        type=float,
        help="margin kappa: a photo counts as protected at score <= threshold - kappa/2 (default: the preset's)",
    )
    p.add_argument("--threshold", type=float, default=50.0, help="'high' quality <=> score > T (default: %(default)s)")
    p.add_argument(
        "--batch-size", type=positive_int, default=4, help="at most N photos of one size per batch (default: 4)"
    )
    p.add_argument(
        "--memory",
        type=_memory_size,
        metavar="SIZE",
        help="memory the run may use, e.g. 8G: batches hold as many photos as fit (default: "
        f"{round(mem.DEFAULT_FRACTION * 100)} %% of what the process can have at the start: what it holds plus "
        "the memory available)",
    )
    p.add_argument("--suffix", default="", help="appended to output file stems, e.g. _protected (default: none)")
    p.add_argument("--keep-metadata", action="store_true", help="copy EXIF (orientation 1, no thumbnail)")
    p.add_argument("--strip-icc", action="store_true", help="drop the ICC colour profile too")
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help="refuse larger photos (default: %(default)s)",
    )
    p.add_argument(
        "--min-side", type=positive_int, default=MIN_SIDE, help="skip smaller photos (default: %(default)s px)"
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
    p.set_defaults(func=run)


def resolve_method(args: argparse.Namespace) -> str:
    """The method: --method if given; the paper's where --alpha or --search-steps ask for it; else
    the one the output folder's manifest records (the paper's for a manifest from before --method);
    else the default."""
    from hasmap_jax.protect import DEFAULT_METHOD, recorded_settings

    if args.method is not None:
        return args.method
    if args.alpha is not None or args.search_steps is not None:
        return "cw"
    recorded = recorded_settings(args.output)
    return DEFAULT_METHOD if recorded is None else recorded["method"]


def settings_from_args(args: argparse.Namespace, model_id: str):
    """`ProtectSettings` from parsed arguments (method, preset, then explicit overrides)."""
    from hasmap_jax.protect import DEFAULT_PRESET, ProtectSettings

    overrides = dict(
        method=resolve_method(args),
        learning_rate=args.learning_rate,
        threshold=args.threshold,
        format=args.format,
        quality=args.quality,
        robust_jpeg=args.robust_jpeg,
        robust=args.robust,
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
    if args.sensitivity_floor is not None:
        overrides["sensitivity_floor"] = args.sensitivity_floor
    return ProtectSettings.from_preset(args.preset or DEFAULT_PRESET, **overrides)


def _listed(spec: str | None) -> list[str]:
    """The paths of --files-from: one per line, blank lines skipped ('-': standard input)."""
    if spec is None:
        return []
    if spec == "-":
        return [line.rstrip("\n") for line in sys.stdin if line.strip()]
    with open(spec, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f if line.strip()]


def _join(args: argparse.Namespace):
    """The job's `Team` (after `jax.distributed.initialize`), or None without --distributed."""
    given = [args.coordinator, args.num_processes, args.process_id]
    if not args.distributed:
        if any(v is not None for v in given):
            raise ValueError("--coordinator, --num-processes and --process-id go with --distributed")
        return None
    if any(v is not None for v in given) and not all(v is not None for v in given):
        raise ValueError("give all of --coordinator, --num-processes and --process-id, or none (auto-detect)")
    from hasmap_jax.runtime import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    return distributed.Team.from_jax()


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (what `timeout`, systemd, SLURM and container stops send) raises KeyboardInterrupt in
    the main thread, as Ctrl-C does, so the run ends the same way: the write in progress finishes,
    the summary is printed, the folder lock is released. Yields a list that holds the signal
    number once one came. Later SIGTERMs are ignored while the run winds down. Off the main thread
    (where no handler can be set) nothing changes."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum, frame):
        received.append(signum)
        signal.signal(signum, signal.SIG_IGN)
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, old)


def run(args: argparse.Namespace) -> int:
    """Protects the photos, printing failures and notes as they come and a summary at the end
    (in a job of several processes: process 0 prints the job's summary)."""
    with _sigterm_as_interrupt() as received:
        try:
            code = _run(args, received)
        except KeyboardInterrupt:  # between the steps that report it themselves
            print("hasmap protect: interrupted", file=sys.stderr)
            code = EXIT_INTERRUPTED
    return EXIT_TERMINATED if received and code == EXIT_INTERRUPTED else code


def _run(args: argparse.Namespace, received: list[int]) -> int:
    from hasmap_jax.models.variables import WeightError
    from hasmap_jax.protect import (
        FolderLocked,
        ProtectInterrupted,
        ProtectStopped,
        RunOptions,
        UsageError,
        model_identity,
        plan,
        protect_paths,
    )

    err = sys.stderr
    try:
        listed = _listed(args.files_from)
        if not args.inputs and not listed:
            raise UsageError("no inputs: name files or folders, or --files-from LIST")
        team = _join(args)  # first: jax.distributed starts before anything asks the JAX backend
        lead = team is None or team.index == 0
        # Check the request before loading anything heavy.
        left_out: list[Path] = []
        plan(args.inputs, args.output, settings_from_args(args, args.model), listed=listed, left_out=left_out)
        if lead and not args.quiet:
            for folder in left_out:
                print(f"note: left out {folder}: it holds an earlier run's outputs (hasmap-manifest*.jsonl)", file=err)
        compile_cache.from_args(args)
        from hasmap_jax.sensitivity import resolve_sensitivity
        from hasmap_jax.weights.loading import load_quality_model  # looked up now: tests replace it

        model = load_quality_model(args.model)
        sensitivity = resolve_sensitivity(args.sensitivity)
        named = args.sensitivity in ("default", "uniform")
        sens_id = args.sensitivity if named else model_identity(args.sensitivity, sensitivity)
        settings = dataclasses.replace(settings_from_args(args, model_identity(args.model, model)), sensitivity=sens_id)
    except (UsageError, WeightError, FileNotFoundError, ValueError, OSError) as e:
        print(f"hasmap protect: error: {e}", file=err)
        return EXIT_USAGE
    except KeyboardInterrupt:
        how = "terminated (SIGTERM)" if received else "interrupted"
        print(f"hasmap protect: {how} before any photo was written", file=err)
        return EXIT_INTERRUPTED

    try:
        with photo_progress("protect", quiet=args.quiet) as bar:

            def on_result(r) -> None:
                if r.status in ("failed", "skipped"):
                    bar.message(f"{r.status}: {r.message}")
                elif not args.quiet and r.status == "ok":
                    for n in r.notes:
                        bar.message(f"note: {r.input}: {n}")

            summary = protect_paths(
                args.inputs,
                args.output,
                settings=settings,
                model=model,
                sensitivity=sensitivity,
                run=RunOptions(batch_size=args.batch_size, force=args.force, team=team, memory=args.memory),
                progress=bar,
                on_result=on_result,
                listed=listed,
            )
    except (UsageError, FolderLocked) as e:
        print(f"hasmap protect: error: {e}", file=err)
        return EXIT_USAGE
    except ProtectInterrupted as e:
        if received:
            print("hasmap protect: terminated (SIGTERM)", file=err)
        print(e.summary.text(), file=err)
        return EXIT_INTERRUPTED
    except ProtectStopped as e:
        print(e.summary.text(), file=err)  # its last line says why it stopped and what to do
        return e.summary.exit_code
    if lead:
        print(summary.text())
        manifest = args.output / ("hasmap-manifest.jsonl" if team is None else "hasmap-manifest*.jsonl")
        print(f"outputs in {args.output} (manifest: {manifest}); {summary.seconds:.0f} s")
    return summary.exit_code
