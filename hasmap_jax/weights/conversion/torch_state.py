"""Reads PyTorch state dicts safely (`torch.load(weights_only=True)`, never a plain unpickle)."""

from __future__ import annotations

import os

import numpy as np

from hasmap_jax.models.variables import WeightError


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a `.pth` state dict as float32 numpy arrays.

    Accepts a bare state dict or a checkpoint dict holding one under "state_dict" or "model", and
    strips a `module.` prefix (DataParallel). Integer bookkeeping tensors are kept as they are.

    Raises:
      WeightError: not a PyTorch file, truncated, holds something other than tensors, or would need
        arbitrary unpickling.
    """
    import torch  # reference-framework extra: only converters need it

    name = os.fspath(path)
    try:
        obj = torch.load(name, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... by failure kind
        raise WeightError(
            f"{name}: not a loadable PyTorch state dict ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "It may be truncated, of another format, or contain Python objects other than tensors "
            "(only weights_only=True loading is allowed)."
        ) from e
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise WeightError(f"{name}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WeightError(f"{name}: entries that are not tensors: {bad[:10]}")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return {k: v.detach().cpu().numpy() for k, v in obj.items()}
