"""Peak memory of `hasmap protect` against photo size: the figure its memory budget batches by.

For each size, a synthetic camera photo (a shipped example upscaled with Pillow, saved as JPEG
quality 95, 4:3) is protected by `hasmap protect` in a fresh child process with the default model,
sensitivity map and settings (the `mid` preset, PNG output, JPEG-90-robust), `--steps` steps (the
peak does not grow with the step count: the state is the same at every step) and
`--no-compile-cache`, so that compiling is inside every measurement, as on a first run. The child
reports its own peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`: the whole process,
imports, model, compiling, decoding, the attack and writing the output included).

A straight line through the points (least squares) gives the fixed cost of the process and the
cost per megapixel of a photo in a batch; `hasmap_jax.protect.memory` holds the figures.
`--batch N` protects N photos of each size in one batch, to check that the cost per photo adds up.

    PYTHONPATH=. python benchmarks/protect_memory.py                       # 0.2, 1, 4, 12, 24, 40 MP
    PYTHONPATH=. python benchmarks/protect_memory.py --megapixels 12 --batch 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
t0 = time.perf_counter()
from hasmap_jax.cli import main
code = main(sys.argv[1:])
print("RESULT " + json.dumps({"code": code, "seconds": time.perf_counter() - t0,
                              "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def size_for(megapixels: float) -> tuple[int, int]:
    """(height, width) of a 4:3 photo of at most `megapixels` MP."""
    w = int(math.sqrt(megapixels * 1e6 * 4 / 3))
    h = int(megapixels * 1e6 // w)
    return min(h, w * 3 // 4), w


def make_photo(path: Path, h: int, w: int, seed: int) -> None:
    from PIL import Image

    examples = sorted((ROOT / "examples").glob("*.png"))
    with Image.open(examples[seed % len(examples)]) as im:
        im.convert("RGB").resize((w, h), Image.BICUBIC).save(path, quality=95)


def measure(h: int, w: int, batch: int, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="hasmap-memory-") as tmp:
        src = Path(tmp) / "in"
        src.mkdir()
        for i in range(batch):
            make_photo(src / f"p{i}.jpg", h, w, i)
        cmd = [sys.executable, "-c", CHILD, "protect", str(src), "-o", str(Path(tmp) / "out")]
        cmd += ["--steps", str(args.steps), "--batch-size", str(batch), "-q", "--no-compile-cache"]
        cmd += ["--robust", args.robust, "--max-pixels", str(max(h * w, 1))]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        if not lines:
            return {"error": (p.stdout + p.stderr)[-2000:], "returncode": p.returncode}
        return json.loads(lines[0][len("RESULT ") :])


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(intercept, slope) of the least-squares line through (x, y) points."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    slope = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - slope * mx, slope


def main() -> None:
    from _machine import describe_machine, format_machine

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--megapixels", default="0.2,1,4,12,24,40", help="photo sizes, comma-separated")
    ap.add_argument("--batch", type=int, default=1, help="photos of each size in one batch")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--robust", default="jpeg90", choices=["jpeg90", "web", "off"])
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()

    print(format_machine(describe_machine()))
    sizes = [float(v) for v in args.megapixels.split(",")]
    print(
        f"settings : hasmap protect, default model and JND map, mid preset, --robust {args.robust}, PNG output, "
        f"--steps {args.steps}, --batch-size {args.batch}, --no-compile-cache; one fresh process per size; "
        f"command: {' '.join(sys.argv)}"
    )
    print(f"{'MP':>6} {'width x height':>15} {'batch':>5} {'peak RSS':>10} {'seconds':>8}")
    rows = []
    for mp in sizes:
        h, w = size_for(mp)
        r = measure(h, w, args.batch, args)
        r.update(megapixels=h * w / 1e6, height=h, width=w, batch=args.batch)
        rows.append(r)
        if "error" in r:
            print(f"{h * w / 1e6:6.1f} {f'{w}x{h}':>15} {args.batch:>5}  failed: {r['error'][-500:]}")
            continue
        print(
            f"{h * w / 1e6:6.1f} {f'{w}x{h}':>15} {args.batch:>5} {r['peak_rss'] / 2**30:8.2f} GiB"
            f" {r['seconds']:8.1f}" + ("" if r["code"] == 0 else f"  (exit {r['code']})"),
            flush=True,
        )
    good = [(r["megapixels"] * r["batch"], r["peak_rss"]) for r in rows if "error" not in r]
    if len(good) >= 2:
        a, b = fit(good)
        worst = max(abs(y - (a + b * x)) for x, y in good)
        print(
            f"fit      : peak RSS = {a / 2**30:.2f} GiB + {b / 2**20:.0f} MiB per megapixel in the batch "
            f"({b / 1e6:.0f} bytes per pixel); largest residual {worst / 2**30:.2f} GiB"
        )
    if args.json:
        args.json.write_text(json.dumps({"machine": describe_machine(), "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
