"""Loading models from any supported source: shipped names, orbax checkpoints, .pth and .h5 files."""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.arrays import as_unit_float
from hasmap_jax.files import sha256_file
from hasmap_jax.models.koncept import KONCEPT_INPUT_SIZE, KonCept512, quality_logits
from hasmap_jax.scoring import resolve_view_size, view_scores
from hasmap_jax.weights import checkpoint
from hasmap_jax.weights.conversion.common import WeightError
from hasmap_jax.weights.conversion.keras_h5 import HDF5_SIGNATURE

_ZIP_SIGNATURE = b"PK\x03\x04"

#: Computation dtypes `QualityModel.inference` accepts, by name. float16 is left out: its 5-bit
#: exponent can overflow in the residual stream (not normalised) or underflow in input gradients,
#: where bfloat16 has float32's range at the same speed on current accelerators.
_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


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
        from hasmap_jax.models.folding import fold_batchnorm

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
    from hasmap_jax.weights.conversion import koncept

    path = _resolve(source)
    fmt = sniff_format(path)
    if fmt == "checkpoint":
        card = _read_card(path, "quality")
        module = KonCept512.from_config(card["config"])
        size = tuple(card.get("input_size", (299, 299)))
        variables = checkpoint.restore(path, koncept.abstract_variables(module, _trace_size(module, size)))
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
      source: "default" (the training-free JND map, `hasmap_jax.sensitivity.JNDSensitivity`), the
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
    from hasmap_jax.models.vgg16 import SensitivityNet
    from hasmap_jax.weights.conversion import vgg16 as vgg_conversion

    if isinstance(source, str) and source == "default":
        from hasmap_jax.sensitivity import default_sensitivity

        return default_sensitivity()
    path = _resolve(source)
    fmt = sniff_format(path)
    if fmt == "checkpoint":
        card = _read_card(path, "sensitivity")
        module = SensitivityNet.from_config(card["config"])
        expected = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3))))
        return SensitivityModel(module, checkpoint.restore(path, expected), card)
    if fmt == "keras-h5":
        from hasmap_jax.weights.conversion.keras_h5 import read_layers

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
        from hasmap_jax.weights.conversion.keras_h5 import read_layers

        layers = read_layers(path)
        return "quality" if "conv_7b" in layers or "fc_out" in layers else "sensitivity"
    from hasmap_jax.weights.conversion.torch_state import read_state_dict

    keys = read_state_dict(path).keys()
    return "quality" if any(k.startswith(("base.", "fc.")) for k in keys) else "sensitivity"
