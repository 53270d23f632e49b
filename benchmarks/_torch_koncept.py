"""KonCept512 (InceptionResNetV2 + MLP head) as a plain PyTorch module that loads hasmap_jax's Flax variables.

Used by `torch_peer.py` to run a Flax `KonCept512` (e.g. the shipped default model, Keras layout at
reduced width and depth) in eager PyTorch on the same weights. Written for that purpose after
`hasmap_jax.models.inception_resnet_v2` (itself after `keras.applications.InceptionResNetV2`); the
submodule names mirror the Flax ones (`base.mixed_5b.branch1_0.conv`, `fc_bn0`, ...), so loading is a
name-for-name copy with layout changes only (HWIO -> OIHW kernels, (in, out) -> (out, in) dense).

Numerics that must match the Flax module:
- conv without bias -> BatchNorm (the model's epsilon; a gamma of ones where the layout has none,
  as in Keras) -> ReLU;
- 'VALID' convs are unpadded; every 'SAME' conv here has stride 1 and odd kernels, where TF's SAME
  is symmetric, so torch's `padding=k // 2` is exact;
- mixed_5b's 3x3/1 average pool excludes padding (`count_include_pad` follows the module);
- pooling "global" (mean of the whole map) or "window8" (torch AvgPool2d(8): top-left 8x8 window);
- head Linear -> ReLU -> BatchNorm1d (the model's head epsilon) -> Dropout, then Linear(1).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def channels(n: int, width: float) -> int:
    # Same rounding as hasmap_jax.models.inception_resnet_v2.channels.
    return max(1, int(round(n * width)))


class ConvBN(nn.Module):
    def __init__(self, cin: int, cout: int, kernel, *, stride: int = 1, same: bool = True, eps: float = 1e-3):
        super().__init__()
        kernel = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
        if same and (stride != 1 or any(k % 2 == 0 for k in kernel)):
            # TF SAME pads asymmetrically there; the network never does this.
            raise ValueError("symmetric SAME padding needs stride 1 and odd kernels")
        padding = (kernel[0] // 2, kernel[1] // 2) if same else 0
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=eps)
        self.out_channels = cout

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


_BLOCK_BRANCHES = {  # as in hasmap_jax.models.inception_resnet_v2: per branch, (channels, kernel) convs
    "block35": [[(32, (1, 1))], [(32, (1, 1)), (32, (3, 3))], [(32, (1, 1)), (48, (3, 3)), (64, (3, 3))]],
    "block17": [[(192, (1, 1))], [(128, (1, 1)), (160, (1, 7)), (192, (7, 1))]],
    "block8": [[(192, (1, 1))], [(192, (1, 1)), (224, (1, 3)), (256, (3, 1))]],
}


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, block_type: str, scale: float, *, width: float, eps: float, activation: bool = True):
        super().__init__()
        self.scale, self.activation = scale, activation
        self.branches = []
        total = 0
        for b, branch in enumerate(_BLOCK_BRANCHES[block_type]):
            names, c = [], cin
            for i, (n, k) in enumerate(branch):
                name = f"branch{b}" if len(branch) == 1 else f"branch{b}_{i}"
                self.add_module(name, ConvBN(c, channels(n, width), k, eps=eps))
                names.append(name)
                c = channels(n, width)
            self.branches.append(names)
            total += c
        self.conv2d = nn.Conv2d(total, cin, 1, bias=True)
        self.out_channels = cin

    def forward(self, x):
        outs = []
        for names in self.branches:
            y = x
            for name in names:
                y = getattr(self, name)(y)
            outs.append(y)
        x = x + self.scale * self.conv2d(torch.cat(outs, dim=1))
        return F.relu(x) if self.activation else x


class Mixed5b(nn.Module):
    def __init__(self, cin: int, *, width: float, eps: float, count_include_pad: bool):
        super().__init__()
        c = lambda n: channels(n, width)  # noqa: E731
        self.branch0 = ConvBN(cin, c(96), 1, eps=eps)
        self.branch1_0 = ConvBN(cin, c(48), 1, eps=eps)
        self.branch1_1 = ConvBN(c(48), c(64), 5, eps=eps)
        self.branch2_0 = ConvBN(cin, c(64), 1, eps=eps)
        self.branch2_1 = ConvBN(c(64), c(96), 3, eps=eps)
        self.branch2_2 = ConvBN(c(96), c(96), 3, eps=eps)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=count_include_pad)
        self.branch3_1 = ConvBN(cin, c(64), 1, eps=eps)
        self.out_channels = c(96) + c(64) + c(96) + c(64)

    def forward(self, x):
        b0 = self.branch0(x)
        b1 = self.branch1_1(self.branch1_0(x))
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        b3 = self.branch3_1(self.pool(x))
        return torch.cat([b0, b1, b2, b3], dim=1)


class Mixed6a(nn.Module):
    def __init__(self, cin: int, *, width: float, eps: float):
        super().__init__()
        c = lambda n: channels(n, width)  # noqa: E731
        self.branch0 = ConvBN(cin, c(384), 3, stride=2, same=False, eps=eps)
        self.branch1_0 = ConvBN(cin, c(256), 1, eps=eps)
        self.branch1_1 = ConvBN(c(256), c(256), 3, eps=eps)
        self.branch1_2 = ConvBN(c(256), c(384), 3, stride=2, same=False, eps=eps)
        self.out_channels = c(384) + c(384) + cin

    def forward(self, x):
        b0 = self.branch0(x)
        b1 = self.branch1_2(self.branch1_1(self.branch1_0(x)))
        return torch.cat([b0, b1, F.max_pool2d(x, 3, 2)], dim=1)


class Mixed7a(nn.Module):
    def __init__(self, cin: int, *, width: float, eps: float):
        super().__init__()
        c = lambda n: channels(n, width)  # noqa: E731
        self.branch0_0 = ConvBN(cin, c(256), 1, eps=eps)
        self.branch0_1 = ConvBN(c(256), c(384), 3, stride=2, same=False, eps=eps)
        self.branch1_0 = ConvBN(cin, c(256), 1, eps=eps)
        self.branch1_1 = ConvBN(c(256), c(288), 3, stride=2, same=False, eps=eps)
        self.branch2_0 = ConvBN(cin, c(256), 1, eps=eps)
        self.branch2_1 = ConvBN(c(256), c(288), 3, eps=eps)
        self.branch2_2 = ConvBN(c(288), c(320), 3, stride=2, same=False, eps=eps)
        self.out_channels = c(384) + c(288) + c(320) + cin

    def forward(self, x):
        b0 = self.branch0_1(self.branch0_0(x))
        b1 = self.branch1_1(self.branch1_0(x))
        b2 = self.branch2_2(self.branch2_1(self.branch2_0(x)))
        return torch.cat([b0, b1, b2, F.max_pool2d(x, 3, 2)], dim=1)


class InceptionResNetV2(nn.Module):
    """Backbone without classifier: NCHW input in the backbone's range -> conv_7b map (N, c(1536), h, w)."""

    def __init__(self, *, width=1.0, depths=(10, 20, 9), eps=1e-3, pool_count_include_pad=False):
        super().__init__()
        c = lambda n: channels(n, width)  # noqa: E731
        self.conv2d_1a = ConvBN(3, c(32), 3, stride=2, same=False, eps=eps)
        self.conv2d_2a = ConvBN(c(32), c(32), 3, same=False, eps=eps)
        self.conv2d_2b = ConvBN(c(32), c(64), 3, eps=eps)
        self.conv2d_3b = ConvBN(c(64), c(80), 1, same=False, eps=eps)
        self.conv2d_4a = ConvBN(c(80), c(192), 3, same=False, eps=eps)
        self.mixed_5b = Mixed5b(c(192), width=width, eps=eps, count_include_pad=pool_count_include_pad)
        cin = self.mixed_5b.out_channels
        for i in range(depths[0]):
            self.add_module(f"block35_{i + 1}", ResidualBlock(cin, "block35", 0.17, width=width, eps=eps))
        self.mixed_6a = Mixed6a(cin, width=width, eps=eps)
        cin = self.mixed_6a.out_channels
        for i in range(depths[1]):
            self.add_module(f"block17_{i + 1}", ResidualBlock(cin, "block17", 0.10, width=width, eps=eps))
        self.mixed_7a = Mixed7a(cin, width=width, eps=eps)
        cin = self.mixed_7a.out_channels
        for i in range(depths[2]):
            self.add_module(f"block8_{i + 1}", ResidualBlock(cin, "block8", 0.20, width=width, eps=eps))
        last = f"block8_{depths[2] + 1}"
        self.add_module(last, ResidualBlock(cin, "block8", 1.0, width=width, eps=eps, activation=False))
        self.conv2d_7b = ConvBN(cin, c(1536), 1, eps=eps)
        stages = (
            ["conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool", "conv2d_3b", "conv2d_4a", "maxpool", "mixed_5b"]
            + [f"block35_{i + 1}" for i in range(depths[0])]
            + ["mixed_6a"]
            + [f"block17_{i + 1}" for i in range(depths[1])]
            + ["mixed_7a"]
            + [f"block8_{i + 1}" for i in range(depths[2] + 1)]
            + ["conv2d_7b"]
        )
        self.stages = stages
        self.num_features = c(1536)

    def forward(self, x):
        for name in self.stages:
            x = F.max_pool2d(x, 3, 2) if name == "maxpool" else getattr(self, name)(x)
        return x


class KonCept(nn.Module):
    """KonCept512 layout: images (N, 3, H, W) in [0, 1] -> scores (N,). Attributes as Flax `KonCept512`."""

    def __init__(
        self,
        *,
        width: float = 1.0,
        depths=(10, 20, 9),
        backbone_bn_epsilon: float = 1e-3,
        pool_count_include_pad: bool = False,
        pooling: str = "window8",
        head_widths=(2048, 1024, 256),
        head_bn_epsilon: float = 1e-5,
        dropout_rates=(0.25, 0.25, 0.5),
        input_mean: float = 0.5,
        input_std: float = 0.5,
        bn_scale: bool = True,  # without it (Keras layout) `from_flax` loads a gamma of ones
        fold_bn: bool = False,
        **_ignored: Any,  # other attributes; a numerical one missed here shows in the parity check
    ):
        super().__init__()
        if fold_bn:
            raise ValueError("a folded-BatchNorm KonCept is not supported here; load the unfolded model")
        if pooling not in ("global", "window8"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.pooling, self.input_mean, self.input_std = pooling, input_mean, input_std
        self.base = InceptionResNetV2(
            width=width, depths=tuple(depths), eps=backbone_bn_epsilon, pool_count_include_pad=pool_count_include_pad
        )
        c = self.base.num_features
        for i, (n, rate) in enumerate(zip(head_widths, dropout_rates, strict=True)):
            self.add_module(f"fc_fc{i}", nn.Linear(c, n))
            self.add_module(f"fc_bn{i}", nn.BatchNorm1d(n, eps=head_bn_epsilon))
            self.add_module(f"fc_drop{i}", nn.Dropout(rate))
            c = n
        self.fc_out = nn.Linear(c, 1)
        self.head_depth = len(head_widths)

    def forward(self, images):
        x = self.base((images - self.input_mean) / self.input_std)
        x = x[:, :, :8, :8] if self.pooling == "window8" else x
        y = x.mean(dim=(2, 3))
        for i in range(self.head_depth):
            y = getattr(self, f"fc_drop{i}")(getattr(self, f"fc_bn{i}")(F.relu(getattr(self, f"fc_fc{i}")(y))))
        return self.fc_out(y)[:, 0]


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) or hasattr(v, "items"):
            out.update(_flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = np.asarray(v)
    return out


def from_flax(module, variables) -> KonCept:
    """A `KonCept` in eval mode with the weights of a Flax `KonCept512` `module` and its `variables`.

    Strict: every torch tensor is set from a Flax tensor of the matching shape (or ones for a
    BatchNorm gamma the layout lacks), and every Flax tensor is used; otherwise a ValueError lists
    what did not match.
    """
    model = KonCept(**module.config())
    params = _flatten(variables["params"])
    stats = _flatten(variables.get("batch_stats", {}))
    used: set[tuple[str, tuple[str, ...]]] = set()
    problems: list[str] = []

    def take(col: str, path: tuple[str, ...], shape, transform=lambda a: a):
        table = params if col == "params" else stats
        if path not in table:
            problems.append(f"missing {col}/{'/'.join(path)}")
            return None
        used.add((col, path))
        a = transform(table[path])
        if tuple(a.shape) != tuple(shape):
            problems.append(f"shape {col}/{'/'.join(path)}: {a.shape} vs torch {tuple(shape)}")
            return None
        return torch.from_numpy(np.ascontiguousarray(a, np.float32))

    with torch.no_grad():
        for name, sub in model.named_modules():
            path = tuple(name.split(".")) if name else ()
            if isinstance(sub, nn.Conv2d):
                t = take("params", path + ("kernel",), sub.weight.shape, lambda a: a.transpose(3, 2, 0, 1))
                if t is not None:
                    sub.weight.copy_(t)
                if sub.bias is not None and (t := take("params", path + ("bias",), sub.bias.shape)) is not None:
                    sub.bias.copy_(t)
            elif isinstance(sub, nn.Linear):
                if (t := take("params", path + ("kernel",), sub.weight.shape, lambda a: a.T)) is not None:
                    sub.weight.copy_(t)
                if (t := take("params", path + ("bias",), sub.bias.shape)) is not None:
                    sub.bias.copy_(t)
            elif isinstance(sub, nn.modules.batchnorm._BatchNorm):
                n = sub.num_features
                if path + ("scale",) in params:
                    if (t := take("params", path + ("scale",), (n,))) is not None:
                        sub.weight.copy_(t)
                else:
                    sub.weight.fill_(1.0)  # Keras layout: BatchNorm without gamma
                for attr, col, key in (("bias", "params", "bias"), ("running_mean", "batch_stats", "mean"),
                                       ("running_var", "batch_stats", "var")):  # fmt: skip
                    if (t := take(col, path + (key,), (n,))) is not None:
                        getattr(sub, attr).copy_(t)
    unused = sorted(({("params", p) for p in params} | {("batch_stats", p) for p in stats}) - used)
    problems += [f"unused {col}/{'/'.join(p)}" for col, p in unused]
    if problems:
        raise ValueError(f"Flax -> torch KonCept: {len(problems)} problem(s): " + "; ".join(problems[:20]))
    return model.eval()
