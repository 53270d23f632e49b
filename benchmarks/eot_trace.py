"""How a robust attack converges: each drawable chain's score, as last drawn, every few steps.

Runs the attack's own compiled pieces (`hasmap_jax.attack.loop.begin` / `batch_step`) with a
profile that draws its views (default "web"), one search step at a fixed alpha, no early stop, and
prints per photo the score of every chain of the profile the last time it was drawn (inf: not drawn
yet in this search step), with the least weighted distortion that succeeded so far. A photo counts
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
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp

    from hasmap_jax.attack.batch import prepare_model
    from hasmap_jax.attack.loop import Plan, batch_step, begin
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
    print(f"settings : profile={args.profile} alpha={args.alpha} kappa={args.confidence} steps={args.steps}")
    print(f"command  : {' '.join(sys.argv)}")

    attacker = prepare_model(model, mesh=data_mesh(), fold_batchnorm=True, compute_dtype=jnp.float32)
    maps = sensitivity_maps("default", x8)
    plan = Plan(
        steps=0, search_steps=1, optimizer=None, check_every=args.steps + 1, view_size=None, jpeg_chain=(), eot=eot
    )
    scalars = [jnp.float32(v) for v in (args.threshold, args.confidence, 1e-2)]
    alpha = jnp.full((len(chosen),), args.alpha, jnp.float32)
    state, search = jax.jit(begin, static_argnames="plan")(attacker, x8, maps, alpha, *scalars, plan=plan)
    step = jax.jit(batch_step, static_argnames="plan", donate_argnames="state")
    for i in range(args.steps):
        state = step(attacker, state, jnp.int32(i), x8, maps, search.alpha_now, *scalars, plan=plan)
        if (i + 1) % args.every == 0 or i + 1 == args.steps:
            drawn, best = np.asarray(state.drawn), np.asarray(state.best_dist)
            print(f"step {i + 1}", flush=True)
            for k, j in enumerate(chosen):
                worst = chains[int(np.argmax(drawn[k]))]
                print(f"  {names[j]}: best D {best[k]:.3g}, worst {worst}")
                print("    " + " ".join(f"{c}={v:.1f}" for c, v in zip(chains, drawn[k], strict=True)), flush=True)


if __name__ == "__main__":
    main()
