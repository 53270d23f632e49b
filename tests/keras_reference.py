"""Reference Keras models for parity tests: keras.applications networks built offline (JAX backend)."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import numpy as np  # noqa: E402


def koncept512_keras(input_shape=(299, 331, 3), seed: int = 0, head_widths=(2048, 1024, 256)):
    """KonCept512 as kuti builds it: keras.applications.InceptionResNetV2(include_top=False) ->
    GlobalAveragePooling2D 'final_gap' -> Dense(relu)/BatchNormalization/Dropout x3 -> Dense(1),
    with random weights and realistic random BatchNorm statistics (see `calibrate_batchnorm`)."""
    import keras

    keras.utils.set_random_seed(seed)
    keras.backend.clear_session()
    base = keras.applications.InceptionResNetV2(weights=None, include_top=False, input_shape=input_shape)
    x = keras.layers.GlobalAveragePooling2D(name="final_gap")(base.output)
    for i, (n, rate) in enumerate(zip(head_widths, (0.25, 0.25, 0.5), strict=True)):
        x = keras.layers.Dense(n, activation="relu", name=f"fc_fc{i}")(x)
        x = keras.layers.BatchNormalization(name=f"fc_bn{i}")(x)
        x = keras.layers.Dropout(rate, name=f"fc_do{i}")(x)
    x = keras.layers.Dense(1, name="fc_out")(x)
    model = keras.Model(base.input, x)
    calibrate_batchnorm(model, (2, *input_shape), seed)
    return model


def vgg16_keras(input_shape=(64, 96, 3), seed: int = 0):
    """keras.applications.VGG16(include_top=False) with random weights."""
    import keras

    keras.utils.set_random_seed(seed)
    keras.backend.clear_session()
    return keras.applications.VGG16(weights=None, include_top=False, input_shape=input_shape)


def calibrate_batchnorm(model, batch_shape, seed: int) -> None:
    """Measures BN statistics on a random batch in [-1, 1] (momentum 0 makes one step set them),
    then perturbs them and the affine terms: random weights with unit statistics would blow up."""
    import keras

    rng = np.random.RandomState(seed + 1)
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in bns:
        layer.momentum = 0.0
    model(rng.uniform(-1, 1, batch_shape).astype("float32"), training=True)
    for layer in bns:
        layer.moving_variance.assign(np.asarray(layer.moving_variance) * (rng.rand(*layer.moving_variance.shape) + 0.5))
        mean = np.asarray(layer.moving_mean)
        layer.moving_mean.assign(mean + 0.1 * rng.randn(*mean.shape) * np.sqrt(np.asarray(layer.moving_variance)))
        if layer.gamma is not None:
            layer.gamma.assign(1.0 + 0.2 * rng.randn(*layer.gamma.shape))
        layer.beta.assign(0.1 * rng.randn(*layer.beta.shape))


def save_legacy_h5(model, path) -> None:
    """`model.save(path)` in the legacy HDF5 format (weights under model_weights/)."""
    model.save(path)


def save_keras2_weights_h5(model, path, *, start: int = 1, suffix: str = ":0", seed: int = 0) -> None:
    """Writes the weights the way old Keras 2 `save_weights` laid them out, to test that layout.

    Auto-named layers are renumbered from `start` in creation order (Keras 2 counted from `_1`),
    dataset names get `suffix`, and the `layer_names` attribute is shuffled, since real files do
    not store creation order there.
    """
    import re

    def creation_key(name: str, prefix: str) -> int | None:
        m = re.fullmatch(prefix + r"(?:_(\d+))?", name)
        return None if m is None else int(m.group(1) or 0)

    renames = {}
    for prefix in ("conv2d", "batch_normalization"):
        found = sorted((k, layer.name) for layer in model.layers if (k := creation_key(layer.name, prefix)) is not None)
        renames.update({name: f"{prefix}_{i + start}" for i, (_, name) in enumerate(found)})
    layers = [layer for layer in model.layers if layer.weights]
    order = np.random.RandomState(seed).permutation(len(layers))
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [renames.get(layers[i].name, layers[i].name).encode() for i in order]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in layers:
            name = renames.get(layer.name, layer.name)
            g = f.create_group(name)
            names = []
            for w in layer.weights:
                wname = f"{name}/{w.path.split('/')[-1]}{suffix}"
                g.create_dataset(wname, data=np.asarray(w))
                names.append(wname.encode())
            g.attrs["weight_names"] = names
