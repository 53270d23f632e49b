"""Variable trees of the models: their shapes, flat path views, and a strict check against a model.

Models own these helpers because BatchNorm folding (`hasmap_jax.models.folding`) needs them; the
weight converters and checkpoints (`hasmap_jax.weights`) build on the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class WeightError(ValueError):
    """A weight file that cannot be loaded into the model: wrong format, missing or extra tensors."""


def abstract_variables(module: nn.Module, size: tuple[int, int] = (299, 299)) -> dict[str, Any]:
    """Shapes and dtypes of the module's variables (`jax.ShapeDtypeStruct` leaves), nothing allocated.

    Args:
      module: any Flax module taking images (N, H, W, 3).
      size: (height, width) of the input traced; shapes of variables do not depend on it, but it
        must be one the module accepts (299x299 gives the 8x8 map of KonCept512's "window8" pooling).
    """
    images = jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)
    return jax.eval_shape(module.init, {"params": jax.random.key(0)}, images)


def flatten(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """{('params', 'base', 'conv2d_1a', 'conv', 'kernel'): leaf, ...} of a nested mapping."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict[str, Any]:
    """The nested dict of a `flatten`ed tree."""
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def check_variables(variables: dict[str, Any], expected: dict[str, Any], *, what: str, hint: str = "") -> None:
    """Raises a `WeightError` listing every difference of paths, shapes and dtypes from `expected`.

    Args:
      variables: a nested dict of arrays.
      expected: the same of `jax.ShapeDtypeStruct`, e.g. `abstract_variables(module)`.
      what: names the model in the message.
      hint: a last line for the message, if any.
    """
    got, want = flatten(variables), flatten(expected)
    fmt = "/".join
    missing = sorted(fmt(p) for p in want if p not in got)
    unexpected = sorted(fmt(p) for p in got if p not in want)
    wrong = sorted(
        f"{fmt(p)}: {tuple(jnp.shape(v))} {jnp.result_type(v)}, model {want[p].shape} {want[p].dtype}"
        for p, v in got.items()
        if p in want and (tuple(jnp.shape(v)) != want[p].shape or jnp.result_type(v) != want[p].dtype)
    )
    if missing or unexpected or wrong:
        lines = [f"the variables do not match the {what} model."]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape or dtype", wrong)):
            if items:
                more = f" ... and {len(items) - 25} more" if len(items) > 25 else ""
                lines.append(f"  {title} ({len(items)}): " + ", ".join(items[:25]) + more)
        if hint:
            lines.append("  " + hint)
        raise WeightError("\n".join(lines))
