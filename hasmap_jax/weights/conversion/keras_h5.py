"""Reads Keras-2 legacy HDF5 weight files (`model.save` and `save_weights`) into {layer: {weight: array}}."""

from __future__ import annotations

import os
import re

import numpy as np

from hasmap_jax.models.variables import WeightError

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def read_layers(path: str | os.PathLike) -> dict[str, dict[str, np.ndarray]]:
    """All weights of a legacy Keras h5 file, grouped by layer name.

    Handles full-model files (weights under `model_weights/`, optimizer state ignored), weight-only
    files, models nested inside models, and dataset names with or without the `:0` suffix. The
    layer name is the group that directly holds the datasets; the weight name is the dataset's name
    without `:0` (`kernel`, `bias`, `gamma`, `beta`, `moving_mean`, `moving_variance`).

    Raises:
      WeightError: the file is not HDF5, is truncated, is a Keras 3 `.weights.h5` file, or holds a
        layer name twice.
    """
    import h5py  # reference-framework extra: only converters need it

    name = os.fspath(path)
    try:
        f = h5py.File(name, "r")
    except OSError as e:
        raise WeightError(f"{name}: not a readable HDF5 file ({e}); is it truncated or of another format?") from e
    layers: dict[str, dict[str, np.ndarray]] = {}
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if _is_keras3(root):
            raise WeightError(
                f"{name}: a Keras 3 '.weights.h5' file; save the model in the legacy format "
                "(model.save('model.h5')) or with Keras 2, then convert that."
            )
        datasets: list[tuple[str, object]] = []
        try:
            root.visititems(lambda n, obj: datasets.append((n, obj)) if isinstance(obj, h5py.Dataset) else None)
            for n, ds in datasets:
                parts = n.split("/")
                if len(parts) < 2:
                    raise WeightError(f"{name}: dataset {n!r} is not inside a layer group")
                layer, weight = parts[-2], re.sub(r":\d+$", "", parts[-1])
                group = layers.setdefault(layer, {})
                if weight in group:
                    raise WeightError(f"{name}: layer {layer!r} holds {weight!r} twice (paths end in {n!r})")
                group[weight] = np.asarray(ds[()])
        except (OSError, KeyError, RuntimeError) as e:
            raise WeightError(f"{name}: could not read the HDF5 data ({e}); the file may be truncated.") from e
    if not layers:
        raise WeightError(f"{name}: an HDF5 file without any weights")
    return layers


def _is_keras3(root) -> bool:
    # Keras 3's own format stores `layers/<name>/vars/<index>` instead of named weights.
    if "layers" not in root or not hasattr(root["layers"], "visit"):
        return False
    names: set[str] = set()
    root["layers"].visit(lambda n: names.add(n.split("/")[-1]))
    return "vars" in names


def layer_number(layer: str, prefix: str) -> int | None:
    """Creation number of an auto-named layer: `conv2d` -> 0, `conv2d_7` -> 7, other names -> None."""
    m = re.fullmatch(re.escape(prefix) + r"(?:_(\d+))?", layer)
    if m is None:
        return None
    return int(m.group(1) or 0)


def numbered(layers: dict[str, dict[str, np.ndarray]], prefix: str) -> list[str]:
    """Names of the auto-named layers `prefix`, `prefix_1`, ... in creation order.

    Keras numbers unnamed layers by creation; old Keras 2 starts at `_1`, tf.keras at no suffix, and a
    session that built other models first starts higher, so only the order is used, never the number.
    (The file's `layer_names` attribute is a topological order, not the creation order.)
    """
    found = [(layer_number(n, prefix), n) for n in layers]
    return [n for k, n in sorted(x for x in found if x[0] is not None)]
