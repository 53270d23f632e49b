"""Full-resolution protection: seconds per attack step, compile time and memory for 12 MP photos.

Builds a 4032x3024 (phone camera) photo by upscaling a shipped example with Pillow, and runs
`hasmap_jax.attack_batch(photos, 20.0, robust_jpeg=90, confidence=10.0, steps=S, early_stop=False)`
on it: the defaults of `hasmap protect` (the shipped default model, the JND sensitivity map, the
model's 384x512 view through `fit_view`, the loss also scoring the differentiable JPEG-90 round
trip `diff_jpeg`).

Seconds per step come from two warm runs with different step counts, (t(S2) - t(S1)) / (S2 - S1),
so what every call does once (the sensitivity map, the metrics, the real Pillow JPEG round trip and
the final scores, host transfers) cancels out; that per-call overhead is reported separately.
Compile time is the first call's time minus a warm call's with the same arguments (the device
loop compiles anew for each step count; the host loop compiles its step once).

With --parts, also times one attack step and its parts as separately compiled programs (forward
+ backward where the step differentiates through them) and prints XLA's count of their memory
traffic and temporary buffers, to show where a full-resolution step spends its time:

    python benchmarks/full_resolution.py --steps 3,8 --parts
    python benchmarks/full_resolution.py --parts --no-attack --repeats 5
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine, peak_rss_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def photos(n: int, height: int, width: int, name: str | None) -> np.ndarray:
    """n uint8 photos (n, height, width, 3): shipped examples upscaled (bicubic), cycled; noise without them."""
    from PIL import Image

    files = sorted((ROOT / "examples").glob("*.png"))
    if name:
        files = [f for f in files if f.stem == name] or [Path(name)]
    if not files:
        return np.random.RandomState(0).randint(0, 256, (n, height, width, 3), dtype=np.uint8)
    out = []
    for i in range(n):
        with Image.open(files[i % len(files)]) as im:
            out.append(np.asarray(im.convert("RGB").resize((width, height), Image.BICUBIC)))
    return np.stack(out)


def timed(fn, repeats: int) -> tuple[float, float]:
    """(min wall seconds, min process CPU seconds) over `repeats` calls of fn (already warm).

    CPU seconds are all threads of this process: on a shared host they move less with other
    workers' load than wall time does (memory bandwidth is still shared).
    """
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        jax.block_until_ready(fn())
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return min(walls), min(cpus)


def attack_kwargs(args, steps: int) -> dict:
    import hasmap_jax

    kw = dict(robust_jpeg=90, confidence=10.0, steps=steps, early_stop=False)
    params = inspect.signature(hasmap_jax.attack_batch).parameters
    for name, value in (("loop", args.loop), ("compute_dtype", args.compute_dtype)):
        if value is not None:  # passed only when asked for, so older signatures still work
            if name not in params:
                raise SystemExit(f"attack_batch has no {name!r} argument in this version")
            kw[name] = value
    return kw


def bench_attack(x: np.ndarray, args) -> dict:
    import hasmap_jax

    s1, s2 = args.steps
    run = lambda s: hasmap_jax.attack_batch(x, 20.0, **attack_kwargs(args, s))  # noqa: E731
    t = time.perf_counter()
    run(s1)
    first_s1 = time.perf_counter() - t
    t1, c1 = timed(lambda: run(s1).images, args.repeats)
    t = time.perf_counter()
    run(s2)
    first_s2 = time.perf_counter() - t
    t2, c2 = timed(lambda: run(s2).images, args.repeats)
    step = (t2 - t1) / (s2 - s1)
    step_cpu = (c2 - c1) / (s2 - s1)
    overhead = t1 - s1 * step
    per_call_100 = overhead + 100 * step
    return dict(
        batch=len(x),
        steps=(s1, s2),
        compile_s=first_s1 - t1,
        compile_s2=first_s2 - t2,
        call_s=(t1, t2),
        step_s=step,
        step_s_per_photo=step / len(x),
        step_cpu_s=step_cpu,
        overhead_s=overhead,
        photos_per_min_100_steps=60.0 * len(x) / per_call_100,
        peak_rss_bytes=peak_rss_bytes(),
    )


# --------------------------------------------------------------------------------------------
# One step and its parts


def attack_step(model, x8: jax.Array, view, chain=(90,)):
    """One attack step as attack.py takes it, built from its public pieces: (fn, args) for batch x8.

    The loss and its gradient (`hasmap_loss`: the 8-bit image and its JPEG round trips through
    `fit_view`), Adam, and the best iterate kept as uint8; without the early-stop bookkeeping (a
    few scalars per image).
    """
    import optax

    from hasmap_jax import attack as A
    from hasmap_jax.sensitivity import jnd_sensitivity

    maps = jax.jit(jnd_sensitivity)(x8.astype(jnp.float32) / 255.0)
    opt = optax.adam(1e-2)
    alpha, threshold, kappa = jnp.float32(20.0), jnp.float32(50.0), jnp.float32(10.0)

    def step(model, w, opt_state, best, best_dist, x8, maps):
        def one(w, opt_state, best, best_dist, x8, s):
            xf = x8.astype(jnp.float32) / 255.0
            loss = jax.value_and_grad(A.hasmap_loss, has_aux=True)
            (_, (dist, lc, _)), g = loss(w, xf, s, alpha, model, threshold, kappa, view, chain)
            better = (lc <= 0.0) & (dist < best_dist)
            adv8 = jnp.round(A.from_tanh_space(w) * 255.0).astype(jnp.uint8)
            u, opt_state = opt.update(g, opt_state, w)
            return (
                optax.apply_updates(w, u),
                opt_state,
                jnp.where(better, adv8, best),
                jnp.where(better, dist, best_dist),
            )

        return jax.vmap(one)(w, opt_state, best, best_dist, x8, maps)

    w0 = A.to_tanh_space(x8.astype(jnp.float32) / 255.0)
    n = x8.shape[0]
    return step, (model, w0, jax.vmap(opt.init)(w0), x8, jnp.full((n,), jnp.inf), x8, maps)


def bench_parts(x8: np.ndarray, args) -> list[dict]:
    import optax

    from hasmap_jax import attack as A
    from hasmap_jax.transforms.jpeg import diff_jpeg
    from hasmap_jax.transforms.views import fit_view
    from hasmap_jax.weights.loading import load_quality_model

    model = load_quality_model("default")
    view = tuple(model.input_size)
    x8 = jnp.asarray(x8[:1])
    x = x8.astype(jnp.float32) / 255.0
    step, state = attack_step(model, x8, view)
    maps = state[-1]
    opt = optax.adam(1e-2)
    w0 = state[1]
    views = jnp.concatenate([x, x])
    small = fit_view(views, view)
    rng = np.random.RandomState(1)
    ct_full = jnp.asarray(rng.randn(*x.shape).astype(np.float32) * 1e-2)
    ct_small = jnp.asarray(rng.randn(*small.shape).astype(np.float32) * 1e-2)

    def fwd_bwd(f):
        # Both results are returned (the backward of a linear map does not need the forward's), and
        # the cotangent is an argument (XLA would fold a constant one into the program).
        def run(v, ct):
            out, vjp = jax.vjp(f, v)
            return out, vjp(ct)[0]

        return run

    def elementwise(w, opt_state, x8, s, g):
        # What the step does at full resolution besides the views: tanh, 8-bit rounding, the
        # weighted distortion and its gradient, Adam, the uint8 best iterate.
        def loss(w):
            adv = A.quantize(A.from_tanh_space(w))
            return A.weighted_distortion(adv - x8.astype(jnp.float32) / 255.0, s) + jnp.vdot(adv, g)

        grad = jax.vmap(jax.grad(loss))(w)
        u, opt_state = opt.update(grad, opt_state, w)
        adv8 = jnp.round(A.from_tanh_space(w) * 255.0).astype(jnp.uint8)
        return optax.apply_updates(w, u), opt_state, jnp.where(True, adv8, x8)

    parts = [
        ("attack step (batch 1)", step, state),
        ("fit_view fwd, 2 views", lambda v: fit_view(v, view), (views,)),
        ("fit_view fwd+bwd, 2 views", fwd_bwd(lambda v: fit_view(v, view)), (views, ct_small)),
        ("diff_jpeg(90) fwd", lambda v: diff_jpeg(v, 90), (x,)),
        ("diff_jpeg(90) fwd+bwd", fwd_bwd(lambda v: diff_jpeg(v, 90)), (x, ct_full)),
        ("model fwd+bwd, 2 views", lambda m, v, ct: fwd_bwd(m.apply)(v, ct), (model, small, ct_small[:, 0, 0, 0])),
        ("elementwise + Adam", elementwise, (w0, jax.vmap(opt.init)(w0), x8, maps, ct_full)),
    ]
    rows = []
    for name, fn, fargs in parts:
        if args.parts_only and not any(p in name for p in args.parts_only.split(",")):
            continue
        t = time.perf_counter()
        compiled = jax.jit(fn).lower(*fargs).compile()
        compile_s = time.perf_counter() - t
        jax.block_until_ready(compiled(*fargs))
        wall, cpu = timed(lambda c=compiled, a=fargs: c(*a), args.repeats)
        mem = compiled.memory_analysis()
        cost = compiled.cost_analysis()
        cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
        rows.append(
            dict(
                part=name,
                wall_s=wall,
                cpu_s=cpu,
                compile_s=compile_s,
                gb_accessed=cost.get("bytes accessed", float("nan")) / 1e9,
                gflop=cost.get("flops", float("nan")) / 1e9,
                temp_mib=None if mem is None else mem.temp_size_in_bytes / 2**20,
                args_out_mib=None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20,
            )
        )
        r = rows[-1]
        print(
            f"  {name:28s} {wall:7.3f} s  cpu {cpu:7.3f} s  {r['gflop']:8.1f} GFLOP  {r['gb_accessed']:6.2f} GB"
            f"  temp {r['temp_mib']:6.0f} MiB  args+out {r['args_out_mib']:6.0f} MiB  (compile {compile_s:.1f} s)",
            flush=True,
        )
    return rows


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--height", type=int, default=3024)
    p.add_argument("--width", type=int, default=4032)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--steps", default="3,8", help="S1,S2: the two step counts whose time difference gives s/step")
    p.add_argument("--repeats", type=int, default=2, help="warm runs per measurement; the minimum is reported")
    p.add_argument("--photo", default="bridge", help="an example's name (examples/NAME.png) or a path")
    p.add_argument("--loop", default=None, help="attack_batch's loop= (host/device/auto); not passed unless given")
    p.add_argument("--compute-dtype", default=None, help="attack_batch's compute_dtype=; not passed unless given")
    p.add_argument("--parts", action="store_true", help="also time one step and its parts")
    p.add_argument("--parts-only", default=None, help="comma-separated substrings of the parts to time")
    p.add_argument("--no-attack", action="store_true", help="skip the attack_batch timing")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    args.steps = tuple(int(v) for v in args.steps.split(","))
    if len(args.steps) != 2 or not 0 < args.steps[0] < args.steps[1]:
        raise SystemExit("--steps: two increasing step counts, e.g. 3,8")

    machine = describe_machine()
    print(format_machine(machine))
    x = photos(args.batch_size, args.height, args.width, args.photo)
    print(
        f"settings : {args.height}x{args.width} photo(s) '{args.photo}' upscaled, batch {args.batch_size},"
        f" alpha 20, robust_jpeg=90, confidence 10, early_stop off, loop={args.loop or 'default'},"
        f" compute_dtype={args.compute_dtype or 'default'}; command: {' '.join(sys.argv)}",
        flush=True,
    )
    out = dict(machine=machine, args=vars(args))
    if args.parts:
        print("parts    : separately compiled, min of repeats; GB = XLA's bytes accessed, temp = its temporaries")
        out["parts"] = bench_parts(x, args)
    if not args.no_attack:
        r = bench_attack(x, args)
        out["attack"] = r
        s1, s2 = r["steps"]
        print(
            f"attack   : compile {r['compile_s']:.1f} s (steps={s1}; {r['compile_s2']:.1f} s at steps={s2}),"
            f" warm calls {r['call_s'][0]:.2f} s / {r['call_s'][1]:.2f} s"
        )
        print(
            f"           {r['step_s']:.3f} s per step ({r['step_s_per_photo']:.3f} s per photo-step,"
            f" {r['step_cpu_s']:.2f} CPU s), per-call overhead {r['overhead_s']:.2f} s"
        )
        print(
            f"           {r['photos_per_min_100_steps']:.2f} photos/min at 100 steps (overhead + 100 steps,"
            f" compile excluded); peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB"
        )
    out["peak_rss_bytes"] = peak_rss_bytes()
    print(f"peak RSS : {out['peak_rss_bytes'] / 2**30:.2f} GiB (whole process, compile included)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str))


if __name__ == "__main__":
    main()
