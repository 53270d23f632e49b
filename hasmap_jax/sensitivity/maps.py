"""Sensitivity maps from what a user names: "default", "uniform", a model, a checkpoint, or arrays."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.arrays import as_unit_float
from hasmap_jax.models.jnd import default_sensitivity
from hasmap_jax.weights.loading import load_sensitivity_model


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class UniformSensitivity:
    """Every pixel equally sensitive: the weighted L2 becomes plain L2 (the C&W attack)."""

    card: tuple = (("kind", "sensitivity"), ("variant", "uniform"), ("description", "S = 1 everywhere: plain L2"))

    def apply(self, images: jax.Array) -> jax.Array:
        return jnp.ones(images.shape[:3], jnp.float32)

    def map(self, images) -> np.ndarray:
        return np.ones(as_unit_float(images).shape[:3], np.float32)


def resolve_sensitivity(spec: Any = "default"):
    """A map model from a name or path: "default" (the training-free JND map), "uniform", a shipped
    model name, a checkpoint directory or a Keras h5 (`load_sensitivity_model`); a model object
    (with `apply` / `map`) is returned as is."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    if isinstance(spec, str) and spec == "uniform":
        return UniformSensitivity()
    if isinstance(spec, str) and spec == "default":
        return default_sensitivity()
    return load_sensitivity_model(spec)


def sensitivity_maps(sensitivity: Any, x8: jax.Array) -> jax.Array:
    """Per-image maps (N, H, W) in [0, 1] for `attack_batch`'s `sensitivity` argument.

    `sensitivity`: None or "default", "uniform", a model with `apply(images) -> maps`, or maps
    (N, H, W) / (H, W) in [0, 1]. `x8` is the batch (N, H, W, 3) as uint8, or float in [0, 1]; an
    array already on its devices gives maps placed alike.
    """
    n, h, w = x8.shape[:3]
    if sensitivity is None:
        sensitivity = "default"
    if isinstance(sensitivity, str):
        if sensitivity not in ("default", "uniform"):
            raise ValueError(f"sensitivity: unknown name {sensitivity!r}; use 'default', 'uniform', a model or maps")
        sensitivity = resolve_sensitivity(sensitivity)
    if hasattr(sensitivity, "apply"):
        return _apply_map(sensitivity, x8)
    maps = np.asarray(sensitivity, np.float32)
    if maps.shape == (h, w):
        maps = np.broadcast_to(maps, (n, h, w))
    if maps.shape != (n, h, w):
        raise ValueError(f"sensitivity: expected maps of shape {(n, h, w)} (one per image), got {maps.shape}")
    if not np.isfinite(maps).all() or maps.min() < 0.0 or maps.max() > 1.0:
        raise ValueError("sensitivity: map values must be finite and in [0, 1]")
    return maps


@jax.jit
def _apply_map(model, x):
    return model.apply(x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x)
