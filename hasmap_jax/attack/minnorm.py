"""The minimum-norm method: per photo a budget on the sensitivity-weighted norm, adapted every step.

After FMN (Pintor, Roli, Brendel, Biggio, "Fast Minimum-norm Adversarial Attacks through Adaptive
Norm Constraints", NeurIPS 2021), run in the whitened variable u = S * d, where ||u||_2 = ||S * d||_2
is the distortion HASMap weighs (S the sensitivity map, floored above 0). Per photo and step:

- the budget eps: before the first success, the linear distance to the threshold,
  ||u|| + L / ||grad_u L||; after a success, min(eps, least successful norm) * (1 - gamma); after a
  failure once a success was found, eps * (1 + gamma) (gamma cosine-annealed);
- a step of length `step * eps` (cosine-annealed) along -grad_u L / ||grad_u L||: the change goes
  where grad_d / S is large, i.e. where the map says people see it least;
- the projection onto the ball ||u|| <= eps (the ball, not its sphere), then onto the box
  0 <= x + d <= 1 (which only shrinks |d|, so the ball still holds).

Every length is relative to the photo's own budget, so the schedule is the same for a 384x512 and a
12 MP photo. The caller (`hasmap_jax.attack.loop`) tests success on the 8-bit image that would be
saved, with every view of the robustness profile, before it calls `budget_step`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


def project_ball(u: Array, s: Array, eps: Array) -> Array:
    """u onto the ball ||u|| <= eps (u = S * d, so this is the weighted ball ||S * d|| <= eps):
    scaled down when outside, unchanged inside. (FMN's; DDN, and adv_lib's L2 FMN, rescale onto
    the sphere ||u|| = eps instead, which also pushes an iterate that is inside outwards.)"""
    del s
    return u * jnp.minimum(1.0, eps / jnp.maximum(jnp.linalg.norm(u), 1e-30))


@dataclasses.dataclass(frozen=True)
class MinNorm:
    """Settings of the minimum-norm method (hashable: part of the compiled program).

    Attributes:
      step: the step's length as a fraction of the photo's current budget eps, cosine-annealed
        over the steps from `step[0]` to `step[1]`.
      gamma: the budget's relative change per step (shrinks by 1 - gamma after a success, grows by
        1 + gamma after a failure), cosine-annealed from `gamma[0]` to `gamma[1]` (FMN's defaults).
      min_sensitivity: the map is floored at this inside the whitening u = S * d, so that a pixel
        the map calls free cannot take an unbounded change (the reported distortion uses the map
        as given).
      tolerance: a photo stops once its least successful distortion ||S * d||^2 improved by less
        than this fraction over the stall window (`attack_batch`'s early stop).
      project: `project(u, s, eps)`, the projection onto the budget (`project_ball`); a variant
        is a function of the same contract (hashable: a module-level function).
      follow_checkpoints: with views drawn at random (the `web` profile), the loss also scores the
        profile's checkpoints at every step, so that the step follows the views that decide success
        as well as the drawn ones, and success is read from the same forward pass (no separate
        check). False: the drawn views alone, and a separate check on the checkpoints (fewer model
        evaluations per step, a noisier direction; `docs/results.md`, "Minimum-norm protection").
    """

    step: tuple[float, float] = (0.5, 0.005)
    gamma: tuple[float, float] = (0.05, 0.001)
    min_sensitivity: float = 1e-2
    tolerance: float = 1e-2
    project: Callable[[Array, Array, Array], Array] = project_ball
    follow_checkpoints: bool = True

    def __post_init__(self):
        for name in ("step", "gamma"):
            v = tuple(float(a) for a in getattr(self, name))
            if len(v) != 2 or not all(math.isfinite(a) and a > 0 for a in v):
                raise ValueError(f"MinNorm.{name}: two positive numbers (start, end), got {getattr(self, name)!r}")
            object.__setattr__(self, name, v)
        if not 0.0 < self.gamma[0] < 1.0 or not 0.0 < self.gamma[1] < 1.0:
            raise ValueError(f"MinNorm.gamma: in (0, 1), got {self.gamma!r}")
        if not 0.0 < self.min_sensitivity <= 1.0:
            raise ValueError(f"MinNorm.min_sensitivity: in (0, 1], got {self.min_sensitivity!r}")
        if not 0.0 <= self.tolerance < 1.0:
            raise ValueError(f"MinNorm.tolerance: in [0, 1), got {self.tolerance!r}")


class Budget(NamedTuple):
    """One photo's budget state."""

    eps: Array  # () the budget on ||u|| for the next iterate
    least: Array  # () ||u|| of the least-norm success so far (continuous iterate; inf while none)


def initial_budget() -> Budget:
    """Before the first step: no budget yet (the first is the linear distance), no success."""
    return Budget(eps=jnp.float32(jnp.inf), least=jnp.float32(jnp.inf))


def cosine(i: Array, total: Array, start: float, end: float) -> Array:
    """Cosine annealing from `start` (step 0) to `end` (step `total`)."""
    t = jnp.clip(i.astype(jnp.float32) / jnp.maximum(total.astype(jnp.float32), 1.0), 0.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))


def budget_step(
    d: Array,
    grad: Array,
    x: Array,
    s: Array,
    loss: Array,
    success: Array,
    found: Array,
    budget: Budget,
    i: Array,
    total: Array,
    cfg: MinNorm,
) -> tuple[Array, Budget]:
    """One step for one photo: the next perturbation and budget.

    Args:
      d: (H, W, 3) the current perturbation (continuous; the model saw it rounded to 8 bits).
      grad: (H, W, 3) d loss / d d at the current perturbation, where loss <= 0 exactly at a success.
      x: (H, W, 3) the original in [0, 1]; s: (H, W) the sensitivity map (floored here).
      loss: () the loss there (positive: not yet a success; its size drives the first budget).
      success: () the current iterate is a success (decided by the caller on the 8-bit image).
      found: () grow the budget by 1 + gamma rather than set it to the linear distance when this
        is not a success: a success was found at an earlier step (FMN), or the caller knows the
        linear distance along `grad` does not apply.
      budget: the budget state; i, total: this step and the number of steps (traced).
      cfg: the settings.
    """
    s = jnp.maximum(s, cfg.min_sensitivity)[..., None]
    u = s * d
    norm = jnp.linalg.norm(u)
    g = grad / s  # d loss / d u
    gnorm = jnp.linalg.norm(g)
    safe = jnp.where(gnorm > 0, gnorm, 1.0)
    gamma = cosine(i, total, *cfg.gamma)
    least = jnp.where(success, jnp.minimum(budget.least, norm), budget.least)
    linear = norm + jnp.maximum(loss, 0.0) / safe  # the linear distance to the threshold
    eps = jnp.where(
        success,
        jnp.minimum(budget.eps, least) * (1.0 - gamma),
        jnp.where(found, budget.eps * (1.0 + gamma), linear),
    )
    u = u - cosine(i, total, *cfg.step) * eps * g / safe
    u = cfg.project(u, s, eps)
    d = jnp.clip(x + u / s, 0.0, 1.0) - x
    return d, Budget(eps=eps, least=least)
