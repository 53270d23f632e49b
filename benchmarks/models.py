"""Compile time, speed and memory of the jitted models: KonCept512 and the VGG16 sensitivity network.

For each model and batch size this measures, with random weights:

- the time to lower and compile the jitted forward pass and the jitted gradient with respect to
  the input images (the gradient of the score sum for KonCept512, of the map sum for the
  sensitivity network), i.e. the two programs an attack step is made of;
- the steady time of each (median over `--repeats` calls after `--warmup` calls, each call
  waited on with `block_until_ready`), per image and as images per second;
- memory: XLA's own estimate for each compiled program (`memory_analysis()`: argument + output +
  temporary bytes) and a measured peak, which is the device allocator's `peak_bytes_in_use` on
  GPU/TPU and the process's peak resident set size (`getrusage`) on CPU.

Variables are jit arguments (not constants folded into the program) and are shared by the whole
batch, as in the attack. By default every (model, batch size) row runs in a fresh Python process
so that compile caches and memory peaks do not leak from one row into the next; `--no-isolate`
runs everything in this process instead (peaks then only grow).

Example (the run quoted in docs/results.md, on a 2-core CPU):

    PYTHONPATH=. python benchmarks/models.py --models koncept,vgg --batch-sizes 1,2 --repeats 2
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any

import jax
import jax.numpy as jnp

try:  # `python -m benchmarks.models` or PYTHONPATH=. (namespace package)
    from benchmarks._machine import describe_machine, format_machine, peak_rss_bytes
except ImportError:  # `python benchmarks/models.py` puts benchmarks/ itself on sys.path
    from _machine import describe_machine, format_machine, peak_rss_bytes

MODELS = ("koncept", "vgg")
_RESULT_TAG = "@@HASMAP_BENCH_RESULT@@"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures; the same for every row."""

    models: tuple[str, ...] = MODELS
    batch_sizes: tuple[int, ...] = (1, 2, 4)
    height: int = 384
    width: int = 512
    dtype: str = "float32"
    koncept_variant: str = "koncept512-pytorch"
    vgg_head: str = "fcn"
    repeats: int = 5
    warmup: int = 1
    seed: int = 0
    isolate: bool = True


def build_model(
    name: str, *, dtype: str = "float32", koncept_variant: str = "koncept512-pytorch", vgg_head: str = "fcn"
) -> Any:
    """The Flax module benchmarked as `name` ("koncept" or "vgg"), computing in `dtype`.

    bfloat16 sets the module's computation `dtype` (parameters stay float32, Flax's mixed-precision
    convention); a module without a `dtype` attribute cannot run in bfloat16 and raises.
    """
    if name == "koncept":
        from hasmap_jax.models.koncept import koncept512

        module = koncept512(koncept_variant)
    elif name == "vgg":
        from hasmap_jax.models.vgg16 import SensitivityNet

        module = SensitivityNet(head=vgg_head)
    else:
        raise ValueError(f"unknown model {name!r}; expected one of {MODELS}")
    if dtype != "float32":
        if "dtype" not in {f.name for f in dataclasses.fields(module)}:
            raise ValueError(f"{type(module).__name__} has no `dtype` attribute, so it cannot run in {dtype}")
        module = module.clone(dtype=getattr(jnp, dtype))
    return module


def _compile(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """Lowers and compiles `jax.jit(fn)` for `args`; returns (executable, lower s, compile s)."""
    t0 = time.perf_counter()
    lowered = jax.jit(fn).lower(*args)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    return compiled, t1 - t0, t2 - t1


def _steady_times(compiled: Any, args: tuple, *, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return times


def _xla_memory(compiled: Any) -> dict[str, int | None]:
    """XLA's buffer-assignment estimate for one executable (None where the backend has none)."""
    try:
        m = compiled.memory_analysis()
    except Exception:
        m = None
    if m is None:
        return {"estimate_bytes": None}
    out = {
        k: int(getattr(m, k))
        for k in ("argument_size_in_bytes", "output_size_in_bytes", "temp_size_in_bytes", "alias_size_in_bytes")
    }
    out["estimate_bytes"] = out["argument_size_in_bytes"] + out["output_size_in_bytes"] + out["temp_size_in_bytes"]
    return out


def _flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:
        return None
    if isinstance(cost, (list, tuple)):  # Older jaxlib: one dict per computation.
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


def _measured_peak(device: Any) -> tuple[int | None, str]:
    """(bytes, source): the device allocator's peak on GPU/TPU, the process peak RSS on CPU."""
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:
            stats = {}
        if "peak_bytes_in_use" in stats:
            return int(stats["peak_bytes_in_use"]), "device peak_bytes_in_use"
    return peak_rss_bytes(), "process peak RSS"


def bench_one(name: str, batch: int, s: Settings) -> dict[str, Any]:
    """Measures one (model, batch size) row in this process; returns a JSON-serialisable dict."""
    device = jax.devices()[0]
    module = build_model(name, dtype=s.dtype, koncept_variant=s.koncept_variant, vgg_head=s.vgg_head)
    key_params, key_images = jax.random.split(jax.random.key(s.seed))
    images = jax.random.uniform(key_images, (batch, s.height, s.width, 3), jnp.float32)
    # Parameters do not depend on the batch size; one image initialises them.
    t0 = time.perf_counter()
    variables = jax.block_until_ready(jax.jit(module.init)({"params": key_params}, images[:1]))
    init_s = time.perf_counter() - t0
    n_params = sum(x.size for x in jax.tree.leaves(variables.get("params", variables)))

    def forward(v, x):
        return module.apply(v, x)[0]  # scores (N,) or maps (N, H, W); aux is dropped and DCE'd.

    def output_sum(v, x):
        return forward(v, x).astype(jnp.float32).sum()

    input_grad = jax.grad(output_sum, argnums=1)

    row: dict[str, Any] = {"model": name, "batch": batch, "params": int(n_params), "init_s": init_s}
    for phase, fn in (("fwd", forward), ("grad", input_grad)):
        compiled, t_lower, t_compile = _compile(fn, variables, images)
        out_shape = jax.eval_shape(fn, variables, images).shape
        times = _steady_times(compiled, (variables, images), repeats=s.repeats, warmup=s.warmup)
        median = statistics.median(times)
        peak, peak_source = _measured_peak(device)
        flops = _flops(compiled)
        row[phase] = {
            "output_shape": list(out_shape),
            "lower_s": t_lower,
            "compile_s": t_compile,
            "lower_compile_s": t_lower + t_compile,
            "times_s": times,
            "median_s": median,
            "per_image_s": median / batch,
            "images_per_s": batch / median,
            "gflop_per_image": None if flops is None else flops / batch / 1e9,
            "tflop_per_s": None if flops is None else flops / median / 1e12,
            "xla_memory": _xla_memory(compiled),
            "peak_bytes": peak,
            "peak_source": peak_source,
        }
        del compiled
        gc.collect()
    return row


def _run_worker(payload: dict[str, Any]) -> dict[str, Any]:
    s = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in payload["settings"].items()})
    if payload["task"] == "describe":
        return describe_machine()
    try:
        return bench_one(payload["model"], payload["batch"], s)
    except Exception as e:  # Reported in the table; the other rows still run.
        traceback.print_exc(file=sys.stderr)
        return {"model": payload["model"], "batch": payload["batch"], "error": f"{type(e).__name__}: {e}"}


def _in_subprocess(payload: dict[str, Any]) -> dict[str, Any]:
    """Runs `_run_worker(payload)` in a fresh interpreter (same environment) and returns its result."""
    here = os.path.abspath(__file__)
    # The worker runs this file as a script; put the repository root on its path so that
    # `hasmap_jax` imports however this process found it (`-m`, PYTHONPATH or an install).
    root = os.path.dirname(os.path.dirname(here))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, here, "--worker", json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith(_RESULT_TAG):
            return json.loads(line[len(_RESULT_TAG) :])
    tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
    error = f"worker exit {proc.returncode}: {tail}"
    return {"model": payload.get("model"), "batch": payload.get("batch"), "error": error}


def run(s: Settings) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Measures every (model, batch size) of `s`; returns (machine description, rows)."""
    settings = dataclasses.asdict(s)
    # Under isolation this process never starts a backend (importing jax does not): on GPU it
    # would otherwise take the preallocated share of device memory away from the workers.
    call = _in_subprocess if s.isolate else _run_worker
    machine = call({"task": "describe", "settings": settings})
    if "error" in machine:
        raise SystemExit(f"could not start JAX: {machine['error']}")
    rows = []
    for name in s.models:
        for batch in s.batch_sizes:
            print(f"[bench] {name} batch {batch} ...", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            row = call({"task": "bench", "model": name, "batch": batch, "settings": settings})
            print(
                f"[bench] {name} batch {batch} done in {time.perf_counter() - t0:.1f} s"
                + (f" -- {row['error']}" if "error" in row else ""),
                file=sys.stderr,
                flush=True,
            )
            rows.append(row)
    return machine, rows


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per (model, batch size); the legend says where each memory figure comes from."""
    head = [
        ("model", "<"),
        ("batch", ">"),
        ("compile fwd s", ">"),
        ("compile grad s", ">"),
        ("fwd ms/img", ">"),
        ("fwd img/s", ">"),
        ("grad ms/img", ">"),
        ("grad img/s", ">"),
        ("GFLOP/img f+g", ">"),
        ("xla est. MiB f/g", ">"),
        ("peak MiB f/g", ">"),
    ]
    body = []
    sources = set()
    for r in rows:
        if "error" in r:
            body.append([r["model"], str(r["batch"]), "ERROR: " + r["error"].splitlines()[-1][:120]])
            continue
        f, g = r["fwd"], r["grad"]
        sources.update((f["peak_source"], g["peak_source"]))
        gflop = "-"
        if f["gflop_per_image"] is not None and g["gflop_per_image"] is not None:
            gflop = f"{f['gflop_per_image']:.1f}+{g['gflop_per_image']:.1f}"
        body.append(
            [
                r["model"],
                str(r["batch"]),
                f"{f['lower_compile_s']:.1f}",
                f"{g['lower_compile_s']:.1f}",
                f"{f['per_image_s'] * 1e3:,.1f}",
                f"{f['images_per_s']:,.2f}",
                f"{g['per_image_s'] * 1e3:,.1f}",
                f"{g['images_per_s']:,.2f}",
                gflop,
                f"{_mib(f['xla_memory']['estimate_bytes'])}/{_mib(g['xla_memory']['estimate_bytes'])}",
                f"{_mib(f['peak_bytes'])}/{_mib(g['peak_bytes'])}",
            ]
        )
    widths = [
        max([len(h)] + [len(cells[i]) for cells in body if i < 2 or len(cells) == len(head)])
        for i, (h, _) in enumerate(head)
    ]

    def fmt(cells: list[str]) -> str:
        # An error row has three cells; the third runs on over the measurement columns.
        n = 2 if len(cells) < len(head) else len(head)
        text = "  ".join(format(c, a + str(w)) for c, (_, a), w in zip(cells[:n], head[:n], widths[:n], strict=True))
        return text + ("  " + cells[2] if n == 2 else "")

    lines = [fmt([h for h, _ in head]), "  ".join("-" * w for w in widths)]
    lines += [fmt(cells) for cells in body]
    lines += [
        "",
        "compile = jax.jit(f).lower(variables, images).compile() wall time; fwd = forward pass,",
        "grad = gradient of the output sum w.r.t. the input images; ms/img = median call time / batch;",
        "img/s = batch / median call time; GFLOP/img from XLA's cost_analysis (f = fwd, g = grad program).",
        "xla est. = compiled.memory_analysis() argument + output + temp bytes of the fwd / grad program.",
    ]
    if sources == {"process peak RSS"}:
        lines.append("peak = process peak RSS (getrusage) after the fwd / grad phase; it includes the Python and XLA")
        lines.append("       runtime, parameter init and compiler memory, so it is an upper bound.")
    elif sources:
        lines.append(f"peak = {' / '.join(sorted(sources))} after the fwd / grad phase: the process's running peak,")
        lines.append("       which on GPU may include XLA's autotuning scratch during compilation.")
    return "\n".join(lines)


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(t) for t in text.split(",") if t.strip())


def _csv_models(text: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in MODELS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown model(s) {bad}; choose from {','.join(MODELS)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=_csv_models, default=MODELS, help="comma-separated: koncept,vgg (default both)")
    p.add_argument("--batch-sizes", type=_csv_ints, default=(1, 2, 4), help="comma-separated (default 1,2,4)")
    p.add_argument("--height", type=int, default=384, help="image height (default 384)")
    p.add_argument("--width", type=int, default=512, help="image width (default 512)")
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="computation dtype of the models (parameters stay float32)",
    )
    p.add_argument(
        "--koncept-variant",
        choices=("koncept512-pytorch", "koncept512-keras"),
        default="koncept512-pytorch",
        help="KonCept512 layout (default koncept512-pytorch, the MediaEval 2020 target; its head needs"
        " inputs of about 299..555 px per side, the keras one takes any size)",
    )
    p.add_argument("--vgg-head", choices=("fcn", "conv3x3"), default="fcn", help="SensitivityNet head (default fcn)")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per program; the median is reported")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--no-isolate",
        dest="isolate",
        action="store_false",
        help="run every row in this process instead of a fresh one per row",
    )
    p.add_argument("--json", metavar="PATH", help="also write machine, settings and rows as JSON")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0 or not args.batch_sizes or min(args.batch_sizes) < 1:
        p.error("need --repeats >= 1, --warmup >= 0 and positive batch sizes")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        print(_RESULT_TAG + json.dumps(_run_worker(json.loads(args.worker))), flush=True)
        return
    s = Settings(
        models=args.models,
        batch_sizes=args.batch_sizes,
        height=args.height,
        width=args.width,
        dtype=args.dtype,
        koncept_variant=args.koncept_variant,
        vgg_head=args.vgg_head,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        isolate=args.isolate,
    )
    machine, rows = run(s)
    print(format_machine(machine))
    print(
        f"settings : models={','.join(s.models)} batch sizes={','.join(map(str, s.batch_sizes))}"
        f" input={s.height}x{s.width} (HxW) dtype={s.dtype}"
        f" koncept={s.koncept_variant} vgg head={s.vgg_head} repeats={s.repeats}"
        f" warmup={s.warmup} seed={s.seed} isolate={s.isolate}; random weights"
    )
    described = set()
    for r in rows:
        if "error" not in r and r["model"] not in described:
            described.add(r["model"])
            print(
                f"model    : {r['model']}: {r['params']:,} parameters; at batch {r['batch']} the forward"
                f" output is {tuple(r['fwd']['output_shape'])}, the gradient {tuple(r['grad']['output_shape'])}"
            )
    print()
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "settings": dataclasses.asdict(s), "rows": rows}, f, indent=2)
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
