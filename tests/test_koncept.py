"""KonCept512 / InceptionResNetV2: parity with real PyTorch (timm) and Keras references, and loaders."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_images

import hasmap_jax
from hasmap_jax.files import sha256_file
from hasmap_jax.models.inception_resnet_v2 import feature_map_size
from hasmap_jax.models.koncept import (
    KONCEPT_INPUT_SIZE,
    POOLINGS,
    VARIANTS,
    KonCept512,
    koncept512,
    pool_features,
    quality_logits,
)
from hasmap_jax.models.variables import WeightError

RTOL = 1e-4  # the parity tolerance (relative, on the score)
SIZE = KONCEPT_INPUT_SIZE  # 384x512: the map is 10x14, where AvgPool2d(8) sees only a corner


def relative_error(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def scores(model, variables, x) -> np.ndarray:
    return np.asarray(jax.jit(lambda v, x: model.apply(v, x)[0])(variables, x))


# ---------------------------------------------------------------- PyTorch KonCept512.pth layout


@pytest.fixture(scope="module")
def torch_koncept(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="reference extra (torch) not installed")
    if importlib.util.find_spec("timm") is None:  # importorskip would import the broken torchvision
        pytest.skip("reference extra (timm) not installed")
    from torch_reference import koncept512_torch

    ref = koncept512_torch(seed=0)
    x = random_images(2, *SIZE, seed=1)
    with torch.no_grad():
        expected = ref(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    path = tmp_path_factory.mktemp("pth") / "KonCept512.pth"
    torch.save(ref.state_dict(), path)
    return path, x, expected, ref


@pytest.fixture(scope="module")
def torch_loaded(torch_koncept):
    path, x, expected, _ = torch_koncept
    return hasmap_jax.load_quality_model(path), x, expected


def test_torch_parity(torch_loaded):
    model, x, expected = torch_loaded
    assert model.card["variant"] == "koncept512-pytorch"
    assert model.module.pooling == "window8"
    assert relative_error(model.score(x), expected) < RTOL


@pytest.mark.parametrize(
    "detail",
    [
        dict(backbone_bn_epsilon=1e-5),  # BN epsilon 1e-3, not PyTorch's default
        dict(pool_count_include_pad=True),  # mixed_5b average pool excludes padding
        dict(pooling="global"),  # AvgPool2d(8) averages only the top-left 8x8 window at 384x512
        dict(head_bn_epsilon=1e-3),  # BatchNorm1d epsilon 1e-5 in the head
    ],
    ids=lambda d: next(iter(d)),
)
def test_torch_parity_details_matter(torch_loaded, detail):
    model, x, expected = torch_loaded
    wrong = dataclasses.replace(model.module, **detail)
    assert relative_error(scores(wrong, model.variables, x), expected) > 10 * RTOL


def test_feature_map_size_matches_model(torch_loaded):
    model, x, _ = torch_loaded
    _, aux = jax.eval_shape(lambda v, x: model.module.apply(v, x), model.variables, x)
    assert aux["features"].shape[1:3] == feature_map_size(*SIZE) == (10, 14)


def test_window8_rejects_maps_it_cannot_pool(torch_loaded):
    model, _, _ = torch_loaded
    with pytest.raises(ValueError, match="8 to 15"):
        jax.eval_shape(lambda v, x: model.module.apply(v, x), model.variables, jnp.zeros((1, 767, 767, 3)))


def test_convert_torch_checkpoint_roundtrip(torch_koncept, torch_loaded, tmp_path):
    from hasmap_jax import cli

    path, x, expected, _ = torch_koncept
    dst = tmp_path / "koncept_ckpt"
    assert cli.main(["convert", str(path), str(dst)]) == 0
    card = json.loads((dst / "model_card.json").read_text())
    assert card["variant"] == "koncept512-pytorch"
    assert card["source"]["sha256"] == sha256_file(path)
    assert card["input_size"] == [384, 512]
    restored = hasmap_jax.load_quality_model(dst)
    assert relative_error(restored.score(x), expected) < RTOL
    # Converting again onto the same path is refused and leaves the checkpoint untouched.
    before = sorted(p.name for p in dst.rglob("*"))
    assert cli.main(["convert", str(path), str(dst)]) == 2
    assert sorted(p.name for p in dst.rglob("*")) == before
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


# ---------------------------------------------------------------- Keras koncep512-trained-model.h5


@pytest.fixture(scope="module")
def keras_koncept(tmp_path_factory):
    pytest.importorskip("keras", reason="reference extra (keras) not installed")
    pytest.importorskip("h5py", reason="reference extra (h5py) not installed")
    import keras_reference

    # 299x299 (an 8x8 map) keeps this quick; the Keras head pools globally at any size.
    ref = keras_reference.koncept512_keras(input_shape=(299, 299, 3), seed=0)
    x = random_images(2, 299, 299, seed=2)
    expected = np.asarray(ref.predict(x * 255.0 / 127.5 - 1.0, verbose=0))[:, 0]
    d = tmp_path_factory.mktemp("h5")
    keras_reference.save_legacy_h5(ref, d / "koncept_full_model.h5")
    keras_reference.save_keras2_weights_h5(ref, d / "koncep512-trained-model.h5", start=1, suffix=":0")
    return d, x, expected, ref


@pytest.mark.parametrize("file", ["koncept_full_model.h5", "koncep512-trained-model.h5"])
def test_keras_parity(keras_koncept, file):
    d, x, expected, _ = keras_koncept
    model = hasmap_jax.load_quality_model(d / file)
    assert model.card["variant"] == "koncept512-keras"
    assert model.module.pooling == "global" and not model.module.bn_scale
    # 299x299 is not the model's input size: score as given, not through the 384x512 view.
    assert relative_error(model.score(x, view_size=None), expected) < RTOL


@pytest.mark.parametrize(
    "detail",
    [dict(backbone_bn_epsilon=1e-5), dict(head_bn_epsilon=1e-5)],
    ids=lambda d: next(iter(d)),
)
def test_keras_parity_details_matter(keras_koncept, detail):
    d, x, expected, _ = keras_koncept
    model = hasmap_jax.load_quality_model(d / "koncept_full_model.h5")
    wrong = dataclasses.replace(model.module, **detail)
    assert relative_error(scores(wrong, model.variables, x), expected) > 10 * RTOL


def test_keras3_weights_format_is_refused(keras_koncept, tmp_path):
    _, _, _, ref = keras_koncept
    path = tmp_path / "model.weights.h5"
    ref.save_weights(path)
    with pytest.raises(WeightError, match="Keras 3"):
        hasmap_jax.load_quality_model(path)


# ---------------------------------------------------------------- strict conversion errors


@pytest.fixture(scope="module")
def tiny_torch_state(torch_koncept):
    """The reference state dict as numpy, to corrupt in tests."""
    _, _, _, ref = torch_koncept
    return {k: v.numpy() for k, v in ref.state_dict().items()}


def _save_state(tmp_path, sd):
    import torch

    path = tmp_path / "bad.pth"
    torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, path)
    return path


def test_missing_tensor_is_named(tiny_torch_state, tmp_path):
    sd = dict(tiny_torch_state)
    del sd["base.8.3.branch2.1.bn.running_var"]
    with pytest.raises(WeightError, match=r"missing \(1\): batch_stats/base/block35_4/branch2_1/bn/var"):
        hasmap_jax.load_quality_model(_save_state(tmp_path, sd))


def test_unexpected_tensor_is_named(tiny_torch_state, tmp_path):
    sd = dict(tiny_torch_state)
    sd["base.16.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightError, match=r"unexpected \(1\): base.16.weight"):
        hasmap_jax.load_quality_model(_save_state(tmp_path, sd))


def test_misshaped_tensor_is_named(tiny_torch_state, tmp_path):
    sd = dict(tiny_torch_state)
    sd["fc.4.bias"] = np.zeros(7, np.float32)
    with pytest.raises(WeightError, match=r"wrong shape \(1\): params/fc_fc1/bias: file \(7,\), model \(1024,\)"):
        hasmap_jax.load_quality_model(_save_state(tmp_path, sd))


def test_truncated_pth_is_a_clear_error(torch_koncept, tmp_path):
    path, _, _, _ = torch_koncept
    cut = tmp_path / "cut.pth"
    cut.write_bytes(path.read_bytes()[: 1 << 20])
    with pytest.raises(WeightError, match="cut.pth: not a loadable PyTorch state dict"):
        hasmap_jax.load_quality_model(cut)


def test_truncated_h5_is_a_clear_error(keras_koncept, tmp_path):
    d, _, _, _ = keras_koncept
    cut = tmp_path / "cut.h5"
    cut.write_bytes((d / "koncept_full_model.h5").read_bytes()[: 1 << 20])
    with pytest.raises(WeightError, match="cut.h5"):
        hasmap_jax.load_quality_model(cut)


@pytest.mark.reference
def test_pickle_with_code_is_refused(tmp_path):
    torch = pytest.importorskip("torch", reason="reference extra (torch) not installed")
    path = tmp_path / "evil.pth"
    torch.save({"base.0.conv.weight": torch.zeros(1), "payload": shutil.rmtree}, path)
    with pytest.raises(WeightError, match="weights_only"):
        hasmap_jax.load_quality_model(path)


@pytest.mark.parametrize("content", [b"hello, not weights\n", b""])
def test_non_weight_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "notes.txt"
    path.write_bytes(content)
    with pytest.raises(WeightError, match="not a weight file"):
        hasmap_jax.load_quality_model(path)


def test_unknown_source_lists_shipped_models():
    with pytest.raises(FileNotFoundError, match="shipped"):
        hasmap_jax.load_quality_model("no-such-model")


def test_damaged_checkpoint_is_a_clear_error(torch_koncept, tmp_path):
    path, _, _, _ = torch_koncept
    dst = hasmap_jax.convert(path, tmp_path / "ckpt")
    (dst / "model_card.json").write_text("{ not json")
    with pytest.raises(WeightError, match="not valid JSON"):
        hasmap_jax.load_quality_model(dst)


# ---------------------------------------------------------------- functional properties (tiny model)

TINY = dict(width=0.125, depths=(1, 1, 1), head_widths=(16, 8, 4))


@pytest.fixture(scope="module", params=["koncept512-pytorch", "koncept512-keras"])
def tiny(request):
    model = koncept512(request.param, **TINY)
    x = random_images(3, 299, 331, seed=3)
    variables = jax.jit(model.init)({"params": jax.random.key(0)}, jnp.asarray(x[:1]))
    # Non-trivial BN statistics, so that batch-vs-single differences would show.
    variables = {
        **variables,
        "batch_stats": jax.tree.map(
            lambda a: a + 0.1 * jnp.abs(jnp.sin(jnp.arange(a.size).reshape(a.shape))), variables["batch_stats"]
        ),
    }
    return model, variables, jnp.asarray(x)


@pytest.mark.slow
def test_jit_equals_eager(tiny):
    model, variables, x = tiny
    eager = model.apply(variables, x)[0]
    np.testing.assert_allclose(scores(model, variables, x), eager, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_vmap_equals_loop_equals_batch(tiny):
    model, variables, x = tiny
    batch = scores(model, variables, x)
    single = jax.jit(lambda v, im: model.apply(v, im[None])[0][0])
    loop = np.array([single(variables, im) for im in x])
    vmapped = jax.jit(jax.vmap(single, in_axes=(None, 0)))(variables, x)
    np.testing.assert_allclose(loop, batch, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(vmapped, batch, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_quality_model_is_a_pytree_and_compiles_once(tiny):
    model, variables, x = tiny
    qm = hasmap_jax.QualityModel(model, variables, {"input_size": [299, 331]})
    traces = []

    @jax.jit
    def f(m, x):
        traces.append(1)
        return m.apply(x)

    a = f(qm, x)
    b = f(jax.tree.map(lambda v: v * 1.0, qm), x)  # new weights, same structure: no retrace
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert len(traces) == 1
    np.testing.assert_allclose(qm.score((np.asarray(x) * 255).round().astype(np.uint8)), a, rtol=1e-2, atol=1e-2)


def test_quality_logits_threshold():
    s = jnp.array([10.0, 49.9, 50.1, 80.0])
    z = quality_logits(s, threshold=50.0)
    np.testing.assert_array_equal(jnp.argmax(z, -1), [1, 1, 0, 0])  # index 0 = high
    np.testing.assert_allclose(z[:, 0] - z[:, 1], 2 * (s - 50.0), rtol=1e-5)
    np.testing.assert_array_equal(jnp.argmax(quality_logits(s, threshold=60.0), -1), [1, 1, 1, 0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((8, 8, 3), np.uint8), "pass images\\[None\\]"),
        (np.zeros((1, 8, 8, 4), np.uint8), "RGB"),
        (np.full((1, 8, 8, 3), 2.0, np.float32), "in \\[0, 1\\]"),
        (np.zeros((1, 8, 8, 3), np.int32), "ambiguous"),
    ],
)
def test_score_rejects_bad_images(tiny, bad, match):
    model, variables, _ = tiny
    with pytest.raises(ValueError, match=match):
        hasmap_jax.QualityModel(model, variables, {}).score(bad)


# ---------------------------------------------------------------- pooling options


def test_published_variants_keep_their_pooling():
    """The two published layouts pool as their checkpoints were trained ("window8", "global");
    "mean_max" is an option of the default model only (the parity tests above check the numerics)."""
    assert VARIANTS["koncept512-pytorch"]["pooling"] == "window8" == KonCept512().pooling
    assert VARIANTS["koncept512-keras"]["pooling"] == "global"
    assert [koncept512(v).pooling for v in ("koncept512-pytorch", "koncept512-keras")] == ["window8", "global"]
    assert set(POOLINGS) == {"global", "window8", "mean_max"}


def test_pool_features():
    """ "global" is the mean over the map, "window8" the mean of its top-left 8x8 window, "mean_max"
    the mean and the per-channel maximum concatenated: one hot location lifts only the maximum."""
    r = np.random.default_rng(0)
    f = jnp.asarray(r.random((2, 10, 14, 5), dtype=np.float32))
    hot = f.at[0, 7, 3, 1].set(40.0)
    np.testing.assert_allclose(pool_features(f, "global"), f.mean(axis=(1, 2)), rtol=1e-6)
    np.testing.assert_allclose(pool_features(f, "window8"), f[:, :8, :8].mean(axis=(1, 2)), rtol=1e-6)
    mm = pool_features(f, "mean_max")
    assert mm.shape == (2, 10)
    np.testing.assert_allclose(mm[:, :5], pool_features(f, "global"), rtol=1e-6)
    np.testing.assert_array_equal(mm[:, 5:], f.max(axis=(1, 2)))
    moved = pool_features(hot, "mean_max") - mm
    assert float(moved[0, 6]) == pytest.approx(40.0 - float(f[0].max(axis=(0, 1))[1]))  # the max: the hot value
    assert float(moved[0, 1]) == pytest.approx((40.0 - float(f[0, 7, 3, 1])) / 140, rel=1e-5)  # the mean: 1/140 of it
    assert not np.asarray(moved[1]).any()
    with pytest.raises(ValueError, match="mean_max"):
        pool_features(f, "max")


def test_mean_max_model():
    """A KonCept512 with pooling "mean_max": scores (N,), the pooled vector (N, 2C) is the mean and the
    max of its own feature map, the head's first layer has 2C inputs and every other variable has the
    published layout's shape; it folds (the attack's inference graph) as the others do."""
    from hasmap_jax.models.folding import abstract_variables, fold_batchnorm

    model = koncept512("koncept512-keras", **TINY, pooling="mean_max")
    x = jnp.asarray(random_images(2, 160, 192, seed=4))
    variables = jax.jit(model.init)({"params": jax.random.key(0)}, x[:1])
    s, aux = jax.jit(model.apply)(variables, x)
    f, c = aux["features"], aux["features"].shape[-1]
    assert s.shape == (2,) and aux["pooled"].shape == (2, 2 * c)
    np.testing.assert_allclose(aux["pooled"][:, :c], f.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(aux["pooled"][:, c:], f.max(axis=(1, 2)))
    shapes = jax.tree.map(lambda a: a.shape, variables)
    plain = jax.tree.map(lambda a: a.shape, abstract_variables(koncept512("koncept512-keras", **TINY)))
    assert shapes["params"]["fc_fc0"]["kernel"] == (2 * c, plain["params"]["fc_fc0"]["kernel"][1])
    shapes["params"]["fc_fc0"]["kernel"] = plain["params"]["fc_fc0"]["kernel"]
    assert shapes == plain
    assert KonCept512.from_config(model.config()) == model
    # non-trivial BatchNorm statistics, so that a wrong fold would show
    variables = {**variables, "batch_stats": jax.tree.map(lambda a: a + 0.3, variables["batch_stats"])}
    folded_module, folded = fold_batchnorm(model, variables)
    np.testing.assert_allclose(
        scores(folded_module, folded, x), scores(model, variables, x), rtol=1e-4, atol=1e-4 * float(jnp.abs(s).max())
    )
