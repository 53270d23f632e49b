"""InceptionResNetV2 (Szegedy et al. 2016) as a Flax linen module, faithful to keras.applications.

Modelled after `keras.applications.InceptionResNetV2` and TF-slim's `inception_resnet_v2`; module
names follow Cadene's `pretrainedmodels` / timm (`conv2d_1a`, `mixed_5b/branch1_0`, ...) for the
stem and mixed blocks and Keras (`block35_1` ... `block8_10`) for the residual blocks, so that both
published KonCept512 checkpoints convert with near-identity tables (see `hasmap_jax.weights.conversion`).

Details that decide whether a port is exact, each covered by a parity test:
- conv (no bias) -> BatchNorm (epsilon 1e-3; gamma only in the Cadene/timm layout) -> ReLU;
- 'VALID' padding for the stem's 3x3 convs, the 1x1 (80) and 3x3 (192) convs, the stride-2 convs of
  mixed_6a / mixed_7a and every max pool; every other conv is 'SAME' (symmetric for odd kernels);
- mixed_5b's 3x3/1 average pool excludes the padding from the mean;
- residual blocks add `scale * up(concat(branches))` (a 1x1 conv with bias, no BN) and apply ReLU,
  except the final block8 (scale 1.0, no ReLU).

`fold_bn=True` builds the inference graph with every BatchNorm folded into its conv (a conv with
bias, the same parameter paths otherwise); `hasmap_jax.models.folding.fold_batchnorm` computes its
variables from those of the unfolded network.

`width` scales every channel count and `depths` sets the number of residual blocks, so tiny test
variants run exactly the same code as the full network.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def channels(n: int, width: float) -> int:
    """Channel count `n` of the full network scaled by `width` (at least 1)."""
    return max(1, int(round(n * width)))


class ConvBN(nn.Module):
    """Conv2D without bias -> BatchNorm -> optional ReLU (Keras `conv2d_bn`, Cadene `BasicConv2d`).

    With `fold_bn` the BatchNorm is folded into the conv, which then has a bias: `conv/kernel` and
    `conv/bias` are the only variables (inference only).
    """

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: str = "SAME"
    bn_epsilon: float = 1e-3
    bn_scale: bool = True
    activation: bool = True
    fold_bn: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=(self.strides, self.strides),
            padding=self.padding,
            use_bias=self.fold_bn,
            dtype=self.dtype,
            name="conv",
        )(x)
        if not self.fold_bn:
            x = nn.BatchNorm(
                use_running_average=not train,
                momentum=0.99,
                epsilon=self.bn_epsilon,
                use_scale=self.bn_scale,
                dtype=self.dtype,
                name="bn",
            )(x)
        return nn.relu(x) if self.activation else x


def _avg_pool_3x3_same(x: Array, count_include_pad: bool) -> Array:
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding="SAME", count_include_pad=count_include_pad)


def _max_pool_3x3_s2(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


# Branch layouts of the residual blocks: for each branch, a list of (channels, kernel) convs.
_BLOCK_BRANCHES = {
    "block35": [[(32, (1, 1))], [(32, (1, 1)), (32, (3, 3))], [(32, (1, 1)), (48, (3, 3)), (64, (3, 3))]],
    "block17": [[(192, (1, 1))], [(128, (1, 1)), (160, (1, 7)), (192, (7, 1))]],
    "block8": [[(192, (1, 1))], [(192, (1, 1)), (224, (1, 3)), (256, (3, 1))]],
}


class ResidualBlock(nn.Module):
    """Inception-ResNet block: x + scale * up(concat(branches)), then ReLU unless `activation` is off."""

    block_type: str
    scale: float
    activation: bool = True
    width: float = 1.0
    conv: Any = ConvBN
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        outs = []
        for b, branch in enumerate(_BLOCK_BRANCHES[self.block_type]):
            y = x
            for i, (n, k) in enumerate(branch):
                # Single-conv branches are named like Cadene's `branch0`, sequences `branch1_0`, ...
                name = f"branch{b}" if len(branch) == 1 else f"branch{b}_{i}"
                y = self.conv(channels(n, self.width), k, name=name)(y, train)
            outs.append(y)
        mixed = jnp.concatenate(outs, axis=-1)
        up = nn.Conv(x.shape[-1], (1, 1), use_bias=True, dtype=self.dtype, name="conv2d")(mixed)
        x = x + self.scale * up
        return nn.relu(x) if self.activation else x


class InceptionResNetV2(nn.Module):
    """InceptionResNetV2 backbone without the classifier (Keras `include_top=False`).

    Attributes:
      width: multiplier on every channel count (1.0 is the published network).
      depths: number of block35, block17 and block8 residual blocks before the final block8
        (published: 10, 20, 9).
      bn_epsilon: BatchNorm epsilon (published: 1e-3 in Keras, TF-slim, Cadene and timm alike).
      bn_scale: whether BatchNorm has a learned gamma (Keras: no; Cadene / timm: yes).
      pool_count_include_pad: whether mixed_5b's 3x3 average pool counts padding in the mean
        (published: False; exposed only so that tests can show it matters).
      fold_bn: build the inference graph, every BatchNorm folded into its conv (variables from
        `hasmap_jax.models.folding.fold_batchnorm`; `train=True` is refused).
      dtype: computation dtype (parameters stay float32).

    Call with images preprocessed to the backbone's input range, NHWC, at least 75x75. Returns
    `(features, aux)`: the conv_7b feature map (N, h, w, channels(1536)) and a dict of the
    intermediate maps after the stem and after each stage.
    """

    width: float = 1.0
    depths: tuple[int, int, int] = (10, 20, 9)
    bn_epsilon: float = 1e-3
    bn_scale: bool = True
    pool_count_include_pad: bool = False
    fold_bn: bool = False
    dtype: Any = jnp.float32

    @property
    def num_features(self) -> int:
        return channels(1536, self.width)

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> tuple[Array, dict[str, Array]]:
        if train and self.fold_bn:
            raise ValueError("a network with folded BatchNorm is inference-only; train the unfolded one")
        c = functools.partial(channels, width=self.width)
        conv = functools.partial(
            ConvBN, bn_epsilon=self.bn_epsilon, bn_scale=self.bn_scale, fold_bn=self.fold_bn, dtype=self.dtype
        )
        aux = {}

        # Stem. Calls are made in Keras creation order: the Keras converter relies on it.
        x = conv(c(32), (3, 3), strides=2, padding="VALID", name="conv2d_1a")(x, train)
        x = conv(c(32), (3, 3), padding="VALID", name="conv2d_2a")(x, train)
        x = conv(c(64), (3, 3), name="conv2d_2b")(x, train)
        x = _max_pool_3x3_s2(x)
        x = conv(c(80), (1, 1), padding="VALID", name="conv2d_3b")(x, train)
        x = conv(c(192), (3, 3), padding="VALID", name="conv2d_4a")(x, train)
        x = _max_pool_3x3_s2(x)
        aux["stem"] = x

        x = Mixed5b(conv=conv, width=self.width, count_include_pad=self.pool_count_include_pad, name="mixed_5b")(
            x, train
        )
        for i in range(self.depths[0]):
            x = ResidualBlock("block35", 0.17, width=self.width, conv=conv, dtype=self.dtype, name=f"block35_{i + 1}")(
                x, train
            )
        aux["block35"] = x

        x = Mixed6a(conv=conv, width=self.width, name="mixed_6a")(x, train)
        for i in range(self.depths[1]):
            x = ResidualBlock("block17", 0.10, width=self.width, conv=conv, dtype=self.dtype, name=f"block17_{i + 1}")(
                x, train
            )
        aux["block17"] = x

        x = Mixed7a(conv=conv, width=self.width, name="mixed_7a")(x, train)
        for i in range(self.depths[2]):
            x = ResidualBlock("block8", 0.20, width=self.width, conv=conv, dtype=self.dtype, name=f"block8_{i + 1}")(
                x, train
            )
        x = ResidualBlock(
            "block8",
            1.0,
            activation=False,
            width=self.width,
            conv=conv,
            dtype=self.dtype,
            name=f"block8_{self.depths[2] + 1}",
        )(x, train)
        aux["block8"] = x

        x = conv(c(1536), (1, 1), name="conv2d_7b")(x, train)
        return x, aux


class Mixed5b(nn.Module):
    """Inception-A stem block (35x35x320 at 299x299 input)."""

    conv: Any
    width: float
    count_include_pad: bool = False

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = functools.partial(channels, width=self.width)
        b0 = self.conv(c(96), (1, 1), name="branch0")(x, train)
        b1 = self.conv(c(48), (1, 1), name="branch1_0")(x, train)
        b1 = self.conv(c(64), (5, 5), name="branch1_1")(b1, train)
        b2 = self.conv(c(64), (1, 1), name="branch2_0")(x, train)
        b2 = self.conv(c(96), (3, 3), name="branch2_1")(b2, train)
        b2 = self.conv(c(96), (3, 3), name="branch2_2")(b2, train)
        b3 = _avg_pool_3x3_same(x, self.count_include_pad)
        b3 = self.conv(c(64), (1, 1), name="branch3_1")(b3, train)
        return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class Mixed6a(nn.Module):
    """Reduction-A block."""

    conv: Any
    width: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = functools.partial(channels, width=self.width)
        b0 = self.conv(c(384), (3, 3), strides=2, padding="VALID", name="branch0")(x, train)
        b1 = self.conv(c(256), (1, 1), name="branch1_0")(x, train)
        b1 = self.conv(c(256), (3, 3), name="branch1_1")(b1, train)
        b1 = self.conv(c(384), (3, 3), strides=2, padding="VALID", name="branch1_2")(b1, train)
        return jnp.concatenate([b0, b1, _max_pool_3x3_s2(x)], axis=-1)


class Mixed7a(nn.Module):
    """Reduction-B block."""

    conv: Any
    width: float

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        c = functools.partial(channels, width=self.width)
        b0 = self.conv(c(256), (1, 1), name="branch0_0")(x, train)
        b0 = self.conv(c(384), (3, 3), strides=2, padding="VALID", name="branch0_1")(b0, train)
        b1 = self.conv(c(256), (1, 1), name="branch1_0")(x, train)
        b1 = self.conv(c(288), (3, 3), strides=2, padding="VALID", name="branch1_1")(b1, train)
        b2 = self.conv(c(256), (1, 1), name="branch2_0")(x, train)
        b2 = self.conv(c(288), (3, 3), name="branch2_1")(b2, train)
        b2 = self.conv(c(320), (3, 3), strides=2, padding="VALID", name="branch2_2")(b2, train)
        return jnp.concatenate([b0, b1, b2, _max_pool_3x3_s2(x)], axis=-1)


def feature_map_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the conv_7b map for an input of `height` x `width` (e.g. 384x512 -> 10x14)."""

    def one(n: int) -> int:
        n = (n - 3) // 2 + 1  # conv2d_1a
        n = n - 2  # conv2d_2a
        n = (n - 3) // 2 + 1  # maxpool_3a
        n = n - 2  # conv2d_4a
        n = (n - 3) // 2 + 1  # maxpool_5a
        n = (n - 3) // 2 + 1  # mixed_6a
        return (n - 3) // 2 + 1  # mixed_7a

    return one(height), one(width)
