"""Models with their weights: `QualityModel` and `SensitivityModel`, what the loaders return.

Each is a Flax module with its variables and model card, registered as a pytree (the variables are
the leaves; the module and card are static), so a `jax.jit`-ed function taking one compiles once
per module. `hasmap_jax.weights.loading` builds them from files and shipped names.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.arrays import as_unit_float
from hasmap_jax.models.folding import fold_batchnorm
from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, quality_logits
from hasmap_jax.scoring import resolve_view_size, view_scores

#: Computation dtypes `QualityModel.inference` accepts, by name. float16 is left out: its 5-bit
#: exponent can overflow in the residual stream (not normalised) or underflow in input gradients,
#: where bfloat16 has float32's range at the same speed on current accelerators.
_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True, eq=False)
class _LoadedModel:
    """A Flax module with its weights and model card, as a pytree: the weights are the leaves, the
    module and card are static, so passing it to a `jax.jit`-ed function compiles once per module."""

    module: Any
    variables: Any
    card: dict[str, Any] = dataclasses.field(default_factory=dict)

    def tree_flatten(self):
        return (self.variables,), (self.module, json.dumps(self.card, sort_keys=True))

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(aux[0], children[0], json.loads(aux[1]))


@jax.tree_util.register_pytree_node_class
class QualityModel(_LoadedModel):
    """A blind image quality model (KonCept512 architecture) with its weights.

    `apply` and `logits` are traceable (use them inside `jit`, `grad`, `vmap`); `score` is the host API.

    Attributes:
      module: the Flax module (a `KonCept512`).
      variables: {"params": ..., "batch_stats": ...}.
      card: the model card (variant, source, input size, ...).
    """

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at; other sizes run but rate differently."""
        return tuple(self.card.get("input_size", KONCEPT_INPUT_SIZE))

    def apply(self, images: jax.Array) -> jax.Array:
        """Scores (N,) of float images (N, H, W, 3) in [0, 1]. Traceable and differentiable."""
        return self.module.apply(self.variables, images)[0]

    def logits(self, images: jax.Array, threshold: float = 50.0) -> jax.Array:
        """(N, 2) logits [high, low]; see `quality_logits` (high <=> score > threshold)."""
        return quality_logits(self.apply(images), threshold)

    def inference(self, *, fold_bn: bool = True, dtype: Any = jnp.float32) -> QualityModel:
        """This model as an inference graph: BatchNorm folded away and/or a bfloat16 backbone.

        Folded, the scores equal this model's up to float32 rounding (a few 1e-7 to 1e-6 relative).
        A bfloat16 backbone is approximate: on the shipped default model and the six example photos
        scores moved by up to 0.3 points (unfolded) and 0.8 points (folded) of the 0..100 scale, input
        gradients kept a cosine of at least 0.979 with float32's. Decisions near the threshold can flip:
        judge final results with a float32 model. Parameters stay float32 either way, and so do the
        head, the input gradient and the scores.

        Args:
          fold_bn: fold every BatchNorm into its conv / the next Dense
            (`hasmap_jax.models.folding.fold_batchnorm`). A model folded already stays as it is
            (folding twice is a no-op); False keeps an unfolded model unfolded.
          dtype: computation dtype of the backbone, float32 or bfloat16 (a dtype or its name).

        Returns:
          A new QualityModel with the same card plus `card["inference"] = {"fold_bn": ..., "dtype":
          "float32" | "bfloat16"}` and `card["config"]` of the new module, so two variants differ in
          their pytree aux (and a `jit` compiles each once). The folded model is inference-only:
          its module refuses `train=True`, and its variables hold no `batch_stats`.

        Raises:
          ValueError: `fold_bn=False` on a folded model (folding cannot be undone), or another dtype.
        """
        name = jnp.dtype(dtype).name
        if name not in _COMPUTE_DTYPES:
            raise ValueError(f"compute dtype {name!r} is not supported; use one of {sorted(_COMPUTE_DTYPES)}")
        module, variables = self.module, self.variables
        if fold_bn:
            module, variables = fold_batchnorm(module, variables)
        elif module.fold_bn:
            raise ValueError("this model's BatchNorm is folded already and cannot be unfolded; use the original model")
        if jnp.dtype(module.dtype) != jnp.dtype(name):
            module = dataclasses.replace(module, dtype=_COMPUTE_DTYPES[name])
        card = {**self.card, "config": module.config(), "inference": {"fold_bn": module.fold_bn, "dtype": name}}
        return QualityModel(module, variables, card)

    def score(self, images, *, batch_size: int | None = None, view_size="auto") -> np.ndarray:
        """Quality scores (N,) of RGB images (N, H, W, 3), uint8 or float in [0, 1].

        Args:
          images: the photos, all of one size.
          batch_size: split large batches into chunks of this size.
          view_size: "auto" (default) scores photos of another size than `input_size` (384x512 for
            KonCept512) through `fit_view` (resize to cover, centre crop), as `attack_batch` does;
            None scores them as given; or an explicit (height, width).

        One compilation per distinct batch shape.
        """
        x = as_unit_float(images)
        fn = functools.partial(view_scores, view_size=resolve_view_size(self, x.shape[1:3], view_size))
        return _batched(fn, self, x, batch_size)


@jax.tree_util.register_pytree_node_class
class SensitivityModel(_LoadedModel):
    """A human sensitivity map model (VGG16 `SensitivityNet`) with its weights.

    Attributes:
      module: the Flax module (a `SensitivityNet`).
      variables: {"params": {"backbone": ..., "head": ...}}.
      card: the model card.
    """

    def apply(self, images: jax.Array) -> jax.Array:
        """Maps (N, H, W) in [0, 1] of float images (N, H, W, 3) in [0, 1]. Traceable."""
        return self.module.apply(self.variables, images)[0]

    def map(self, images, *, batch_size: int | None = None) -> np.ndarray:
        """Sensitivity maps (N, H, W) in [0, 1] (1 = a change is most noticeable) of RGB images
        (N, H, W, 3), uint8 or float in [0, 1], at the images' own size (at least 32x32)."""
        return _batched(_map, self, as_unit_float(images), batch_size)


def _batched(fn, model, x: np.ndarray, batch_size: int | None) -> np.ndarray:
    step = batch_size or len(x)
    return np.concatenate([np.asarray(fn(model, jnp.asarray(x[i : i + step]))) for i in range(0, len(x), step)])


@jax.jit
def _map(model: SensitivityModel, x: jax.Array) -> jax.Array:
    return model.apply(x)
