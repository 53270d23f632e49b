"""Speed and size of a quality checkpoint (default: the shipped `weights/default`).

Prints the checkpoint's size on disk, its parameter count, the time to compile its jitted forward
pass and the steady time per forward at each batch size (median of `--repeats` calls after one
warm-up call, each waited on with `block_until_ready`), on 384x512 images by default: the figures
the default model's specification bounds (at most 20 MB, at most 0.1 s per 384x512 forward on the
2-core CPU).

    python benchmarks/default_model.py --batch-sizes 1,8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

from hasmap_jax import load_quality_model  # noqa: E402
from hasmap_jax.weights.loading import weights_dir  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="default", help="a shipped model name or a checkpoint folder (default: default)")
    p.add_argument("--batch-sizes", default="1,8", help="comma-separated (default 1,8)")
    p.add_argument("--height", type=int, default=384)
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--json", metavar="PATH", help="also write machine, settings and rows as JSON")
    args = p.parse_args(argv)

    model = load_quality_model(args.model)
    params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(model.variables["params"]))
    folder = Path(args.model) if Path(args.model).is_dir() else weights_dir() / args.model
    size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else None
    forward = jax.jit(lambda v, x: model.module.apply(v, x)[0])
    machine = describe_machine()
    print(format_machine(machine))
    print(
        f"settings : model={args.model} size={args.height}x{args.width} repeats={args.repeats} "
        f"config={json.dumps(model.module.config())}"
    )
    on_disk = f", {size / 2**20:.1f} MiB on disk ({folder})" if size else ""
    print(f"model    : {params / 1e6:.2f} M parameters{on_disk}")
    rows = []
    rng = np.random.default_rng(0)
    for b in (int(s) for s in args.batch_sizes.split(",")):
        x = jnp.asarray(rng.random((b, args.height, args.width, 3), dtype=np.float32))
        t0 = time.perf_counter()
        forward(model.variables, x).block_until_ready()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            forward(model.variables, x).block_until_ready()
            times.append(time.perf_counter() - t0)
        med = statistics.median(times)
        rows.append({"batch": b, "compile_and_first_s": compile_s, "median_s": med, "per_image_s": med / b})
        print(f"batch {b:>3}: compile + first call {compile_s:.2f} s; forward {med:.4f} s, {med / b:.4f} s per image")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine, "settings": vars(args), "parameters": params, "bytes": size, "rows": rows})
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
