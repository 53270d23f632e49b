"""Attack throughput: image-steps per second, compile time and memory of `attack_batch`'s program.

For each model and batch size, compiles the whole attack (one `lax.while_loop` over `--steps`
steps, vmapped over the batch, early stop off so every image runs every step), times it, and
compares one attack step with the model's own forward + input-gradient (`jax.value_and_grad` of
the summed scores) on the same batch: the difference is what the attack adds (tanh
parameterisation, 8-bit rounding, the sensitivity-weighted distortion, Adam, best-iterate
bookkeeping).

Models: "default" (the shipped small model, `load_quality_model("default")`) and "koncept512"
(full-size KonCept512, PyTorch layout, random weights). Images: the shipped example photos (cycled)
at 384x512, the models' input size.

    python benchmarks/attack_throughput.py --models default,koncept512 --batch-sizes 1,2,4 --steps 10
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
from _machine import describe_machine, format_machine, peak_rss_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def load_model(name: str):
    from hasmap_jax.loading import QualityModel, load_quality_model
    from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, koncept512

    if name == "default":
        return load_quality_model("default")
    module = koncept512("koncept512-pytorch")
    x = jnp.zeros((1, *KONCEPT_INPUT_SIZE, 3))
    variables = jax.jit(module.init)({"params": jax.random.key(0)}, x)
    return QualityModel(module, variables, {"input_size": list(KONCEPT_INPUT_SIZE)})


def photos(n: int, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    files = sorted((ROOT / "examples").glob("*.png"))
    if not files:
        rng = np.random.RandomState(0)
        return rng.randint(0, 256, (n, *size, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            out.append(np.asarray(im.convert("RGB").resize(size[::-1], Image.BICUBIC)))
    return np.stack(out)


def timed(fn, *args, repeats: int) -> list[float]:
    jax.block_until_ready(fn(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t)
    return times


def bench(model, name: str, batch: int, args) -> dict:
    from hasmap_jax import attack as A
    from hasmap_jax.sensitivity import jnd_sensitivity

    size = tuple(model.input_size)
    x = jnp.asarray(photos(batch, size) / 255.0, jnp.float32)
    maps = jnd_sensitivity(x)
    alpha = jnp.full((batch,), args.alpha, jnp.float32)
    static = dict(
        steps=args.steps,
        search_steps=1,
        optimizer=None,
        early_stop=False,
        view_size=None,
        jpeg_chain=() if args.robust_jpeg is None else (args.robust_jpeg,),
    )
    dyn = (model, x, maps, alpha, jnp.float32(50.0), jnp.float32(0.0), jnp.float32(1e-2))

    t = time.perf_counter()
    compiled = A._attack.lower(*dyn, **static).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    xla_bytes = None if mem is None else mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
    attack_t = statistics.median(timed(compiled, *dyn, repeats=args.repeats))

    vg = jax.jit(jax.value_and_grad(lambda x: model.apply(x).sum()))
    vg_t = statistics.median(timed(vg, x, repeats=args.repeats))
    flops = None
    try:  # XLA's count of the forward + input gradient, on the HLO before compilation: after it,
        # GPU convolutions are cuDNN custom calls that the count leaves out (None where none is given)
        cost = vg.lower(x).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:
        pass

    # The same forward + input gradient run `steps` times inside lax.scan: separates what a compiled
    # loop costs on this backend (large on XLA:CPU) from what the attack's own arithmetic adds.
    def scanned(x):
        def body(c, _):
            return c - 1e-3 * vg(c)[1], None

        return jax.lax.scan(body, x, None, length=args.steps)[0]

    scan_t = float("nan")
    if not args.no_loop_baseline:
        scan_t = statistics.median(timed(jax.jit(scanned), x, repeats=args.repeats)) / args.steps
    stats = {}
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # CPU backends may raise
        pass
    step_t = attack_t / args.steps
    return dict(
        model=name,
        batch=batch,
        steps=args.steps,
        compile_s=compile_s,
        attack_s=attack_t,
        image_steps_per_s=batch * args.steps / attack_t,
        step_ms_per_image=1e3 * step_t / batch,
        fwd_grad_ms_per_image=1e3 * vg_t / batch,
        fwd_grad_in_loop_ms_per_image=1e3 * scan_t / batch,
        overhead=step_t / vg_t - 1.0,
        fwd_grad_gflop_per_image=None if flops is None else flops / batch / 1e9,
        attack_tflops=None if flops is None else flops / step_t / 1e12,
        overhead_vs_loop=step_t / scan_t - 1.0,
        xla_bytes=xla_bytes,
        xla_bytes_per_image=None if xla_bytes is None else xla_bytes / batch,
        device_peak_bytes=stats.get("peak_bytes_in_use"),
        host_peak_rss_bytes=peak_rss_bytes(),
    )


def fmt_mib(b):
    return "n/a" if b is None else f"{b / 2**20:,.0f}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="default,koncept512", help="comma-separated: default,koncept512")
    p.add_argument("--batch-sizes", default="1,2,4", help="comma-separated batch sizes")
    p.add_argument("--steps", type=int, default=10, help="attack steps in the timed program")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--robust-jpeg", type=int, default=None, help="also time the JPEG-robust loss at this quality")
    p.add_argument(
        "--no-loop-baseline", action="store_true", help="skip timing forward + gradient inside lax.scan (one compile less)"
    )
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    machine = describe_machine()
    print(format_machine(machine))
    print(
        f"settings : steps={args.steps} repeats={args.repeats} alpha={args.alpha} robust_jpeg={args.robust_jpeg}"
        f" sensitivity=JND early_stop=off input=model input size; command: {' '.join(sys.argv)}"
    )
    rows = []
    for name in args.models.split(","):
        model = load_model(name)
        n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(model.variables))
        print(f"model    : {name}: {n_params:,} parameters, input {tuple(model.input_size)}", flush=True)
        for b in (int(v) for v in args.batch_sizes.split(",")):
            rows.append(bench(model, name, b, args))
            print(f"  done {name} batch {b}", file=sys.stderr, flush=True)
    head = (
        "model",
        "batch",
        "compile s",
        "img-steps/s",
        "step ms/img",
        "fwd+grad ms/img",
        "overhead",
        "TFLOP/s",
        "xla MiB",
        "MiB/img",
        "dev peak MiB",
    )
    print()
    print("  ".join(f"{h:>15}" for h in head))
    for r in rows:
        cells = (
            r["model"],
            r["batch"],
            f"{r['compile_s']:.1f}",
            f"{r['image_steps_per_s']:.2f}",
            f"{r['step_ms_per_image']:.1f}",
            f"{r['fwd_grad_ms_per_image']:.1f}",
            f"{100 * r['overhead']:+.1f}%",
            "n/a" if r["attack_tflops"] is None else f"{r['attack_tflops']:.3g}",
            fmt_mib(r["xla_bytes"]),
            fmt_mib(r["xla_bytes_per_image"]),
            fmt_mib(r["device_peak_bytes"]),
        )
        print("  ".join(f"{c:>15}" for c in cells))
    print(
        "\noverhead = (attack time per step) / (model forward + input gradient time) - 1, same batch;"
        "\nTFLOP/s = XLA's flop count of the forward + input gradient / attack time per step (the attack's"
        "\n  useful arithmetic rate; KonCept512 at 384x512 is about 116 GFLOP per image-step);"
        "\nxla MiB = memory_analysis() arguments + outputs + temporaries of the compiled attack."
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
