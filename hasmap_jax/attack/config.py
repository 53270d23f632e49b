"""`AttackConfig`: how `attack_batch` optimises, as one frozen value validated where it is made."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hasmap_jax.attack.minnorm import MinNorm
from hasmap_jax.transforms.profiles import Profile, jpeg_profile, jpeg_qualities, resolve_profile

#: The optimisation methods: "cw", the paper's (HASMap, fixed alpha), and "fmn", the minimum-norm method.
METHODS = ("cw", "fmn")
LOOPS = ("auto", "host", "device")
_DTYPES = {"auto": None, "bf16": jnp.bfloat16, "bfloat16": jnp.bfloat16, "fp32": jnp.float32, "float32": jnp.float32}


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """How `attack_batch` optimises: everything but the photos, alpha, the models and the devices.

    Frozen and hashable; checked once, when made (`ValueError` naming the setting). Change one
    setting with `replace` (`config.replace(steps=50)`), which also takes `robust_jpeg`.

    Attributes:
      method: "cw", the paper's method (HASMap: Adam on alpha * ||S * d||^2 + L_C in the tanh box,
        one fixed alpha per photo), or "fmn", the minimum-norm method (`hasmap_jax.attack.minnorm`:
        per photo a budget on ||S * d||, adapted every step); a `MinNorm` is "fmn" with its settings.
      minnorm: the minimum-norm method's settings.
      steps: optimisation steps (per search step).
      search_steps: "cw": 1 keeps alpha fixed (the paper); more search per photo over c = 1 / alpha
        as the authors' code did (x10 on failure until bounded, then bisection), keeping the best.
      learning_rate: "cw": Adam's learning rate on w (the authors used 5e-3 with 5 x 100 steps).
      optimizer: "cw": an optax transformation to use instead of Adam(learning_rate).
      confidence: kappa, a margin: success needs Z_high - Z_low + kappa <= 0, i.e.
        score <= threshold - kappa / 2.
      threshold: tau; a photo is rated high quality when its score exceeds it (MediaEval 2020: 50).
      early_stop: stop a photo once it stalls ("cw": its running-minimum loss improves by less than
        0.01 % over max(25, steps // 5) steps; "fmn": its least successful distortion by less than
        `MinNorm.tolerance` over max(10, steps // 10) steps).
      sensitivity_floor: the maps are raised to at least this value (S' = max(S, floor), 0 .. 1):
        the least sensitive pixels still cost floor^2 per unit of squared change (0: the map as it
        is; 1: plain L2).
      robust: what the protection must survive (`hasmap_jax.transforms.profiles`): None or "off"
        (the paper's plain loss), a profile name ("jpeg90", "web"), operations by name
        ("resize0.75+jpeg75", a comma-separated list or a sequence), or a `Profile`.
      view_size: (height, width) the model sees; "auto": the model's input size where the photos
        differ from it; None: as given.
      compute_dtype: the model's compute dtype during the optimisation ("auto": bf16 on GPU/TPU,
        fp32 on CPU; "bf16"; "fp32"; or a dtype). Every verdict uses the model in float32.
      fold_batchnorm: optimise on the model with BatchNorm folded into the convolutions.
      loop: "device" (one compiled program), "host" (the host drives a compiled step; XLA:CPU), or
        "auto" (host on CPU, else device).
    """

    method: str = "cw"
    minnorm: MinNorm = MinNorm()
    steps: int = 100
    search_steps: int = 1
    learning_rate: float = 1e-2
    optimizer: optax.GradientTransformation | None = None
    confidence: float = 0.0
    threshold: float = 50.0
    early_stop: bool = True
    sensitivity_floor: float = 0.0
    robust: str | Sequence | Profile | None = None
    view_size: tuple[int, int] | str | None = "auto"
    compute_dtype: Any = "auto"
    fold_batchnorm: bool = True
    loop: str = "auto"

    def __post_init__(self):
        if isinstance(self.method, MinNorm):
            object.__setattr__(self, "minnorm", self.method)
            object.__setattr__(self, "method", "fmn")
        if self.method not in METHODS:
            raise ValueError(f"method: one of {', '.join(METHODS)} or a MinNorm, got {self.method!r}")
        if not isinstance(self.minnorm, MinNorm):
            raise ValueError(f"minnorm: a MinNorm, got {self.minnorm!r}")
        if self.steps < 1 or self.search_steps < 1:
            raise ValueError("steps and search_steps must be at least 1")
        if self.method == "fmn" and self.search_steps != 1:
            raise ValueError("search_steps: the minimum-norm method adapts each photo's budget itself; give 1")
        for name in ("confidence", "threshold", "learning_rate"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be finite, got {getattr(self, name)}")
        if self.confidence < 0:
            raise ValueError(f"confidence must be >= 0, got {self.confidence}")
        if not (np.isfinite(self.sensitivity_floor) and 0.0 <= self.sensitivity_floor <= 1.0):
            raise ValueError(f"sensitivity_floor must be in [0, 1], got {self.sensitivity_floor}")
        if self.loop not in LOOPS:
            raise ValueError(f"loop: expected 'auto', 'host' or 'device', got {self.loop!r}")
        if isinstance(self.compute_dtype, str):
            if self.compute_dtype not in _DTYPES:
                raise ValueError(
                    f"compute_dtype: expected 'auto', 'bf16', 'fp32' or a dtype, got {self.compute_dtype!r}"
                )
        elif jnp.dtype(self.compute_dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise ValueError(f"compute_dtype: float32 or bfloat16, got {jnp.dtype(self.compute_dtype)}")
        if isinstance(self.robust, list):
            object.__setattr__(self, "robust", tuple(self.robust))
        if isinstance(self.view_size, list):
            object.__setattr__(self, "view_size", tuple(self.view_size))
        resolve_profile(self.robust)  # an unknown profile or operation is refused here, not mid-run

    def replace(self, **changes) -> AttackConfig:
        """A copy with `changes`; `robust_jpeg=Q` (a JPEG quality, or qualities re-encoded one after
        the other) is the older spelling of `robust=` that profile (`robust="jpeg90"` is
        `robust_jpeg=90`), and cannot be given with `robust`."""
        if "robust_jpeg" in changes:
            chain = jpeg_qualities(changes.pop("robust_jpeg"))
            if chain:
                robust = changes.get("robust")
                if isinstance(robust, str) and robust.strip().lower() == "off":
                    raise ValueError("robust='off' contradicts robust_jpeg; give one of them")
                if robust is not None:
                    raise ValueError("give robust or robust_jpeg, not both (robust_jpeg=Q is robust='jpegQ')")
                changes["robust"] = jpeg_profile(chain)
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            known = ", ".join(f.name for f in dataclasses.fields(self))
            raise TypeError(
                f"unknown attack setting(s) {', '.join(unknown)}; AttackConfig has {known} (and robust_jpeg)"
            )
        return dataclasses.replace(self, **changes) if changes else self

    @property
    def profile(self) -> Profile | None:
        """The robustness profile (None: the plain loss)."""
        return resolve_profile(self.robust)

    @property
    def dtype(self):
        """The compute dtype this process uses ("auto" resolved on its default backend)."""
        if isinstance(self.compute_dtype, str):
            return _DTYPES[self.compute_dtype] or default_compute_dtype()
        return jnp.dtype(self.compute_dtype)

    @property
    def resolved_loop(self) -> str:
        """ "host" or "device" ("auto" resolved on this process's default backend)."""
        if self.loop != "auto":
            return self.loop
        return "host" if jax.default_backend() == "cpu" else "device"


def default_compute_dtype():
    """The model's compute dtype `compute_dtype="auto"` uses: bf16 on GPU/TPU, else fp32."""
    return jnp.bfloat16 if jax.default_backend() in ("gpu", "tpu") else jnp.float32
