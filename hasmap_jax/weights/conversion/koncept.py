"""KonCept512 weight conversion: PyTorch `KonCept512.pth` and Keras `koncep512-trained-model.h5`.

Both are table-driven and strict: every tensor of the file maps to exactly one model variable and
every variable is filled, checked against `jax.eval_shape` of the model (see `common.assemble`).
"""

from __future__ import annotations

import os
import re
from typing import Any

import flax.linen as nn
import numpy as np

from hasmap_jax.models.inception_resnet_v2 import ConvBN
from hasmap_jax.models.koncept import KonCept512, koncept512
from hasmap_jax.models.variables import WeightError, abstract_variables
from hasmap_jax.weights.conversion import keras_h5, torch_state
from hasmap_jax.weights.conversion.common import assemble

# Children of `base` (nn.Sequential of Cadene's InceptionResNetV2 without last_linear) by index.
_TORCH_BASE = {
    0: "conv2d_1a",
    1: "conv2d_2a",
    2: "conv2d_2b",
    4: "conv2d_3b",
    5: "conv2d_4a",
    7: "mixed_5b",
    9: "mixed_6a",
    11: "mixed_7a",
    14: "conv2d_7b",
}
_TORCH_REPEATS = {8: "block35", 10: "block17", 12: "block8"}
_TORCH_HEAD = {0: "fc_fc0", 2: "fc_bn0", 4: "fc_fc1", 6: "fc_bn1", 8: "fc_fc2", 10: "fc_bn2", 12: "fc_out"}
_TORCH_LEAF = {
    "weight": ("params", "kernel"),  # BatchNorm "weight" is fixed up below
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def _torch_path(key: str, n_block8: int) -> tuple[str, ...] | None:
    """Flax module path for a KonCept512.pth key without its last component, or None if unknown."""
    parts = key.split(".")
    if parts[0] == "fc" and len(parts) == 3 and parts[1].isdigit() and int(parts[1]) in _TORCH_HEAD:
        return (_TORCH_HEAD[int(parts[1])],)
    if parts[0] != "base" or len(parts) < 3 or not parts[1].isdigit():
        return None
    i, rest = int(parts[1]), parts[2:-1]
    if i in _TORCH_BASE:
        top = (_TORCH_BASE[i],)
    elif i in _TORCH_REPEATS and rest and rest[0].isdigit():
        top = (f"{_TORCH_REPEATS[i]}_{int(rest[0]) + 1}",)
        rest = rest[1:]
    elif i == 13:
        top = (f"block8_{n_block8 + 1}",)
    else:
        return None
    # Cadene's nn.Sequential branches: branch1.0.conv -> branch1_0/conv.
    out, j = [], 0
    while j < len(rest):
        if j + 1 < len(rest) and rest[j + 1].isdigit():
            out.append(f"{rest[j]}_{rest[j + 1]}")
            j += 2
        else:
            out.append(rest[j])
            j += 1
    return ("base", *top, *out) if top[0] != "fc" else top


def infer_torch_config(sd: dict[str, np.ndarray]) -> dict[str, Any]:
    """Width, depths and head widths of a KonCept512.pth-layout state dict."""
    try:
        width = sd["base.0.conv.weight"].shape[0] / 32
        depths = tuple(
            1 + max(int(k.split(".")[2]) for k in sd if k.startswith(f"base.{i}.") and k.split(".")[2].isdigit())
            for i in (8, 10, 12)
        )
        head = tuple(int(sd[f"fc.{i}.weight"].shape[0]) for i in (0, 4, 8))
    except (KeyError, ValueError) as e:
        raise WeightError(
            f"not a KonCept512.pth layout (base.0 .. base.15 backbone + fc.0 .. fc.12 head): missing {e}"
        ) from e
    return dict(width=width, depths=depths, head_widths=head)


def from_torch_state_dict(
    sd: dict[str, np.ndarray], model: KonCept512, *, source: str = "state dict"
) -> dict[str, Any]:
    """Variables for `model` (the "koncept512-pytorch" variant) from a KonCept512.pth state dict."""
    n_block8 = model.depths[2]
    flat, unmapped = {}, []
    for key, value in sd.items():
        if key.endswith("num_batches_tracked"):
            continue
        path, leaf = _torch_path(key, n_block8), key.rsplit(".", 1)[-1]
        if path is None or leaf not in _TORCH_LEAF:
            unmapped.append(key)
            continue
        collection, name = _TORCH_LEAF[leaf]
        is_bn = path[-1] == "bn" or path[-1].startswith("fc_bn")
        if is_bn and leaf == "weight":
            name = "scale"
        elif value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif value.ndim == 2:
            value = value.T  # (out, in) -> (in, out)
        flat[(collection, *path, name)] = value
    return assemble(flat, abstract_variables(model), source=source, unmapped=unmapped)


def load_torch(path: str | os.PathLike, **overrides: Any) -> tuple[KonCept512, dict[str, Any]]:
    """Model and variables from a `KonCept512.pth` file (variant "koncept512-pytorch")."""
    sd = torch_state.read_state_dict(path)
    try:
        config = infer_torch_config(sd)
    except WeightError as e:
        raise WeightError(f"{os.fspath(path)}: {e}") from e
    model = koncept512("koncept512-pytorch", **{**config, **overrides})
    return model, from_torch_state_dict(sd, model, source=os.fspath(path))


def conv_bn_order(model: nn.Module, size: tuple[int, int] = (299, 299)) -> list[tuple[str, ...]]:
    """Paths of the model's ConvBN units in call order (= Keras creation order), from a trace."""
    order: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, ConvBN) and context.method_name == "__call__":
            order.append(tuple(context.module.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract_variables(model, size)
    seen, unique = set(), []
    for p in order:  # init traces each module once, but be safe about repeats
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique


_KERAS_BLOCK = re.compile(r"(block35|block17|block8)_(\d+)_conv")
_KERAS_BN = {
    "gamma": ("params", "scale"),
    "beta": ("params", "bias"),
    "moving_mean": ("batch_stats", "mean"),
    "moving_variance": ("batch_stats", "var"),
}
_KERAS_DENSE = {"kernel": ("params", "kernel"), "bias": ("params", "bias")}


def infer_keras_config(layers: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Width, depths and head widths of a Keras KonCept512 file's layers."""
    try:
        counts = {
            t: max(int(m.group(2)) for n in layers if (m := _KERAS_BLOCK.fullmatch(n)) and m.group(1) == t)
            for t in ("block35", "block17", "block8")
        }
        width = layers["conv_7b"]["kernel"].shape[-1] / 1536
        head = tuple(int(layers[f"fc_fc{i}"]["kernel"].shape[-1]) for i in range(3))
    except (KeyError, ValueError) as e:
        raise WeightError(
            f"not a Keras KonCept512 file (InceptionResNetV2 layers + fc_fc0..fc_out head): missing {e}"
        ) from e
    return dict(width=width, depths=(counts["block35"], counts["block17"], counts["block8"] - 1), head_widths=head)


def from_keras_layers(
    layers: dict[str, dict[str, np.ndarray]], model: KonCept512, *, source: str = "h5 file"
) -> dict[str, Any]:
    """Variables for `model` (the "koncept512-keras" variant) from `keras_h5.read_layers` output."""
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unmapped: list[str] = []
    used: set[str] = set()

    def put(layer: str, path: tuple[str, ...], table: dict[str, tuple[str, str]]) -> None:
        used.add(layer)
        for weight, value in layers[layer].items():
            if weight not in table:
                unmapped.append(f"{layer}/{weight}")
                continue
            collection, name = table[weight]
            flat[(collection, *path, name)] = value

    units = [p for p in conv_bn_order(model) if p[-1] != "conv2d_7b"]
    convs, bns = keras_h5.numbered(layers, "conv2d"), keras_h5.numbered(layers, "batch_normalization")
    if len(convs) != len(units) or len(bns) != len(units):
        raise WeightError(
            f"{source}: the backbone has {len(units)} unnamed conv+BN units, the file has {len(convs)} "
            f"'conv2d_N' and {len(bns)} 'batch_normalization_N' layers; is this the InceptionResNetV2 you meant?"
        )
    for path, conv, bn in zip(units, convs, bns, strict=True):
        put(conv, (*path, "conv"), _KERAS_DENSE)
        put(bn, (*path, "bn"), _KERAS_BN)
    for name in layers:
        m = _KERAS_BLOCK.fullmatch(name)
        if m:
            put(name, ("base", f"{m.group(1)}_{m.group(2)}", "conv2d"), _KERAS_DENSE)
    named = {"conv_7b": ("base", "conv2d_7b", "conv"), "conv_7b_bn": ("base", "conv2d_7b", "bn")}
    named.update({f"fc_fc{i}": (f"fc_fc{i}",) for i in range(3)})
    named.update({f"fc_bn{i}": (f"fc_bn{i}",) for i in range(3)})
    named["fc_out"] = ("fc_out",)
    for name, path in named.items():
        if name in layers:
            put(name, path, _KERAS_BN if "bn" in name else _KERAS_DENSE)
    unmapped += [f"{n}/*" for n in layers if n not in used]
    return assemble(flat, abstract_variables(model), source=source, unmapped=unmapped)


def load_keras(path: str | os.PathLike, **overrides: Any) -> tuple[KonCept512, dict[str, Any]]:
    """Model and variables from a Keras KonCept512 h5 file (variant "koncept512-keras")."""
    layers = keras_h5.read_layers(path)
    try:
        config = infer_keras_config(layers)
    except WeightError as e:
        raise WeightError(f"{os.fspath(path)}: {e}") from e
    model = koncept512("koncept512-keras", **{**config, **overrides})
    return model, from_keras_layers(layers, model, source=os.fspath(path))
