"""A default-model training recipe variant, trained and evaluated on held-out and unseen packages.

Trains the default quality model exactly as `hasmap train-quality` does (`TrainConfig()`), with one
change selectable here, then prints the evaluation (`format_report`) on the held-out photos of the
training's packages and on the unseen packages (whole packages never read in training). Writes the
checkpoint to a new folder (never `weights/default`).

    python benchmarks/quality_recipe.py --nominal-labels --out /tmp/q_nominal \
        --photo-root /opt/hasmap-photos --photo-root /opt/hasmap-photos-new/debian/tuxpaint-data

--nominal-labels: blur and resampling are labelled by the severity they were applied at, not capped
by how much they changed the photo (`effective_severity`): a blurred sky counts as degraded (issue
13: blur sigma >= 3 must rate low whatever the content). Evaluation is unchanged (capped labels for
"correct", nominal severities for the rank correlations).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="a new folder for the checkpoint")
    p.add_argument("--photo-root", action="append", default=[], help="where photo packages are unpacked")
    p.add_argument("--nominal-labels", action="store_true")
    args = p.parse_args(argv)
    if Path(args.out).exists():
        raise SystemExit(f"--out {args.out}: exists; give a new folder (nothing is overwritten)")

    from hasmap_jax.training import data as qd
    from hasmap_jax.training import evaluate as tev
    from hasmap_jax.training import train as tq

    print(format_machine(describe_machine()))
    print(f"settings : nominal_labels={args.nominal_labels} config={tq.TrainConfig()}")
    print(f"command  : {' '.join(sys.argv)}", flush=True)
    capped = qd.effective_severity
    if args.nominal_labels:
        qd.effective_severity = lambda kind, severity, clean, degraded, **_: float(severity)
    config = tq.TrainConfig()
    start = time.perf_counter()
    train_images = qd.prepared_photos("train", args.photo_root, print)
    module = tq.make_model()
    variables = tq.train(module, train_images, config, log=print)
    qd.effective_severity = capped  # evaluation labels as always
    print(f"trained in {time.perf_counter() - start:.0f} s", flush=True)
    for split in ("heldout", "unseen"):
        photos = qd.prepared_photos(split, args.photo_root, print)
        print(f"\n{split}:")
        print(tev.format_report(tev.evaluate(module, variables, photos, views=config.eval_views)), flush=True)
    card = {"kind": "quality", "config": module.config(), "input_size": list(tq.KONCEPT_INPUT_SIZE)}
    print(f"wrote {tq._write(Path(args.out), variables, card, force=False)}")


if __name__ == "__main__":
    main()
