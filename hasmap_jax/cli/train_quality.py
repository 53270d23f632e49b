"""`hasmap train-quality --photo-root DIR [--force]`: train the shipped default quality model.

Arguments and printing over `hasmap_jax.training.train.train_default_model` (and
`hasmap_jax.training.evaluate.evaluate_checkpoint` with --evaluate); the photos, their installation and the training are
described in `hasmap_jax.training`.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from hasmap_jax.training import train
from hasmap_jax.training.data import check_kinds
from hasmap_jax.training.evaluate import evaluate_checkpoint, format_report, record_evaluation
from hasmap_jax.training.train import TRAINED_POOLINGS, Phase, TrainConfig, train_default_model
from hasmap_jax.weights.loading import weights_dir

EPILOG = """\
examples:
  hasmap train-quality --photo-root /opt/hasmap-photos --force
      train and replace weights/default (time: weights/README.md)
  hasmap train-quality --photo-root /opt/hasmap-photos --evaluate weights/default
      re-print the held-out evaluation of a checkpoint
  hasmap train-quality --photo-root /opt/tuxpaint --photo-root /opt/tuxtype --photo-root /opt/lxqt-themes \
      --photo-root /opt/libelementary-data --photo-root /opt/afterstep-data --evaluate weights/default --split unseen
      the same on packages the training never read, per package and per category (calm / general); each
      package unpacked with dpkg-deb -x into its folder (hasmap_jax.training.photos.UNSEEN_INSTALL_COMMANDS);
      --record also writes it into the checkpoint's model card

The photos come from installed packages (see hasmap_jax.training.photos); the run is seeded.
exit status: 0 done, 2 --out exists without --force (nothing written) or another usage error.
"""


def register(subparsers) -> None:
    d, (patches, full) = TrainConfig(), train.DEFAULT_PHASES
    p = subparsers.add_parser(
        "train-quality",
        help="train the shipped default quality model (a small KonCept512) on licensed photos",
        description=train.__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--photo-root",
        action="append",
        default=[],
        help="folder with pip --target photo packages, or a prefix for Debian files (repeatable)",
    )
    p.add_argument("--out", type=Path, default=weights_dir() / "default", help="checkpoint directory to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument(
        "--evaluate", type=Path, metavar="CHECKPOINT", help="only evaluate this checkpoint on held-out photos"
    )
    p.add_argument(
        "--split",
        choices=("heldout", "unseen"),
        default="heldout",
        help="with --evaluate: held-out photos of the training's packages, or packages it never read",
    )
    p.add_argument(
        "--record",
        action="store_true",
        help="with --evaluate: also write the report into the checkpoint's model card (as <split>_evaluation)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--steps", type=int, default=patches.steps, help="steps on patches")
    p.add_argument("--batch-size", type=int, default=patches.batch_size, help="batch on patches")
    p.add_argument("--patch", type=int, nargs=2, default=patches.crop, metavar=("H", "W"))
    p.add_argument("--full-steps", type=int, default=full.steps, help="final steps on 384x512 views")
    p.add_argument("--full-batch-size", type=int, default=full.batch_size)
    p.add_argument("--learning-rate", type=float, default=d.learning_rate)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--pair-weight", type=float, default=d.pair_weight, help="weight of the within-view difference loss")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--huber-delta", type=float, default=d.huber_delta)
    p.add_argument("--group", type=int, default=d.group, help="versions of each view per batch (1 clean)")
    p.add_argument("--eval-views", type=int, default=d.eval_views)
    p.add_argument(
        "--kinds",
        default=",".join(d.kinds),
        help="comma-separated degradations to train on (default: %(default)s); the evaluation shows all",
    )
    p.add_argument("--tone", action="store_true", help="random tone changes of the training views (tone_jitter)")
    p.add_argument(
        "--calm-weight",
        type=float,
        default=d.calm_weight,
        help="draw each 'calm' training photo (smooth by nature) this many times as often as another "
        "(default: %(default)s; 1: uniform)",
    )
    p.add_argument(
        "--visible-percentile",
        type=float,
        default=d.visible_percentile,
        help="cap blur and resampling labels by the change at this percentile of the view's 32x32 blocks "
        "(default: %(default)s, which counts a subject on 1 %% of the view; the evaluation's is 90)",
    )
    p.add_argument(
        "--pooling",
        choices=TRAINED_POOLINGS,
        default=d.pooling,
        help="how the model pools its feature map before the head (KonCept512.pooling; default: %(default)s): "
        "'mean_max' concatenates the mean and the maximum over the map, so that the most detailed part "
        "of the view counts",
    )
    p.add_argument(
        "--repeat-kind",
        action=argparse.BooleanOptionalAction,
        default=d.repeat_kind,
        help="the last degradation of each group repeats the first one's kind at another severity, so that "
        "the within-view difference loss also orders severities of one kind (default: %(default)s)",
    )
    p.add_argument(
        "--cap-fade-from",
        type=float,
        default=d.cap_fade_from,
        help="the blur and resampling labels' content cap fades out from this nominal severity to 1, so that "
        "a strong blur counts as one even on a smooth photo (default: %(default)s; 1: the whole cap)",
    )
    p.set_defaults(func=run)


def _phases(args: argparse.Namespace):
    """The patch phase and the whole-view phase; one given 0 steps is left out."""
    phases = (Phase(args.steps, args.batch_size, tuple(args.patch)), Phase(args.full_steps, args.full_batch_size, None))
    return tuple(p for p in phases if p.steps > 0)


def run(args: argparse.Namespace) -> int:
    """Trains and writes --out (or, with --evaluate, prints a checkpoint's held-out evaluation)."""
    command = shlex.join(["hasmap", *getattr(args, "argv", sys.argv[1:])])  # `main` sets args.argv
    if args.record and args.evaluate is None:
        print("--record writes an evaluation into a checkpoint's card: give --evaluate CHECKPOINT", file=sys.stderr)
        return 2
    if args.evaluate is not None:
        report = evaluate_checkpoint(args.evaluate, args.photo_root, views=args.eval_views, split=args.split)
        print(format_report(report))
        if args.record:
            print(f"recorded in {record_evaluation(args.evaluate, report, command=command)}")
        return 0
    out = args.out.expanduser().absolute()
    if out.exists() and not args.force:
        print(f"{out} exists; pass --force to replace it", file=sys.stderr)
        return 2
    try:
        kinds = check_kinds(k.strip() for k in args.kinds.split(",") if k.strip())
    except ValueError as e:
        print(f"--kinds: {e}", file=sys.stderr)
        return 2
    try:
        config = config_from_args(args, kinds)
    except ValueError as e:
        print(f"train-quality: {e}", file=sys.stderr)
        return 2
    train_default_model(out, args.photo_root, config, force=args.force, command=command)
    return 0


def config_from_args(args: argparse.Namespace, kinds: tuple[str, ...]) -> TrainConfig:
    """The `TrainConfig` of parsed `hasmap train-quality` arguments (`kinds` checked); ValueError if
    the settings cannot run. Without options: `TrainConfig()`, the shipped model's recipe."""
    return TrainConfig(
        seed=args.seed,
        phases=_phases(args),
        learning_rate=args.learning_rate,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        huber_delta=args.huber_delta,
        pair_weight=args.pair_weight,
        group=args.group,
        eval_views=args.eval_views,
        kinds=kinds,
        tone=args.tone,
        calm_weight=args.calm_weight,
        visible_percentile=args.visible_percentile,
        pooling=args.pooling,
        repeat_kind=args.repeat_kind,
        cap_fade_from=args.cap_fade_from,
    )
