"""KonCept512 (Hosu et al. 2020): InceptionResNetV2 + MLP regression head, in both published layouts.

Two weight sets circulate and both load exactly (see `hasmap_jax.weights.conversion`):

- `"koncept512-pytorch"`: the MediaEval 2020 target `KonCept512.pth` (retrained by the task
  organisers). Cadene backbone with BatchNorm gamma; the backbone ends in
  `AvgPool2d(8, count_include_pad=False)`, which at the 384x512 input (a 10x14 map) averages only
  the top-left 8x8 window rather than the whole map. We reproduce that ("window8" pooling). Head
  Linear-ReLU-BatchNorm1d(eps 1e-5)-Dropout x3, Linear(1).
- `"koncept512-keras"`: the original authors' `koncep512-trained-model.h5` (kuti). Keras backbone
  (BatchNorm without gamma), GlobalAveragePooling2D, head Dense(relu)-BatchNorm(eps 1e-3)-Dropout
  x3, Dense(1).

Both take RGB in [0, 1] and normalise to [-1, 1] ((x - 0.5) / 0.5 is exactly Keras' x/127.5 - 1 on
0..255). Both output a quality score on roughly 0..100 (KonIQ-10k MOS scale).

For inference (the attack's target), `fold_bn=True` builds the same network with every BatchNorm
folded away (see `hasmap_jax.models.folding.fold_batchnorm`) and `dtype=jnp.bfloat16` runs the
backbone in bfloat16; the head and the scores stay float32 either way.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hasmap_jax.models._config import ConfigMixin
from hasmap_jax.models.inception_resnet_v2 import InceptionResNetV2, channels

Array = jax.Array

#: The input size (height, width) both KonCept512 variants were trained at.
KONCEPT_INPUT_SIZE = (384, 512)


class KonCept512(ConfigMixin, nn.Module):
    """InceptionResNetV2 backbone + KonCept regression head.

    Attributes:
      width, depths, bn_scale, pool_count_include_pad, dtype: passed to `InceptionResNetV2`.
      backbone_bn_epsilon: BatchNorm epsilon of the backbone (1e-3 in both published variants).
      pooling: how the backbone map (N, h, w, C) becomes the head's input (`pool_features`): "global"
        (mean over the whole map, Keras), "window8" (torch `AvgPool2d(8)`: mean of the top-left 8x8
        window, which requires a map of 8..15 in each dimension), or "mean_max" (not in either published
        variant: the mean and the maximum over the whole map, concatenated, (N, 2C); the head's first
        Dense then has 2C inputs). "mean_max" lets the head follow the most detailed part of the view:
        a small sharp subject or a thin horizon on a large smooth area lifts each feature's maximum,
        where the mean dilutes it (issue 26; the shipped default model's, run G2: weights/README.md).
      head_widths: widths of the three hidden Dense layers (published: 2048, 1024, 256).
      head_bn_epsilon: epsilon of the head's BatchNorm (1e-5 for PyTorch BatchNorm1d, 1e-3 for Keras).
      dropout_rates: dropout after each hidden layer (published: 0.25, 0.25, 0.5).
      input_mean, input_std: the input normalisation applied to RGB in [0, 1].
      fold_bn: the inference graph: every backbone BatchNorm folded into its conv and each head
        BatchNorm into the Dense that follows it (variables from
        `hasmap_jax.models.folding.fold_batchnorm`; `train=True` is refused).
      score_range: None (published: the last Dense's output is the score, unbounded), or (lo, hi):
        the score is lo + (hi - lo) * sigmoid(output), always inside the scale (the shipped default
        model: (0, 100)).
      dtype: computation dtype of the backbone (float32 or bfloat16). Parameters, the pooled
        features, the head and the scores stay float32.

    Call with images (N, H, W, 3) float in [0, 1]. Returns `(scores, aux)` with scores (N,) float32
    and aux holding the backbone map ("features", in `dtype`), the pooled vector ("pooled": (N, C), or
    (N, 2C) with "mean_max") and the backbone's stages.
    """

    width: float = 1.0
    depths: tuple[int, int, int] = (10, 20, 9)
    bn_scale: bool = True
    backbone_bn_epsilon: float = 1e-3
    pool_count_include_pad: bool = False
    pooling: str = "window8"
    head_widths: tuple[int, int, int] = (2048, 1024, 256)
    head_bn_epsilon: float = 1e-5
    dropout_rates: tuple[float, float, float] = (0.25, 0.25, 0.5)
    input_mean: float = 0.5
    input_std: float = 0.5
    fold_bn: bool = False
    score_range: tuple[float, float] | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        if train and self.fold_bn:
            raise ValueError("a KonCept512 with folded BatchNorm is inference-only; train the unfolded one")
        # Normalise before the cast: pixels near input_mean then keep bfloat16's relative precision.
        x = ((images.astype(jnp.float32) - self.input_mean) / self.input_std).astype(self.dtype)
        features, aux = InceptionResNetV2(
            width=self.width,
            depths=self.depths,
            bn_epsilon=self.backbone_bn_epsilon,
            bn_scale=self.bn_scale,
            pool_count_include_pad=self.pool_count_include_pad,
            fold_bn=self.fold_bn,
            dtype=self.dtype,
            name="base",
        )(x, train)
        # Pool and run the head in float32: rounding the pooled vector to bfloat16 (8 significant bits)
        # would cost the head precision for no speed, the head being a negligible share of the work.
        pooled = pool_features(features.astype(jnp.float32), self.pooling)
        y = pooled
        for i, (n, rate) in enumerate(zip(self.head_widths, self.dropout_rates, strict=True)):
            y = nn.Dense(channels(n, 1.0), name=f"fc_fc{i}")(y)
            y = nn.relu(y)
            if not self.fold_bn:  # folded: this BatchNorm lives in the next Dense (dropout is off then)
                y = nn.BatchNorm(
                    use_running_average=not train, momentum=0.99, epsilon=self.head_bn_epsilon, name=f"fc_bn{i}"
                )(y)
                y = nn.Dropout(rate, deterministic=not train)(y)
        scores = nn.Dense(1, name="fc_out")(y)[:, 0]
        if self.score_range is not None:
            lo, hi = self.score_range
            scores = lo + (hi - lo) * jax.nn.sigmoid(scores)
        return scores, {"features": features, "pooled": pooled, **aux}


#: The poolings `KonCept512` accepts (`pool_features`).
POOLINGS = ("global", "window8", "mean_max")


def pool_features(features: Array, pooling: str) -> Array:
    """Pools a (N, h, w, C) map: "global" (mean, (N, C)), torch AvgPool2d(8)-style "window8" (mean of
    the top-left 8x8 window, (N, C)) or "mean_max" ([mean, max] over the map per channel, (N, 2C);
    as fastai's `AdaptiveConcatPool2d`, mean first)."""
    if pooling == "global":
        return jnp.mean(features, axis=(1, 2))
    if pooling == "mean_max":
        return jnp.concatenate([jnp.mean(features, axis=(1, 2)), jnp.max(features, axis=(1, 2))], axis=-1)
    if pooling == "window8":
        h, w = features.shape[1:3]
        if not (8 <= h < 16 and 8 <= w < 16):
            raise ValueError(
                f"'window8' pooling (the KonCept512.pth AvgPool2d(8) head) needs a backbone map of 8 to 15 "
                f"in each dimension, got {h}x{w}; feed images of about 299..555 pixels per side "
                f"(KonCept512 expects {KONCEPT_INPUT_SIZE[0]}x{KONCEPT_INPUT_SIZE[1]})."
            )
        return jnp.mean(features[:, :8, :8, :], axis=(1, 2))
    raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLINGS}")


def quality_logits(scores: Array, threshold: float = 50.0) -> Array:
    """Two-class view [high, low] of quality scores: "high" wins exactly when score > threshold.

    Follows the authors' code: Z = [50 + s - tau, 50 - s + tau], so Z_high - Z_low = 2 (s - tau).
    At s == tau exactly the logits tie; the rating there is "low" (high <=> s > tau), so decide
    with `scores > threshold`, not with an argmax.

    Args:
      scores: (...,) quality scores.
      threshold: tau, the score above which an image is rated high quality (MediaEval 2020: 50).

    Returns:
      (..., 2) logits, index 0 = high quality, index 1 = low quality.
    """
    d = scores - threshold
    return jnp.stack([50.0 + d, 50.0 - d], axis=-1)


#: Attribute sets of the two published variants.
VARIANTS: dict[str, dict[str, Any]] = {
    "koncept512-pytorch": dict(bn_scale=True, pooling="window8", head_bn_epsilon=1e-5),
    "koncept512-keras": dict(bn_scale=False, pooling="global", head_bn_epsilon=1e-3),
}


def koncept512(variant: str, **overrides: Any) -> KonCept512:
    """Builds a KonCept512 of a published `variant` ("koncept512-pytorch" or "koncept512-keras")."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown KonCept512 variant {variant!r}; expected one of {sorted(VARIANTS)}")
    return KonCept512(**{**VARIANTS[variant], **overrides})
