"""Sharding a batch over devices (a mesh with a "data" axis) and multi-host helpers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: this process's local devices) with axis "data"."""
    return Mesh(np.asarray(devices if devices is not None else jax.local_devices()), (DATA_AXIS,))


def shard_batch(arrays: Sequence[Any], *, mesh: Mesh | None = None) -> tuple[list[jax.Array], int]:
    """Places arrays that share a leading batch axis across the mesh's "data" axis.

    The batch is padded (repeating its last element) to a multiple of the number of devices;
    per-image computations make the padding harmless, and `unshard` drops it.

    Returns:
      (the sharded arrays, the number of padding rows added).
    """
    mesh = mesh if mesh is not None else data_mesh()
    k = mesh.shape[DATA_AXIS]
    n = len(arrays[0])
    pad = (-n) % k
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    out = []
    for a in arrays:
        a = np.asarray(a)
        if len(a) != n:
            raise ValueError(f"arrays to shard must share the batch size {n}, got {len(a)}")
        if pad:
            a = np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])
        out.append(jax.device_put(a, sharding))
    return out, pad


def replicate(tree: Any, *, mesh: Mesh | None = None) -> Any:
    """Places a pytree (e.g. model weights) on every device of the mesh, once."""
    mesh = mesh if mesh is not None else data_mesh()
    sharding = NamedSharding(mesh, P())
    leaves = jax.tree.leaves(tree)
    if leaves and all(getattr(x, "sharding", None) == sharding for x in leaves):
        return tree
    return jax.device_put(tree, sharding)


def unshard(tree: Any, n: int) -> Any:
    """Brings sharded results back to the host as numpy, without the padding rows."""
    return jax.tree.map(lambda a: np.asarray(a)[:n], tree)
