"""Attack throughput: image-steps per second, compile time and memory of `attack_batch`'s programs.

For each model, batch size, loop ("device": one compiled `lax.while_loop` over `--steps` steps;
"host": one compiled step per iteration driven from Python), model compute dtype (fp32 / bf16) and
BatchNorm folding, runs the attack with early stop off (every image runs every step) and compares
one attack step with the same model's own forward + input gradient (`jax.value_and_grad` of the
summed scores) on the same batch, timed interleaved: the difference is what the attack adds (tanh
parameterisation, 8-bit rounding, the sensitivity-weighted distortion, Adam, best-iterate
bookkeeping, and on XLA:CPU the cost of a compiled loop body).

Models: "default" (the shipped small model, `load_quality_model("default")`) and "koncept512"
(full-size KonCept512, PyTorch layout, random weights). Images: the shipped example photos (cycled)
at 384x512, the models' input size.

    python benchmarks/attack_throughput.py --models default --batch-sizes 2 --loops host,device --steps 10
    python benchmarks/attack_throughput.py --models koncept512 --batch-sizes 16,32 --dtypes fp32,bf16 --fold on,off
"""

from __future__ import annotations

import argparse
import dataclasses
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
    from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, koncept512
    from hasmap_jax.models.loaded import QualityModel
    from hasmap_jax.weights.loading import load_quality_model

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


def bench(model, name: str, batch: int, args, loop: str, dtype: str, fold: bool) -> dict:
    from hasmap_jax import attack as A
    from hasmap_jax.runtime.parallel import data_mesh
    from hasmap_jax.sensitivity import jnd_sensitivity

    size = tuple(model.input_size)
    x8 = jnp.asarray(photos(batch, size))
    maps = jnd_sensitivity(x8 / 255.0)
    alpha = jnp.full((batch,), args.alpha, jnp.float32)
    compute_dtype = jnp.bfloat16 if dtype == "bf16" else jnp.float32
    prepared = A.prepare_model(model, mesh=data_mesh(), fold_batchnorm=fold, compute_dtype=compute_dtype)
    plan = A._Plan(
        steps=args.steps,
        search_steps=1,
        optimizer=None,
        check_every=args.steps + 1,  # early stop off: every image runs every step
        view_size=None,
        jpeg_chain=() if args.robust_jpeg is None else (args.robust_jpeg,),
    )
    dyn = (prepared, x8, maps, alpha, jnp.float32(50.0), jnp.float32(0.0), jnp.float32(1e-2))

    t = time.perf_counter()
    xla_bytes = None
    if loop == "device":
        compiled = A._attack.lower(*dyn, plan=plan).compile()
        mem = compiled.memory_analysis()
        if mem is not None:
            xla_bytes = mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes

        def run():
            return compiled(*dyn)
    else:
        jax.block_until_ready(A._attack_host(*dyn, plan=dataclasses.replace(plan, steps=1)))  # compiles the step

        def run():
            return A._attack_host(*dyn, plan=plan)

    compile_s = time.perf_counter() - t
    vg = jax.jit(jax.value_and_grad(lambda m, x: m.apply(x).sum(), argnums=1))
    xf = x8.astype(jnp.float32) / 255.0
    # Interleaved repeats: the attack and the model's own forward + input gradient see the same load.
    jax.block_until_ready(run())
    jax.block_until_ready(vg(prepared, xf))
    attack_ts, vg_ts = [], []
    for _ in range(args.repeats):
        attack_ts.append(timed_once(run))
        vg_ts.append(timed_once(lambda: vg(prepared, xf)))
    attack_t, vg_t = statistics.median(attack_ts), statistics.median(vg_ts)
    flops = None
    try:  # XLA's count of the forward + input gradient, on the HLO before compilation: after it,
        # GPU convolutions are cuDNN custom calls that the count leaves out (None where none is given)
        cost = vg.lower(prepared, xf).cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        flops = float(cost.get("flops")) if cost and cost.get("flops") else None
    except Exception:
        pass
    stats = {}
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # CPU backends may raise
        pass
    step_t = attack_t / args.steps
    return dict(
        model=name,
        batch=batch,
        loop=loop,
        dtype=dtype,
        folded=fold,
        steps=args.steps,
        compile_s=compile_s,
        attack_s=attack_t,
        image_steps_per_s=batch * args.steps / attack_t,
        step_ms_per_image=1e3 * step_t / batch,
        fwd_grad_ms_per_image=1e3 * vg_t / batch,
        overhead=step_t / vg_t - 1.0,
        fwd_grad_gflop_per_image=None if flops is None else flops / batch / 1e9,
        attack_tflops=None if flops is None else flops / step_t / 1e12,
        xla_bytes=xla_bytes,
        xla_bytes_per_image=None if xla_bytes is None else xla_bytes / batch,
        device_peak_bytes=stats.get("peak_bytes_in_use"),
        host_peak_rss_bytes=peak_rss_bytes(),
    )


def timed_once(fn) -> float:
    t = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t


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
    p.add_argument("--loops", default="auto", help="comma-separated: host, device, auto (this backend's default)")
    p.add_argument("--dtypes", default="fp32", help="comma-separated model compute dtypes: fp32, bf16")
    p.add_argument("--fold", default="on", help="comma-separated: on, off (BatchNorm folded into the convolutions)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    machine = describe_machine()
    print(format_machine(machine))
    print(
        f"settings : steps={args.steps} repeats={args.repeats} alpha={args.alpha} robust_jpeg={args.robust_jpeg}"
        f" sensitivity=JND early_stop=off input=model input size; command: {' '.join(sys.argv)}"
    )
    print(
        "timing   : attack and the same model's forward + input gradient interleaved, medians; the host loop's"
        " compile s includes one step"
    )
    rows = []
    from hasmap_jax.attack import default_loop

    loops = [default_loop() if v == "auto" else v for v in args.loops.split(",")]
    for name in args.models.split(","):
        model = load_model(name)
        n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(model.variables))
        print(f"model    : {name}: {n_params:,} parameters, input {tuple(model.input_size)}", flush=True)
        for b in (int(v) for v in args.batch_sizes.split(",")):
            for loop in loops:
                for dtype in args.dtypes.split(","):
                    for fold in args.fold.split(","):
                        rows.append(bench(model, name, b, args, loop, dtype, fold == "on"))
                        r = rows[-1]
                        print(
                            f"  done {name} batch {b} {loop} {dtype} fold={fold}: {r['image_steps_per_s']:.3g} "
                            f"image-steps/s",
                            file=sys.stderr,
                            flush=True,
                        )
    head = (
        "model",
        "batch",
        "loop",
        "dtype",
        "BN",
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
    print("  ".join(f"{h:>12}" for h in head))
    for r in rows:
        cells = (
            r["model"],
            r["batch"],
            r["loop"],
            r["dtype"],
            "folded" if r["folded"] else "as is",
            f"{r['compile_s']:.1f}",
            f"{r['image_steps_per_s']:.3g}",
            f"{r['step_ms_per_image']:.1f}",
            f"{r['fwd_grad_ms_per_image']:.1f}",
            f"{100 * r['overhead']:+.1f}%",
            "n/a" if r["attack_tflops"] is None else f"{r['attack_tflops']:.3g}",
            fmt_mib(r["xla_bytes"]),
            fmt_mib(r["xla_bytes_per_image"]),
            fmt_mib(r["device_peak_bytes"]),
        )
        print("  ".join(f"{c:>12}" for c in cells))
    print(
        "\noverhead = (attack time per step) / (model forward + input gradient time) - 1, same batch;"
        "\nTFLOP/s = XLA's flop count of the forward + input gradient / attack time per step (the attack's"
        "\n  useful arithmetic rate; KonCept512 at 384x512 is about 116 GFLOP per image-step);"
        "\nxla MiB = memory_analysis() arguments + outputs + temporaries of the compiled attack (device loop)."
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
