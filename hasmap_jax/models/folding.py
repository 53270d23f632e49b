"""BatchNorm folding: the inference graph of KonCept512 / InceptionResNetV2 and its variables.

In eval mode a BatchNorm is a per-channel affine map, y * s + t with s = gamma / sqrt(var + eps) and
t = beta - mean * s (gamma = 1 where the layout has none: Keras, `bn_scale=False`). It folds exactly
into a linear layer next to it:

- backbone, conv -> BN -> ReLU: into the preceding conv, kernel' = kernel * s (per output channel),
  bias' = t, so each `ConvBN` becomes a conv with bias;
- head, Dense -> ReLU -> BN -> Dropout -> Dense: the ReLU sits between the first Dense and the BN,
  so the BN folds into the *next* Dense instead, W' = diag(s) W, b' = b + t @ W (the last BN into
  `fc_out`).
Both hold at inference only (BatchNorm on running statistics, dropout off), which is why the folded
network refuses `train=True`.

The folded module is the same class with `fold_bn=True`; its parameter paths are those of the
unfolded one minus the BatchNorms (plus `conv/bias`), so the folded variables are a pure function of
the unfolded ones, computed here with jax.numpy (on the arrays' device, traceable under `jit`).
Modelled after the conv-BN fusion of PyTorch's `torch.nn.utils.fusion.fuse_conv_bn_weights`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from hasmap_jax.models.inception_resnet_v2 import InceptionResNetV2
from hasmap_jax.models.koncept import KonCept512
from hasmap_jax.models.variables import abstract_variables, check_variables, flatten, unflatten

Path = tuple[str, ...]


def fold_batchnorm(
    module: KonCept512 | InceptionResNetV2, variables: dict[str, Any]
) -> tuple[KonCept512 | InceptionResNetV2, dict[str, Any]]:
    """The same network with every BatchNorm folded into a neighbouring linear layer.

    Exact up to float32 rounding (a few 1e-7 to 1e-6 relative on KonCept512 scores). An already folded
    module comes back unchanged with its variables (after the same check), so folding twice is a
    no-op.

    Args:
      module: a `KonCept512` or `InceptionResNetV2` (any width, depths, layout and dtype).
      variables: its variables, {"params": ..., "batch_stats": ...} (float32).

    Returns:
      `(folded_module, folded_variables)`: `module` with `fold_bn=True` (every other attribute,
      `dtype` included, unchanged) and {"params": ...}, float32, equal in structure, shapes and
      dtypes to `jax.eval_shape(folded_module.init, ...)`. Leaves that folding does not touch are
      the input's own arrays.

    Raises:
      TypeError: `module` is not a KonCept512 or InceptionResNetV2.
      WeightError: `variables` do not match `module`, or the folded tree does not match the folded
        module (listing the missing, unexpected and mis-shaped variables).
    """
    if not isinstance(module, KonCept512 | InceptionResNetV2):
        raise TypeError(f"fold_batchnorm folds KonCept512 and InceptionResNetV2 modules, got {type(module).__name__}")
    if module.fold_bn:
        hint = (
            "These are an unfolded model's variables: fold them with the unfolded module."
            if "batch_stats" in variables
            else ""
        )
        check_variables(variables, abstract_variables(module), what=f"folded {type(module).__name__}", hint=hint)
        return module, variables
    check_variables(variables, abstract_variables(module), what=f"unfolded {type(module).__name__}")

    flat = flatten(variables)
    params = {p[1:]: v for p, v in flat.items() if p[0] == "params"}
    stats = {p[1:]: v for p, v in flat.items() if p[0] == "batch_stats"}
    backbone_eps = module.backbone_bn_epsilon if isinstance(module, KonCept512) else module.bn_epsilon
    # (BatchNorm, layer it folds into, epsilon): backbone ConvBNs hold `conv` and `bn` side by side;
    # in the head fc_bn{i} folds into the Dense after it.
    plan = [(p[:-1], p[:-2] + ("conv",), backbone_eps) for p in stats if p[-2:] == ("bn", "mean")]
    if isinstance(module, KonCept512):
        n = len(module.head_widths)
        plan += [
            ((f"fc_bn{i}",), (f"fc_fc{i + 1}",) if i + 1 < n else ("fc_out",), module.head_bn_epsilon) for i in range(n)
        ]
    needed = {p for bn, target, _ in plan for p in params if p[:-1] in (bn, target)}
    needed |= {p for bn, _, _ in plan for p in stats if p[:-1] == bn}
    folded_leaves = _fold(
        {p: params[p] for p in needed if p in params}, {p: stats[p] for p in needed if p in stats}, tuple(plan)
    )
    out = {p: v for p, v in params.items() if p not in needed}  # untouched leaves: the input's own arrays
    out.update(folded_leaves)

    folded_module = dataclasses.replace(module, fold_bn=True)
    folded = unflatten({("params",) + p: v for p, v in out.items()})
    check_variables(folded, abstract_variables(folded_module), what=f"folded {type(module).__name__}")
    return folded_module, folded


@functools.partial(jax.jit, static_argnums=2)
def _fold(params: dict[Path, Any], stats: dict[Path, Any], plan: tuple) -> dict[Path, jax.Array]:
    # One compiled program: op-by-op dispatch would compile each op for each of the many channel counts.
    out = {}
    for bn, target, epsilon in plan:
        gamma = params.get(bn + ("scale",))  # absent in the Keras layout (BatchNorm(scale=False))
        s, t = _bn_affine(gamma, params[bn + ("bias",)], stats[bn + ("mean",)], stats[bn + ("var",)], epsilon)
        kernel = params[target + ("kernel",)]
        if target[-1] == "conv":  # conv (no bias) -> BN: scale the kernel's output channels (HWIO: O is last)
            out[target + ("kernel",)] = kernel * s
            out[target + ("bias",)] = t
        else:  # ReLU -> BN -> Dense: scale the Dense's input rows, and the shift passes through it
            out[target + ("kernel",)] = s[:, None] * kernel
            # HIGHEST: TPUs and GPUs would otherwise round this float32 product through bfloat16 / TF32.
            out[target + ("bias",)] = params[target + ("bias",)] + jnp.dot(
                t, kernel, precision=jax.lax.Precision.HIGHEST
            )
    return out


def _bn_affine(gamma, beta, mean, var, epsilon: float) -> tuple[jax.Array, jax.Array]:
    """(s, t), each (C,), with BatchNorm(y) = y * s + t in eval mode, as `flax.linen.BatchNorm` computes it."""
    s = jax.lax.rsqrt(jnp.asarray(var, jnp.float32) + epsilon)
    if gamma is not None:
        s = s * jnp.asarray(gamma, jnp.float32)
    return s, jnp.asarray(beta, jnp.float32) - jnp.asarray(mean, jnp.float32) * s
