"""Loading models from any supported source: shipped names, orbax checkpoints, .pth and .h5 files."""

from __future__ import annotations

import datetime
import functools
import os
from pathlib import Path
from typing import Any

from hasmap_jax.files import sha256_file
from hasmap_jax.models.jnd import default_sensitivity
from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, KonCept512
from hasmap_jax.models.loaded import QualityModel, SensitivityModel
from hasmap_jax.models.variables import WeightError, abstract_variables
from hasmap_jax.models.vgg16 import SensitivityNet
from hasmap_jax.weights import checkpoint
from hasmap_jax.weights.conversion import koncept
from hasmap_jax.weights.conversion import vgg16 as vgg_conversion
from hasmap_jax.weights.conversion.keras_h5 import HDF5_SIGNATURE, read_layers
from hasmap_jax.weights.conversion.torch_state import read_state_dict

_ZIP_SIGNATURE = b"PK\x03\x04"


def weights_dir() -> Path:
    """Where shipped models live: $HASMAP_WEIGHTS, else the `weights/` folder of this checkout (an
    editable install), else the copy installed with the package (`hasmap_jax/weights/shipped`, a wheel)."""
    env = os.environ.get("HASMAP_WEIGHTS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    root = here.parent.parent
    checkout = root / "weights"
    return checkout if (root / "pyproject.toml").is_file() and checkout.is_dir() else here / "shipped"


def shipped_models() -> list[str]:
    d = weights_dir()
    return sorted(p.name for p in d.iterdir() if checkpoint.is_checkpoint(p)) if d.is_dir() else []


def _resolve(source: str | os.PathLike) -> Path:
    path = Path(source).expanduser()
    if path.exists():
        return path
    if isinstance(source, str) and os.sep not in source and "/" not in source:
        shipped = weights_dir() / source
        if checkpoint.is_checkpoint(shipped):
            return shipped
        names = ", ".join(shipped_models()) or "none"
        raise FileNotFoundError(
            f"{source!r} is neither a file nor a directory, nor a model shipped in {weights_dir()} (shipped: {names})"
        )
    raise FileNotFoundError(f"{source}: no such file or directory")


def sniff_format(path: Path) -> str:
    """ "checkpoint", "keras-h5" or "torch", from the directory or the file's first bytes."""
    if path.is_dir():
        if checkpoint.is_checkpoint(path):
            return "checkpoint"
        raise WeightError(f"{path}: a directory without {checkpoint.CARD_NAME}; not a hasmap_jax checkpoint")
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_SIGNATURE:
        return "keras-h5"
    if head[:4] == _ZIP_SIGNATURE or head[:1] == b"\x80":  # torch zip archive or legacy pickle
        return "torch"
    raise WeightError(
        f"{path}: not a weight file this project reads (expected a PyTorch .pth, a Keras .h5 or a "
        "hasmap_jax checkpoint directory)"
    )


def load_quality_model(source: str | os.PathLike = "default") -> QualityModel:
    """A quality model from a shipped name, a checkpoint directory, `KonCept512.pth` or a Keras .h5.

    Args:
      source: the name of a model in `weights/` (e.g. "default"), an orbax checkpoint directory
        written by `hasmap convert`, a PyTorch `KonCept512.pth` state dict, or a Keras KonCept512
        `.h5` file (legacy HDF5, with or without `model_weights/`).

    Raises:
      FileNotFoundError: no such file, directory or shipped model.
      WeightError: the file is not a KonCept512 of a known layout, or its tensors do not match.
    """
    path = _resolve(source)
    fmt = sniff_format(path)
    if fmt == "checkpoint":
        card = _read_card(path, "quality")
        module = KonCept512.from_config(card["config"])
        size = tuple(card.get("input_size", (299, 299)))
        variables = checkpoint.restore(path, abstract_variables(module, _trace_size(module, size)))
        return QualityModel(module, variables, card)
    if fmt == "keras-h5":
        module, variables = koncept.load_keras(path)
        variant = "koncept512-keras"
    else:
        module, variables = koncept.load_torch(path)
        variant = "koncept512-pytorch"
    card = _quality_card(variant, module, path, fmt)
    return QualityModel(module, variables, card)


@functools.lru_cache(maxsize=1)
def default_quality_model() -> QualityModel:
    """The quality model shipped in `weights/default`, loaded once per process."""
    return load_quality_model("default")


def load_sensitivity_model(source: str | os.PathLike = "default"):
    """A sensitivity map model from a shipped name, a checkpoint directory or the authors' Keras .h5.

    Args:
      source: "default" (the training-free JND map, `hasmap_jax.models.jnd.JNDSensitivity`), the
        name of a sensitivity model in `weights/`, an orbax checkpoint directory (from
        `hasmap convert` or `hasmap train-sensitivity`), or a Keras h5 of the authors' network
        (VGG16 + one 3x3 head conv).

    A file with VGG16 weights but no trained head (torchvision `vgg16.pth`, Keras `VGG16` h5) is not
    a sensitivity model: it is refused here. Use it to initialise training instead
    (`hasmap_jax.weights.conversion.vgg16.load_torch` / `load_keras`).

    Raises:
      FileNotFoundError: no such file, directory or shipped model.
      WeightError: not a sensitivity model, or its tensors do not match.
    """
    if isinstance(source, str) and source == "default":
        return default_sensitivity()
    path = _resolve(source)
    fmt = sniff_format(path)
    if fmt == "checkpoint":
        card = _read_card(path, "sensitivity")
        module = SensitivityNet.from_config(card["config"])
        expected = abstract_variables(module, (32, 32))
        return SensitivityModel(module, checkpoint.restore(path, expected), card)
    if fmt == "keras-h5":
        if "head_conv" not in vgg_conversion.from_keras_layers(read_layers(path), source=str(path)):
            raise WeightError(_NO_HEAD.format(path=path))
        module, variables = vgg_conversion.load_keras(path)
    else:
        raise WeightError(_NO_HEAD.format(path=path))
    card = {
        "kind": "sensitivity",
        "variant": f"vgg16-{module.head}",
        "architecture": "VGG16 backbone + sensitivity head",
        "config": module.config(),
        "preprocessing": f"RGB in [0, 1], {module.normalization} normalisation inside the model",
        "output": "sensitivity map in [0, 1] at the input size (1 = a change is most noticeable)",
        "source": {"file": path.name, "format": fmt, "sha256": sha256_file(path)},
    }
    return SensitivityModel(module, variables, card)


_NO_HEAD = (
    "{path}: VGG16 weights without a trained sensitivity head (a 3x3 'head_conv' or FCN score "
    "convs); a map from it would be meaningless. Use a trained sensitivity model, or these weights "
    "to initialise training (hasmap_jax.weights.conversion.vgg16.load_torch / load_keras)."
)


def _read_card(path: Path, kind: str) -> dict[str, Any]:
    card = checkpoint.read_card(path)
    if card["kind"] != kind:
        raise WeightError(f"{path}: a {card['kind']} model, not a {kind} model")
    return card


def _trace_size(module: KonCept512, size: tuple[int, int]) -> tuple[int, int]:
    # Shapes of variables do not depend on the input size; any size the pooling accepts will do.
    return size if module.pooling == "window8" else (75, 75)


def _quality_card(variant: str, module: KonCept512, path: Path, fmt: str) -> dict[str, Any]:
    return {
        "kind": "quality",
        "variant": variant,
        "architecture": "KonCept512: InceptionResNetV2 + MLP head",
        "config": module.config(),
        "input_size": list(KONCEPT_INPUT_SIZE),
        "preprocessing": "RGB in [0, 1] -> (x - 0.5) / 0.5; images scored at the size given",
        "output": "quality score, about 0..100 (KonIQ-10k MOS scale)",
        "source": {"file": path.name, "format": fmt, "sha256": sha256_file(path)},
    }


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Converts a KonCept512 `.pth` / `.h5` (or a sensitivity network) into an orbax checkpoint.

    Writes `dst/variables/` and `dst/model_card.json` atomically; `dst` must not exist.
    """
    dst = Path(dst).expanduser()
    if dst.exists():
        raise FileExistsError(f"{dst} already exists; choose a new output path (nothing was written)")
    src_path = _resolve(src)
    if sniff_format(src_path) == "checkpoint":
        raise WeightError(f"{src_path} is already a hasmap_jax checkpoint; copy it instead")
    kind = _detect_kind(src_path)
    model = load_quality_model(src_path) if kind == "quality" else load_sensitivity_model(src_path)
    # `model.card` describes the source file; the checkpoint records when it was made from it.
    card = {
        **model.card,
        "converted": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return checkpoint.save(dst, model.variables, card)


def _detect_kind(path: Path) -> str:
    fmt = sniff_format(path)
    if fmt == "keras-h5":
        layers = read_layers(path)
        return "quality" if "conv_7b" in layers or "fc_out" in layers else "sensitivity"
    keys = read_state_dict(path).keys()
    return "quality" if any(k.startswith(("base.", "fc.")) for k in keys) else "sensitivity"
