"""Time to the first finished photo of `hasmap protect`, with and without compiled programs kept.

Runs the command line twice in fresh processes, on two disjoint halves of a photo set of one size
(default: the shipped example photos), sharing one new persistent compilation cache folder: the
first run compiles, the second finds its programs in the cache. Reports, per run, the seconds from
the start of the process to the first output recorded in the manifest, and to the end. `--no-cache`
adds a third run on the second half without the cache, for comparison.

    python benchmarks/first_photo.py --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run(inputs: list[Path], out: Path, cache: Path, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "hasmap_jax.cli", "protect", *map(str, inputs), "-o", str(out), "-q", *extra]
    env = {**os.environ, "HASMAP_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    manifest = out / "hasmap-manifest.jsonl"
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = None
    while p.poll() is None:
        if first is None and manifest.is_file() and '"type": "file"' in manifest.read_text():
            first = time.monotonic() - t0
        time.sleep(0.05)
    total = time.monotonic() - t0
    out_text, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({p.returncode}):\n{err}")
    if first is None:
        first = total
    return dict(command=" ".join(cmd), first_photo_s=first, total_s=total, photos=len(inputs))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default=str(ROOT / "examples"), help="a folder of photos of one size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="also time the second half without the cache")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    files = sorted(Path(args.photos).glob("*.png"))
    half = len(files) // 2
    if half < 1:
        raise SystemExit(f"need at least two photos in {args.photos}")
    print(format_machine(describe_machine()))
    print(f"settings : steps={args.steps} batch_size={args.batch_size} photos={len(files)} ({args.photos})")
    print(f"command  : {' '.join(sys.argv)}")
    extra = ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "xla-cache"
        runs = [("first run (empty cache)", files[:half], []), ("second run, new photos (cache)", files[half:], [])]
        if args.no_cache:
            runs.append(("second half, no cache", files[half:], ["--no-compile-cache"]))
        for i, (label, inputs, more) in enumerate(runs):
            row = run(inputs, tmp / f"out{i}", cache, extra + more)
            row["run"] = label
            rows.append(row)
            print(
                f"  {label:<32} first photo after {row['first_photo_s']:6.1f} s, {row['photos']} photos in "
                f"{row['total_s']:6.1f} s"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": describe_machine(), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
