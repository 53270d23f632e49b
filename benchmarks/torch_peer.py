"""PyTorch peer: `attack_batch` against the same attack written in eager PyTorch, on the same weights.

For each model and batch size, at the models' 384x512 input on the shipped example photos (cycled),
with a uniform map (plain C&W L2), alpha 10, Adam at 1e-2, early stop off, this times per
image-step, with the repetitions interleaved (a, b, c, d, a, b, c, d, ...) so that the machine's
load falls on all alike, and reports medians:

  (a) torch eager: the attack as a PyTorch user writes it: w = atanh(2x - 1) as the parameter; per
      step adv = (tanh(w) + 1) / 2, scores = model(adv), loss = alpha * sum((adv - x)^2)
      + sum(relu(2 * (score - threshold) + kappa)), backward, Adam step. Model in eval mode with
      its parameters frozen (only the input gradient is computed, as in JAX).
  (b) `hasmap_jax.attack_batch(photos, alpha, model=m, sensitivity="uniform", steps=S,
      early_stop=False[, loop=L])`, warm (after a compiling call). A call also scores the photos
      before and after and measures PSNR / SSIM, a fixed cost per call: the step time is taken
      from calls of S and 2S steps, (t(2S) - t(S)) / S; the whole call's t(2S) / 2S is shown too.
      `loop=` is passed only if `attack_batch` has that argument (--loops).
  (c) the model's own jitted forward + input gradient in JAX (value_and_grad of the summed scores);
  (d) the same in eager PyTorch.

Models: "default" (the shipped small model, Keras layout; run in torch by `_torch_koncept`, a
compact InceptionResNetV2 that loads the Flax variables) and "koncept512" (full-size KonCept512
in the organisers' KonCept512.pth layout, built on timm's InceptionResNetV2 with random weights and
realistic BatchNorm statistics as in tests/torch_reference.py, saved to a temporary .pth and read by
`load_quality_model`). Before timing, the torch and JAX scores must agree within 1e-4 (relative);
the script stops otherwise.

--xla-flags-sweep re-runs the JAX timings (b, c) in subprocesses, one per XLA:CPU flag set, after
checking that the installed XLA accepts each flag (an unknown flag aborts XLA).

    PYTHONPATH=. python benchmarks/torch_peer.py --models default,koncept512 --batch-sizes 2 --steps 3
    PYTHONPATH=. python benchmarks/torch_peer.py --models default --xla-flags-sweep
    PYTHONPATH=. python benchmarks/torch_peer.py --models default \\
        --xla-flags-sweep="--xla_cpu_use_onednn=true,--xla_cpu_multi_thread_eigen=false"
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _machine import describe_machine, format_machine  # noqa: E402

PARITY_RTOL = 1e-4
INPUT_SIZE = (384, 512)

# XLA:CPU flags tried by --xla-flags-sweep by default (one entry per run; flags of one entry are
# separated by spaces). All are known to jaxlib 0.10.2's XLA; the first is accepted but ignored
# there (XLA warns that it is no longer supported), which the sweep reports.
DEFAULT_SWEEP = (
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_enable_fast_math=true",
    "--xla_cpu_use_fusion_emitters=false",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
)


# ------------------------------------------------------------------------------------ inputs


def photos(n: int, size: tuple[int, int] = INPUT_SIZE) -> tuple[np.ndarray, list[str]]:
    """n example photos (cycled) as uint8 (n, H, W, 3) at `size`, resized (bicubic) only if needed."""
    from PIL import Image

    files = sorted((ROOT / "examples").glob("*.png"))
    if not files:
        raise SystemExit(f"no example photos in {ROOT / 'examples'}")
    out, names = [], []
    for i in range(n):
        f = files[i % len(files)]
        with Image.open(f) as im:
            im = im.convert("RGB")
            if im.size != size[::-1]:
                im = im.resize(size[::-1], Image.BICUBIC)
            out.append(np.asarray(im))
        names.append(f.stem)
    return np.stack(out), names


# ------------------------------------------------------------------------------------ models


def build_koncept512_pth(path: Path, *, seed: int = 0, mean: float = 75.0, spread: float = 10.0):
    """Full-size KonCept512 (timm backbone, organisers' head) with random weights, saved as a state
    dict in the KonCept512.pth layout. Returns the torch model (eval mode).

    Built as the parity tests build it (tests/torch_reference.py: random BatchNorm affine terms,
    statistics measured on a batch, then perturbed), except that the statistics are then measured
    again on the example photos at 384x512: measured on noise at another size they leave the head
    far off its range on photos (scores of +-1e4 whose differences between photos are a small
    fraction, where float32 rounding alone exceeds the parity tolerance). Last, the output layer
    is rescaled so that the photos score `mean` +- about `spread`: photos rated high, as with
    the real model, so the C&W term is active as in a real attack.
    """
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from torch_reference import koncept512_torch

    model = koncept512_torch(seed=seed)
    x = to_torch(photos(6)[0])
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative average: the statistics of this one batch
        model.train()
        model(x)
        model.eval()
        out = model.fc[12]
        u = model(x) - out.bias
        k = spread / float(u.std())
        out.weight.mul_(k)
        out.bias.fill_(mean - k * float(u.mean()))
    torch.save(model.state_dict(), path)
    return model


_CHANNELS_LAST = False  # set by --torch-channels-last


def to_torch(x_uint8: np.ndarray):
    import torch

    x = torch.from_numpy(x_uint8.astype(np.float32) / 255.0).permute(0, 3, 1, 2)
    return x.contiguous(memory_format=torch.channels_last if _CHANNELS_LAST else torch.contiguous_format)


def load_pair(name: str, *, with_torch: bool, pth: Path | None, workdir: Path):
    """(JAX QualityModel, torch module or None, path of the .pth or None) for a model name."""
    from hasmap_jax import load_quality_model

    if name == "default":
        jm = load_quality_model("default")
        tm = None
        if with_torch:
            from _torch_koncept import from_flax

            tm = from_flax(jm.module, jm.variables)
        return jm, tm, None
    if name == "koncept512":
        tm = None
        if pth is None:
            pth = workdir / "KonCept512.pth"
            tm = build_koncept512_pth(pth)
        elif with_torch:
            raise SystemExit("--koncept-pth is for --jax-only runs")
        return load_quality_model(pth), tm, pth
    raise SystemExit(f"unknown model {name!r}; expected default or koncept512")


def check_parity(name: str, jm, tm, n: int) -> dict:
    import torch

    x, names = photos(n)
    sj = np.asarray(jm.score(x, view_size=None), np.float64)
    with torch.no_grad():
        st = tm(to_torch(x)).numpy().astype(np.float64)
    rel = float(np.max(np.abs(sj - st) / np.maximum(np.abs(sj), 1e-12)))
    print(
        f"parity   : {name}: torch vs JAX scores on {n} photos ({', '.join(names)}): max relative error"
        f" {rel:.2e} (limit {PARITY_RTOL:g}); JAX {np.round(sj, 3).tolist()}",
        flush=True,
    )
    if not rel < PARITY_RTOL:
        raise SystemExit(
            f"parity check failed for {name}: torch {st.tolist()} vs JAX {sj.tolist()} (max relative error "
            f"{rel:.3e} >= {PARITY_RTOL:g}); the torch peer would not run the same model: not timing it."
        )
    return dict(photos=names, jax=sj.tolist(), torch=st.tolist(), max_rel_error=rel)


# ------------------------------------------------------------------------------------ timed kernels


def torch_attack(tm, x, *, steps: int, alpha: float, lr: float, threshold: float, kappa: float):
    """The C&W-L2 attack as written in eager PyTorch: tanh box, Adam on w. Returns (adv, scores).

    The scores are those of the last iterate evaluated (before its Adam step)."""
    import torch
    import torch.nn.functional as F

    w = torch.atanh((2.0 * x - 1.0).clamp(-1 + 1e-6, 1 - 1e-6)).requires_grad_(True)
    opt = torch.optim.Adam([w], lr=lr)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        adv = (torch.tanh(w) + 1.0) / 2.0
        scores = tm(adv)
        loss = alpha * (adv - x).square().sum() + F.relu(2.0 * (scores - threshold) + kappa).sum()
        loss.backward()
        opt.step()
    return adv.detach(), scores.detach()


def torch_fwd_grad(tm, x):
    import torch

    x = x.detach().requires_grad_(True)
    s = tm(x).sum()
    (g,) = torch.autograd.grad(s, x)
    return s.detach(), g


def _jax_fwd_grad():
    return jax.jit(jax.value_and_grad(lambda x, m: m.apply(x).sum()))


def loop_values(spec: str | None) -> list[str | None]:
    """`loop=` values to time: None means "call without the argument"."""
    from hasmap_jax import attack_batch

    has_loop = "loop" in inspect.signature(attack_batch).parameters
    if spec is None:
        return ["host", "device"] if has_loop else [None]
    values = [v.strip() for v in spec.split(",") if v.strip()]
    if not has_loop:
        if any(v != "default" for v in values):
            print(f"note     : attack_batch has no `loop` argument here; --loops {spec} ignored", flush=True)
        return [None]
    return [None if v == "default" else v for v in values]


def bench(name: str, jm, tm, batch: int, loops: list[str | None], args) -> list[dict]:
    """Interleaved timings (a, b per loop, c, d) x repeats for one model and batch; one row per loop."""
    from hasmap_jax import attack_batch

    x8, names = photos(batch)
    xj = jnp.asarray(x8.astype(np.float32) / 255.0)
    S = args.steps
    common = dict(model=jm, sensitivity="uniform", early_stop=False, learning_rate=args.lr, threshold=args.threshold)

    def attack(loop, steps):
        extra = {} if loop is None else {"loop": loop}
        return attack_batch(x8, args.alpha, steps=steps, **common, **extra)

    vg = _jax_fwd_grad()
    kernels = {}  # name -> callable returning something to block on / keep
    if tm is not None:
        xt = to_torch(x8)
        peer = dict(alpha=args.alpha, lr=args.lr, threshold=args.threshold, kappa=0.0)
        kernels["torch_step"] = lambda: torch_attack(tm, xt, steps=S, **peer)
    for loop in loops:
        kernels[f"attack_S[{loop}]"] = lambda loop=loop: attack(loop, S)
        kernels[f"attack_2S[{loop}]"] = lambda loop=loop: attack(loop, 2 * S)
    kernels["jax_fwd_grad"] = lambda: jax.block_until_ready(vg(xj, jm))
    if tm is not None:
        kernels["torch_fwd_grad"] = lambda: torch_fwd_grad(tm, xt)

    # Warm-up: compiles the JAX programs (S and 2S are distinct programs when steps are static)
    # and lets torch / oneDNN set up its primitives. Warm-up times go to the JSON only.
    warm = {}
    results = {}
    for k, fn in kernels.items():
        t = time.perf_counter()
        results[k] = fn()
        warm[k] = time.perf_counter() - t
    times = {k: [] for k in kernels}
    loads = []  # 1-minute load average after each repetition: other work on the host shows here
    for r in range(args.repeats):
        for k, fn in kernels.items():
            t = time.perf_counter()
            results[k] = fn()
            times[k].append(time.perf_counter() - t)
        loads.append(os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
        print(f"  {name} batch {batch}: repetition {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)

    med = {k: statistics.median(v) for k, v in times.items()}
    per = lambda t, steps: t / (steps * batch)  # noqa: E731  (seconds per image-step)
    jax_fg = per(med["jax_fwd_grad"], 1)
    torch_fg = per(med["torch_fwd_grad"], 1) if tm is not None else None
    torch_step = per(med["torch_step"], S) if tm is not None else None
    torch_scores = None
    if tm is not None:
        torch_scores = results["torch_step"][1].numpy().tolist()
    rows = []
    for loop in loops:
        tS, t2S = times[f"attack_S[{loop}]"], times[f"attack_2S[{loop}]"]
        # The two calls of one repetition run back to back: their difference is S steps.
        step = per(statistics.median([b - a for a, b in zip(tS, t2S, strict=True)]), S)
        call = per(med[f"attack_2S[{loop}]"], 2 * S)
        ok = step > 0  # else the machine's noise exceeded S steps: no per-step figure from the difference
        res = results[f"attack_2S[{loop}]"]
        rows.append(
            dict(
                model=name,
                batch=batch,
                photos=names,
                steps=S,
                loop="(default)" if loop is None else loop,
                torch_step_s=torch_step,
                attack_step_s=step if ok else None,
                attack_step_difference_s=step,
                attack_call_s=call,
                jax_fwd_grad_s=jax_fg,
                torch_fwd_grad_s=torch_fg,
                torch_img_steps_per_s=None if torch_step is None else 1.0 / torch_step,
                attack_img_steps_per_s=1.0 / step if ok else None,
                attack_call_img_steps_per_s=1.0 / call,
                ratio_torch_over_attack=None if torch_step is None or not ok else torch_step / step,
                ratio_torch_over_attack_call=None if torch_step is None else torch_step / call,
                attack_overhead=step / jax_fg - 1.0 if ok else None,
                torch_overhead=None if torch_step is None else torch_step / torch_fg - 1.0,
                fixed_call_s=med[f"attack_S[{loop}]"] - S * batch * step,
                warmup_s={k: v for k, v in warm.items() if k.endswith(f"[{loop}]")}
                | {k: warm[k] for k in ("jax_fwd_grad", "torch_step", "torch_fwd_grad") if k in warm},
                times_s={k: v for k, v in times.items() if "attack" not in k or k.endswith(f"[{loop}]")},
                load_1min_per_repeat=loads,
                score_before=np.asarray(res.score_before).tolist(),
                score_after_attack_2S=np.asarray(res.score_after).tolist(),
                score_torch_last_S=torch_scores,
            )
        )
    return rows


# ------------------------------------------------------------------------------------ report


def _g(v, scale=1.0, fmt="{:.4g}"):
    return "n/a" if v is None else fmt.format(v * scale)


def print_table(rows: list[dict]) -> None:
    head = (
        "model",
        "batch",
        "loop",
        "torch s/img-step",
        "attack s/img-step",
        "attack call s/img-step",
        "JAX f+g s/img",
        "torch f+g s/img",
        "torch img-steps/s",
        "attack img-steps/s",
        "torch/attack",
        "attack overhead",
        "torch overhead",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        cells = (
            r["model"],
            str(r["batch"]),
            r["loop"],
            _g(r["torch_step_s"]),
            _g(r["attack_step_s"]),
            _g(r["attack_call_s"]),
            _g(r["jax_fwd_grad_s"]),
            _g(r["torch_fwd_grad_s"]),
            _g(r["torch_img_steps_per_s"]),
            _g(r["attack_img_steps_per_s"]),
            _g(r["ratio_torch_over_attack"], fmt="{:.2f}"),
            _g(r["attack_overhead"], 100, "{:+.1f} %"),
            _g(r["torch_overhead"], 100, "{:+.1f} %"),
        )
        print("| " + " | ".join(cells) + " |")
    print(
        "\nattack s/img-step = (t(2S steps) - t(S steps)) / (S x batch) of warm attack_batch calls (the fixed"
        "\n  per-call scoring and PSNR/SSIM cancel); attack call s/img-step = t(2S) / (2S x batch), all included;"
        "\ntorch/attack = torch s/img-step / attack s/img-step (> 1: attack_batch is faster than the torch peer);"
        "\nattack overhead = attack s/img-step / JAX f+g - 1; torch overhead = torch step / torch f+g - 1;"
        "\nf+g = the model's forward + input gradient of the summed scores, per image; medians over repetitions."
    )
    loads = [v for r in rows for v in r["load_1min_per_repeat"] if v]
    if loads:
        print(
            f"load     : 1-minute load average after the repetitions {min(loads):.2f}-{max(loads):.2f}"
            f" on {os.cpu_count()} cores (eager torch with one OpenMP thread per core suffers most from"
            " other work on the host)"
        )
    for r in rows:
        if r["attack_step_s"] is None:
            print(
                f"warning  : {r['model']} batch {r['batch']} loop {r['loop']}: t(2S) - t(S) was not positive"
                f" ({r['attack_step_difference_s']:.3g} s/img-step): the machine's noise exceeded {r['steps']} steps;"
                " use more --steps / --repeats (the whole-call figure is still shown)"
            )
    for r in rows:
        before = np.round(r["score_before"], 2).tolist()
        print(
            f"scores   : {r['model']} batch {r['batch']} loop {r['loop']}: before {before},"
            f" attack_batch after {2 * r['steps']} steps {np.round(r['score_after_attack_2S'], 2).tolist()}"
            + (
                ""
                if r["score_torch_last_S"] is None
                else f", torch at step {r['steps']} {np.round(r['score_torch_last_S'], 2).tolist()}"
            )
        )


# ------------------------------------------------------------------------------------ XLA flags


def flag_accepted(flags: str, env_base: dict) -> tuple[str, str]:
    """("accepted" | "ignored" | "rejected", detail) for XLA_FLAGS entry `flags`, from a trivial jit."""
    env = dict(env_base, XLA_FLAGS=(env_base.get("XLA_FLAGS", "") + " " + flags).strip())
    probe = "import jax; print(float(jax.jit(lambda x: x + 1)(1.0)))"
    try:
        p = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        return "rejected", "probe timed out"
    # XLA's log lines start with a glog header ("F1201 08:18:43.282148 8714 file.cc:234] "): keep the message.
    err = [line.split("] ", 1)[-1] for line in p.stderr.strip().splitlines()]
    if p.returncode != 0 or p.stdout.strip() != "2.0":
        return "rejected", (err[-1] if err else f"rc {p.returncode}")[-200:]
    notes = [line for line in err if "no longer supported" in line or "deprecated" in line.lower()]
    return ("ignored", notes[-1][-200:]) if notes else ("accepted", "")


def xla_flags_sweep(entries: list[str], args, pth: Path | None) -> list[dict]:
    """Runs this script with --jax-only under each XLA_FLAGS entry (and once without: the baseline)."""
    base_env = dict(os.environ)
    out = []
    for flags in ["", *entries]:
        label = flags or "(none)"
        status, detail = ("accepted", "") if not flags else flag_accepted(flags, base_env)
        rec = dict(flags=label, status=status, detail=detail, rows=[])
        print(f"sweep    : {label}: {status}{' (' + detail + ')' if detail else ''}", flush=True)
        if status != "rejected":
            with tempfile.TemporaryDirectory() as d:
                js = Path(d) / "out.json"
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--jax-only",
                    "--models",
                    args.models,
                    "--batch-sizes",
                    args.batch_sizes,
                    "--steps",
                    str(args.steps),
                    "--repeats",
                    str(args.repeats),
                    "--alpha",
                    str(args.alpha),
                    "--lr",
                    str(args.lr),
                    "--json",
                    str(js),
                ]
                if args.loops is not None:
                    cmd += ["--loops", args.loops]
                if pth is not None:
                    cmd += ["--koncept-pth", str(pth)]
                env = dict(base_env, XLA_FLAGS=(base_env.get("XLA_FLAGS", "") + " " + flags).strip())
                t = time.perf_counter()
                p = subprocess.run(cmd, env=env, capture_output=True, text=True)
                rec["wall_s"] = time.perf_counter() - t
                if p.returncode == 0 and js.exists():
                    rec["rows"] = json.loads(js.read_text())["rows"]
                else:
                    rec["status"] = "failed"
                    tail = (p.stderr or p.stdout).strip().splitlines()
                    rec["detail"] = f"rc {p.returncode}: " + (tail[-1] if tail else "")[-300:]
                    print(f"sweep    : {label}: run failed, {rec['detail']}", flush=True)
        out.append(rec)
    return out


def print_sweep(sweep: list[dict]) -> None:
    print("\nXLA:CPU flags (JAX timings only, each in its own process; s per image-step, medians):")
    head = (
        "XLA_FLAGS",
        "status",
        "model",
        "batch",
        "loop",
        "attack s/img-step",
        "attack call s/img-step",
        "JAX f+g s/img",
        "vs baseline",
    )
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = {(r["model"], r["batch"], r["loop"]): r for r in (sweep[0]["rows"] if sweep else [])}
    for rec in sweep:
        if not rec["rows"]:
            print(f"| `{rec['flags']}` | {rec['status']}: {rec['detail']} |" + " |" * (len(head) - 2))
        for r in rec["rows"]:
            b = base.get((r["model"], r["batch"], r["loop"]))
            rel = "n/a"
            if b and r["attack_step_s"] and b["attack_step_s"]:
                rel = f"{r['attack_step_s'] / b['attack_step_s']:.2f}x"
            rel_fg = "n/a" if not b else f"{r['jax_fwd_grad_s'] / b['jax_fwd_grad_s']:.2f}x"
            print(
                f"| `{rec['flags']}` | {rec['status']} | {r['model']} | {r['batch']} | {r['loop']} |"
                f" {_g(r['attack_step_s'])} | {_g(r['attack_call_s'])} | {_g(r['jax_fwd_grad_s'])} |"
                f" {rel} attack, {rel_fg} f+g |"
            )
    print("vs baseline = time / that of the run without flags (< 1: faster), attack step and JAX f+g.")


# ------------------------------------------------------------------------------------ main


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default="default,koncept512", help="comma-separated: default,koncept512")
    p.add_argument("--batch-sizes", default="2", help="comma-separated batch sizes (default 2)")
    p.add_argument("--steps", type=int, default=3, help="S: attack steps per call (attack_batch is timed at S and 2S)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; medians are reported")
    p.add_argument("--loops", default=None, help="attack_batch loop= values, e.g. host,device ('default': omit the"
                   " argument); default: host,device if attack_batch takes `loop`, else omitted")  # fmt: skip
    p.add_argument("--alpha", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate (both attacks)")
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--torch-threads", type=int, default=None, help="default: the cores this process may use")
    p.add_argument(
        "--torch-channels-last",
        action="store_true",
        help="run the torch peer in channels_last memory format (a common CPU tuning; default: NCHW as written)",
    )
    p.add_argument("--json", help="also write the results here")
    p.add_argument(
        "--xla-flags-sweep",
        nargs="?",
        const=",".join(DEFAULT_SWEEP),
        default=None,
        help="also time the JAX side under each XLA_FLAGS entry (comma-separated; flags within one entry\n"
        "separated by spaces; write --xla-flags-sweep=--xla_...=...). Without a value: " + "; ".join(DEFAULT_SWEEP),
    )
    p.add_argument("--jax-only", action="store_true", help=argparse.SUPPRESS)  # sweep children
    p.add_argument("--koncept-pth", type=Path, default=None, help=argparse.SUPPRESS)  # sweep children
    args = p.parse_args(argv)
    if args.steps < 1 or args.repeats < 1:
        p.error("--steps and --repeats must be at least 1")

    machine = describe_machine()
    torch_info = None
    if not args.jax_only:
        import torch

        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:
            cores = os.cpu_count() or 1
        torch.set_num_threads(args.torch_threads or cores)
        global _CHANNELS_LAST
        _CHANNELS_LAST = args.torch_channels_last
        torch_info = dict(
            torch=torch.__version__,
            threads=torch.get_num_threads(),
            interop_threads=torch.get_num_interop_threads(),
            mkldnn=bool(torch.backends.mkldnn.is_available()),
        )
    loops = loop_values(args.loops)
    if not args.jax_only:
        print(format_machine(machine))
        print(
            f"torch    : {torch_info['torch']}, {torch_info['threads']} intra-op threads,"
            f" {torch_info['interop_threads']} inter-op, oneDNN {'on' if torch_info['mkldnn'] else 'off'};"
            f" eager, {'channels_last' if args.torch_channels_last else 'NCHW'} float32, model.eval(),"
            " parameters frozen (input gradient only)"
        )
        print(
            f"settings : input {INPUT_SIZE[0]}x{INPUT_SIZE[1]}, example photos; sensitivity uniform (plain C&W L2);"
            f" alpha {args.alpha}, Adam lr {args.lr}, threshold {args.threshold}, kappa 0, early stop off;"
            f" S={args.steps} (attack_batch at S and 2S); repeats {args.repeats}, interleaved;"
            f" loops {[v or '(default)' for v in loops]}"
        )
        print(f"command  : {' '.join([Path(sys.executable).name, *sys.argv])}", flush=True)

    rows, parity = [], {}
    with tempfile.TemporaryDirectory(prefix="torch_peer_") as workdir:
        pth = args.koncept_pth
        for name in args.models.split(","):
            jm, tm, path = load_pair(name, with_torch=not args.jax_only, pth=args.koncept_pth, workdir=Path(workdir))
            pth = path or pth
            if tm is not None:
                tm.eval()
                if args.torch_channels_last:
                    tm.to(memory_format=torch.channels_last)
                for q in tm.parameters():
                    q.requires_grad_(False)
                parity[name] = check_parity(name, jm, tm, 6 if name == "default" else 2)
            n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(jm.variables))
            if not args.jax_only:
                print(f"model    : {name}: {n_params:,} parameters ({jm.card.get('variant')})", flush=True)
            for b in (int(v) for v in args.batch_sizes.split(",")):
                rows += bench(name, jm, tm, b, loops, args)
            del tm
        if args.jax_only:
            Path(args.json).write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
            return
        print()
        print_table(rows)
        sweep = None
        if args.xla_flags_sweep:
            entries = [e.strip() for e in args.xla_flags_sweep.split(",") if e.strip()]
            sweep = xla_flags_sweep(entries, args, pth if "koncept512" in args.models.split(",") else None)
            print_sweep(sweep)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                dict(
                    machine=machine,
                    torch=torch_info,
                    settings=vars(args) | {"koncept_pth": None},
                    command=sys.argv,
                    parity=parity,
                    rows=rows,
                    xla_flags_sweep=sweep,
                ),
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()
