"""How a robust attack converges: each drawable chain's score, as last drawn, every few steps.

Runs the attack's own compiled pieces (`hasmap_jax.attack.loop.begin` / `batch_step`) with a
profile that draws its views (default "web"), one search step at a fixed alpha, no early stop, and
prints per photo the score of every chain of the profile the last time it was drawn (inf: not drawn
yet in this search step), the PSNR of the current iterate, and the least weighted distortion that
succeeded so far (with its PSNR). A photo counts
as protected only when every chain is at or under threshold - kappa/2 at once, so the slowest
chain decides how many steps a preset needs.

    python benchmarks/eot_trace.py --photos 2,3 --alpha 2 --steps 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402
from alpha_sweep import load_photos  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photos", default="0,1,2,3,4,5", help="indices into the sorted example photos")
    p.add_argument("--glob", default=str(ROOT / "examples" / "*.png"))
    p.add_argument("--profile", default="web")
    p.add_argument("--alpha", type=float, default=2.0)
    p.add_argument("--confidence", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--every", type=int, default=20)
    p.add_argument("--threshold", type=float, default=50.0)
    p.add_argument("--learning-rate", type=float, default=1e-2)
    p.add_argument(
        "--optimizer",
        default="adam",
        choices=("adam", "l2sgd"),
        help="l2sgd: RMS-normalised gradient + SGD momentum",
    )
    p.add_argument("--grad-blur", type=float, default=0.0, help="smooth the gradient: Gaussian sigma (px)")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import optax

    from hasmap_jax.attack.batch import prepare_model
    from hasmap_jax.attack.loop import Plan, batch_step, begin
    from hasmap_jax.attack.loss import from_tanh_space
    from hasmap_jax.runtime.parallel import data_mesh
    from hasmap_jax.sensitivity.maps import sensitivity_maps
    from hasmap_jax.transforms.chain import chain_name
    from hasmap_jax.transforms.profiles import resolve_profile
    from hasmap_jax.weights.loading import load_quality_model

    model = load_quality_model("default")
    names, x = load_photos(args.glob, tuple(model.input_size))
    chosen = [int(i) for i in args.photos.split(",")]
    x8 = jnp.asarray(x[chosen])
    eot = resolve_profile(args.profile).eot
    if eot is None or not eot.groups:
        raise SystemExit(f"{args.profile}: draws no views; nothing to trace")
    chains = [chain_name(c) for g in eot.groups for c in g]
    print(format_machine(describe_machine()))
    print(
        f"settings : profile={args.profile} alpha={args.alpha} kappa={args.confidence} steps={args.steps} "
        f"learning_rate={args.learning_rate} grad_blur={args.grad_blur} optimizer={args.optimizer}"
    )
    print(f"command  : {' '.join(sys.argv)}")

    attacker = prepare_model(model, mesh=data_mesh(), fold_batchnorm=True, compute_dtype=jnp.float32)
    maps = sensitivity_maps("default", x8)
    parts = [smooth_gradients(args.grad_blur)] if args.grad_blur > 0 else []
    if args.optimizer == "l2sgd":
        parts += [normalize_rms(), optax.sgd(args.learning_rate, momentum=0.9)]
    else:
        parts += [optax.adam(args.learning_rate)]
    optimizer = optax.chain(*parts)
    plan = Plan(
        steps=0, search_steps=1, optimizer=optimizer, check_every=args.steps + 1, view_size=None, jpeg_chain=(), eot=eot
    )
    scalars = [jnp.float32(v) for v in (args.threshold, args.confidence, args.learning_rate)]
    alpha = jnp.full((len(chosen),), args.alpha, jnp.float32)
    state, search = jax.jit(begin, static_argnames="plan")(attacker, x8, maps, alpha, *scalars, plan=plan)
    step = jax.jit(batch_step, static_argnames="plan", donate_argnames="state")
    for i in range(args.steps):
        state = step(attacker, state, jnp.int32(i), x8, maps, search.alpha_now, *scalars, plan=plan)
        if (i + 1) % args.every == 0 or i + 1 == args.steps:
            drawn, best = np.asarray(state.drawn), np.asarray(state.best_dist)
            now = np.round(np.asarray(from_tanh_space(state.w)) * 255.0)
            mse = np.mean((now - np.asarray(x8, np.float64)) ** 2, axis=(1, 2, 3))
            best_mse = np.mean((np.asarray(state.best, np.float64) - np.asarray(x8, np.float64)) ** 2, axis=(1, 2, 3))
            print(f"step {i + 1}", flush=True)
            for k, j in enumerate(chosen):
                worst = chains[int(np.argmax(drawn[k]))]
                psnr = 10 * np.log10(255.0**2 / mse[k]) if mse[k] > 0 else np.inf
                found = np.isfinite(best[k]) and best_mse[k] > 0
                best_psnr = 10 * np.log10(255.0**2 / best_mse[k]) if found else np.nan
                print(f"  {names[j]}: PSNR now {psnr:.1f} dB, best D {best[k]:.3g} ({best_psnr:.1f} dB), worst {worst}")
                print("    " + " ".join(f"{c}={v:.1f}" for c, v in zip(chains, drawn[k], strict=True)), flush=True)


# Optimiser variants tried here (not in the library: neither beat Adam at equal PSNR, see
# benchmarks/results/cpu_eot_trace_web_*.txt).


def smooth_gradients(sigma: float):
    """An optax transformation convolving each (H, W, C) update with a Gaussian of `sigma` px
    (the translation-invariant attack of Dong et al., CVPR 2019): low-frequency perturbations."""
    import jax
    import jax.numpy as jnp
    import optax

    x = np.arange(-int(np.ceil(3 * sigma)), int(np.ceil(3 * sigma)) + 1)
    taps = np.exp(-0.5 * (x / sigma) ** 2)
    taps = taps / taps.sum()
    r = len(taps) // 2

    def smooth(g):
        for axis in (-3, -2):
            n = g.shape[axis]
            pad = [(0, 0)] * g.ndim
            pad[axis] = (r, r)
            padded = jnp.pad(g, pad, mode="reflect")
            g = sum(float(t) * jax.lax.slice_in_dim(padded, k, k + n, axis=axis % g.ndim) for k, t in enumerate(taps))
        return g

    return optax.GradientTransformation(
        lambda params: optax.EmptyState(), lambda u, state, params=None: (jax.tree.map(smooth, u), state)
    )


def normalize_rms():
    """An optax transformation scaling each image's update to RMS 1 (steepest descent in L2)."""
    import jax
    import jax.numpy as jnp
    import optax

    def norm(g):
        return g / (jnp.sqrt(jnp.mean(jnp.square(g))) + 1e-12)

    return optax.GradientTransformation(
        lambda params: optax.EmptyState(), lambda u, state, params=None: (jax.tree.map(norm, u), state)
    )


if __name__ == "__main__":
    main()
