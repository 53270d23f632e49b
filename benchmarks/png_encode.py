"""Seconds to encode a protected-looking photo as PNG at each zlib level (Pillow), and the file size.

A protected photo carries a faint noise-like change, which zlib compresses poorly; this takes a
shipped example, upscales it to the given size and adds +-2 levels of seeded noise, then times
`Image.save(format="PNG", compress_level=L)` (minimum of --repeats) for each level.

    python benchmarks/png_encode.py --size 1008x1344 --levels 1,6
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="1008x1344", help="HEIGHTxWIDTH")
    p.add_argument("--levels", default="1,6")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    h, w = (int(v) for v in args.size.split("x"))
    print(format_machine(describe_machine()))
    with Image.open(ROOT / "examples" / "bridge.png") as im:
        a = np.asarray(im.convert("RGB").resize((w, h), Image.BICUBIC)).astype(np.int16)
    a = np.clip(a + np.random.RandomState(0).randint(-2, 3, a.shape), 0, 255).astype(np.uint8)
    print(f"settings : {h}x{w} 'bridge' upscaled, +-2 levels of noise, {args.repeats} repeats")
    for level in (int(v) for v in args.levels.split(",")):
        times = []
        for _ in range(args.repeats):
            buf = io.BytesIO()
            t = time.perf_counter()
            Image.fromarray(a).save(buf, format="PNG", compress_level=level)
            times.append(time.perf_counter() - t)
        print(f"level {level}: {min(times):.2f} s, {len(buf.getvalue()) / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
