"""Strict assembly of converted weights: every tensor accounted for, or an error that lists them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from hasmap_jax.models.variables import WeightError, flatten, unflatten


def _fmt(path: tuple[str, ...]) -> str:
    return "/".join(path)


def assemble(
    flat: Mapping[tuple[str, ...], np.ndarray],
    expected: Mapping[str, Any],
    *,
    source: str,
    unmapped: list[str] = (),
) -> dict[str, Any]:
    """Checks converted tensors against the model's abstract variables and returns the nested tree.

    Args:
      flat: converted tensors keyed by variable path (collection first).
      expected: the model's variables, e.g. `jax.eval_shape(model.init, ...)` (leaves need `.shape`).
      source: the weight file's name, for error messages.
      unmapped: names in the source that no rule mapped (reported as unexpected).

    Raises:
      WeightError listing every missing, unexpected and mis-shaped tensor.
    """
    want = {p: tuple(v.shape) for p, v in flatten(expected).items()}
    missing = sorted(_fmt(p) for p in want if p not in flat)
    unexpected = sorted(list(unmapped) + [_fmt(p) for p in flat if p not in want])
    wrong = sorted(
        f"{_fmt(p)}: file {tuple(np.shape(v))}, model {want[p]}"
        for p, v in flat.items()
        if p in want and tuple(np.shape(v)) != want[p]
    )
    if missing or unexpected or wrong:
        lines = [f"{source}: the weights do not match the model."]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = items[:25]
                more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
                lines.append(f"  {title} ({len(items)}): " + ", ".join(shown) + more)
        lines.append("  Check that the file is the model you meant (and its variant), or convert it again.")
        raise WeightError("\n".join(lines))
    return unflatten({p: np.asarray(v, dtype=np.float32) for p, v in flat.items()})
