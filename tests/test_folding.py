"""BatchNorm folding and the bfloat16 compute dtype: the attack's inference graph equals the model."""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import test_koncept
from conftest import random_images

import hasmap_jax
from hasmap_jax.models import folding
from hasmap_jax.models.folding import fold_batchnorm
from hasmap_jax.models.koncept import KonCept512, koncept512
from hasmap_jax.models.variables import WeightError, abstract_variables, flatten, unflatten

# Every test here folds tiny KonCept512s of both layouts, built once per module: compiling them
# makes whichever test comes first slow.
pytestmark = pytest.mark.slow

# The timm reference of test_koncept, reused: pytest finds fixtures by module attribute.
torch_koncept, torch_loaded = test_koncept.torch_koncept, test_koncept.torch_loaded

TOL = 1e-5  # folded vs unfolded scores, relative to their scale (measured 9e-7 Keras, 2e-7 PyTorch layout)
GRAD_TOL = 1e-5  # the same for input gradients (measured 5e-7 and 6e-7)
TINY = dict(width=0.125, depths=(1, 1, 1), head_widths=(16, 8, 4))
#: Input size of both layouts: an 8x9 map, which the PyTorch layout's "window8" pooling needs (8..15;
#: 384x512 would cost 1.6x more). The Keras layout pools globally and would run at 96x128 (a 1x2 map),
#: but there float32 rounding alone moved its unfolded scores by 3e-6 of their scale from float64, and
#: the folded ones by up to 7e-6 from them: too close to TOL. Pooling 72 positions averages that out
#: (measured 9e-7 folded vs unfolded, about 1.3e-6 either vs float64); compiling costs the same.
SIZE = (299, 331)
LAYOUTS = ["koncept512-keras", "koncept512-pytorch"]


def scale_error(a, b) -> float:
    """max |a - b| over max |b|: the error relative to the scale of the reference values."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@functools.partial(jax.jit, static_argnums=0)
def scores_and_grad(module, variables, x):
    """Scores (N,) and the gradient of their sum with respect to the images (N, H, W, 3)."""
    s, vjp = jax.vjp(lambda x: module.apply(variables, x)[0], x)
    return s, vjp(jnp.ones_like(s))[0]


def random_variables(module: KonCept512, x: np.ndarray, seed: int) -> dict:
    """Random weights and realistic BatchNorm statistics, so that every BN tensor (and epsilon) matters.

    As `torch_reference.randomize_batchnorm` does: the statistics are measured on a batch in train
    mode (as training would), then perturbed, and the affine terms randomised.
    """
    r = np.random.RandomState(seed)

    def weight(path, leaf):
        name = path[-1].key
        if name == "kernel":  # He initialisation keeps ReLU activations of the order of 1
            return (np.sqrt(2.0 / np.prod(leaf.shape[:-1])) * r.randn(*leaf.shape)).astype(np.float32)
        if name == "scale":
            return (1.0 + 0.2 * r.randn(*leaf.shape)).astype(np.float32)
        if name == "bias":
            return (0.1 * r.randn(*leaf.shape)).astype(np.float32)
        return np.zeros(leaf.shape, np.float32)  # batch_stats: measured below

    variables = jax.tree_util.tree_map_with_path(weight, abstract_variables(module))
    # Running averages that start at 0 hold (1 - momentum) x the batch's statistics after one step.
    _, updated = jax.jit(
        lambda v, x: module.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(seed)})
    )(variables, x)
    stats = {p: np.asarray(v, np.float64) / (1 - 0.99) for p, v in flatten(updated["batch_stats"]).items()}
    for p in [p for p in stats if p[-1] == "var"]:
        # A unit that the calibration batch never activates has variance 0, so its BatchNorm scales by
        # 1/sqrt(eps) (30x): a trained network's statistics, from many images, do not have that.
        var = np.maximum(stats[p], 0.1 * np.mean(stats[p])) * (r.rand(*stats[p].shape) + 0.5)
        stats[p] = var
        stats[p[:-1] + ("mean",)] += 0.1 * r.randn(*var.shape) * np.sqrt(var)
    return {**variables, "batch_stats": unflatten({p: v.astype(np.float32) for p, v in stats.items()})}


class Tiny(NamedTuple):
    module: KonCept512
    variables: dict
    images: jax.Array  # (2, H, W, 3)
    scores: jax.Array  # (2,) of the unfolded model
    grad: jax.Array  # (2, H, W, 3): d sum(scores) / d images, unfolded
    folded_module: KonCept512
    folded: dict


def build_tiny(layout: str) -> Tiny:
    module = koncept512(layout, **TINY)
    variables = random_variables(module, jnp.asarray(random_images(16, *SIZE, seed=10)), seed=0)
    x = jnp.asarray(random_images(2, *SIZE, seed=11))
    return Tiny(module, variables, x, *scores_and_grad(module, variables, x), *fold_batchnorm(module, variables))


@pytest.fixture(scope="module")
def tiny():
    """tiny(layout) -> `Tiny`, built once per layout (each compile costs seconds: tests share them)."""
    return functools.cache(build_tiny)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_folded_equals_unfolded(tiny, layout):
    t = tiny(layout)
    fs, fg = scores_and_grad(t.folded_module, t.folded, t.images)
    assert np.ptp(np.asarray(t.scores)) > 1e-2 * np.max(np.abs(t.scores))  # the images score apart: a real test
    assert scale_error(fs, t.scores) < TOL
    assert scale_error(fg, t.grad) < GRAD_TOL


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "wrong",
    [
        lambda affine, gamma, beta, mean, var, eps: affine(gamma, beta, mean, var, 0.0),
        lambda affine, gamma, beta, mean, var, eps: affine(None, beta, mean, var, eps),
        lambda affine, gamma, beta, mean, var, eps: affine(gamma, beta, 0.0 * mean, var, eps),
    ],
    ids=["epsilon-forgotten", "gamma-forgotten", "mean-forgotten"],
)
def test_wrong_fold_is_caught(tiny, layout, monkeypatch, wrong):
    """A fold with a bug fails the parity bound (errors measured, Keras / PyTorch layout: epsilon 1.3 /
    2e-4, where the head's epsilon is 1e-5 and backbone variances near 0.5 dwarf 1e-3; gamma 0.12 / 41;
    mean 1.0 / 1.2)."""
    t = tiny(layout)
    monkeypatch.setattr(folding, "_bn_affine", functools.partial(wrong, folding._bn_affine))
    # A new function to jit: JAX caches traces by function, and `_fold`'s has the right `_bn_affine`.
    fold = folding._fold.__wrapped__
    monkeypatch.setattr(folding, "_fold", jax.jit(lambda *args: fold(*args), static_argnums=2))
    folded_module, folded = fold_batchnorm(t.module, t.variables)
    assert folded_module == t.folded_module  # the same compiled program: only the numbers are wrong
    assert scale_error(scores_and_grad(folded_module, folded, t.images)[0], t.scores) > 10 * TOL


@pytest.mark.parametrize("layout", LAYOUTS)
def test_folded_variables(tiny, layout):
    t = tiny(layout)
    assert t.folded_module == dataclasses.replace(t.module, fold_bn=True)
    assert set(t.folded) == {"params"}  # no batch_stats left
    paths = flatten(t.folded["params"])
    assert not [p for p in paths if p[-2] == "bn" or p[0].startswith("fc_bn")]
    assert ("base", "mixed_5b", "branch1_1", "conv", "bias") in paths
    # Untouched leaves are the input's own arrays (no copies of the residual up-convs or fc_fc0).
    params = t.variables["params"]
    assert paths["base", "block35_1", "conv2d", "kernel"] is params["base"]["block35_1"]["conv2d"]["kernel"]
    assert paths["fc_fc0", "kernel"] is params["fc_fc0"]["kernel"]
    assert jax.tree.map(lambda a: (a.shape, a.dtype), t.folded) == jax.tree.map(
        lambda a: (a.shape, a.dtype), abstract_variables(t.folded_module)
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_backbone_folds_alone_as_in_koncept(tiny, layout):
    t = tiny(layout)
    m = t.module
    backbone = hasmap_jax.InceptionResNetV2(
        width=m.width, depths=m.depths, bn_scale=m.bn_scale, bn_epsilon=m.backbone_bn_epsilon
    )
    folded_backbone, alone = fold_batchnorm(
        backbone, {"params": t.variables["params"]["base"], "batch_stats": t.variables["batch_stats"]["base"]}
    )
    assert folded_backbone == dataclasses.replace(backbone, fold_bn=True)
    jax.tree.map(np.testing.assert_array_equal, alone["params"], t.folded["params"]["base"])


def test_folding_twice_is_a_no_op(tiny):
    t = tiny("koncept512-keras")
    again_module, again = fold_batchnorm(t.folded_module, t.folded)
    assert again_module is t.folded_module and again is t.folded


def test_mismatched_variables_are_named(tiny):
    t = tiny("koncept512-keras")
    flat = flatten(t.variables)
    del flat["batch_stats", "base", "mixed_6a", "branch0", "bn", "var"]
    with pytest.raises(WeightError, match=r"missing \(1\): batch_stats/base/mixed_6a/branch0/bn/var"):
        fold_batchnorm(t.module, unflatten(flat))
    with pytest.raises(WeightError, match="an unfolded model's variables"):
        fold_batchnorm(t.folded_module, t.variables)
    with pytest.raises(TypeError, match="KonCept512"):
        fold_batchnorm(hasmap_jax.SensitivityNet(), t.variables)


def test_folded_module_refuses_training(tiny):
    t = tiny("koncept512-keras")
    with pytest.raises(ValueError, match="inference-only"):
        jax.eval_shape(lambda v, x: t.folded_module.apply(v, x, train=True), t.folded, t.images)


def test_bfloat16_is_close_to_float32(tiny):
    """A bfloat16 backbone (8 significant bits), folded and not, against float32.

    Measured here: score errors of 0.3 and 0.4 % of the scores' scale, input gradients at cosine
    0.87 and 0.82 with float32's (a tiny random network: 4 to 32 channels per conv, so roundings
    barely average out; on the trained default model the cosine is 0.98). The bounds leave room for
    other CPUs and catch a dtype that is not applied.
    """
    t = tiny("koncept512-pytorch")
    for module, variables in [(t.module, t.variables), (t.folded_module, t.folded)]:
        s, g = scores_and_grad(dataclasses.replace(module, dtype=jnp.bfloat16), variables, t.images)
        assert s.dtype == jnp.float32 and g.dtype == jnp.float32  # the head, the scores and the input stay float32
        cos = float(jnp.vdot(g, t.grad) / (jnp.linalg.norm(g) * jnp.linalg.norm(t.grad)))
        assert 10 * TOL < scale_error(s, t.scores) < 2e-2  # bfloat16 it is, and close
        assert cos > 0.7


# ---------------------------------------------------------------- QualityModel.inference


def quality_model(t: Tiny) -> hasmap_jax.QualityModel:
    return hasmap_jax.QualityModel(t.module, t.variables, {"variant": "tiny", "input_size": list(t.images.shape[1:3])})


def test_inference_is_idempotent_and_distinguishable(tiny):
    model = quality_model(tiny("koncept512-keras"))
    fast = model.inference()
    assert fast.module.fold_bn and "batch_stats" not in fast.variables
    assert fast.card["inference"] == {"fold_bn": True, "dtype": "float32"}
    assert fast.card["config"]["fold_bn"] is True and fast.card["variant"] == "tiny"
    again = fast.inference()
    assert jax.tree.structure(again) == jax.tree.structure(fast)
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(fast), strict=True))

    half = model.inference(dtype=jnp.bfloat16)
    assert half.module.dtype == jnp.bfloat16 and half.card["inference"] == {"fold_bn": True, "dtype": "bfloat16"}
    assert jax.tree.structure(half) != jax.tree.structure(fast)  # another aux: jit compiles each once
    assert fast.inference(dtype="bfloat16").module == half.module
    unfolded_half = model.inference(fold_bn=False, dtype="bfloat16")
    assert not unfolded_half.module.fold_bn and unfolded_half.variables is model.variables
    with pytest.raises(ValueError, match="cannot be unfolded"):
        fast.inference(fold_bn=False)
    with pytest.raises(ValueError, match="float16"):
        model.inference(dtype=jnp.float16)


def test_inference_model_is_a_pytree_and_compiles_once(tiny):
    t = tiny("koncept512-keras")
    fast = quality_model(t).inference()
    traces = []

    @jax.jit
    def f(m, x):
        traces.append(1)
        return m.apply(x)

    a = f(fast, t.images)
    b = f(jax.tree.map(lambda v: v * 1.0, fast), t.images)  # new weights, same structure: no retrace
    assert len(traces) == 1
    np.testing.assert_array_equal(a, b)
    assert scale_error(a, t.scores) < TOL


def test_existing_cards_load_unfolded():
    card = json.loads((Path(__file__).resolve().parents[1] / "weights" / "default" / "model_card.json").read_text())
    old_config = {k: v for k, v in card["config"].items() if k != "fold_bn"}  # as cards were before fold_bn
    module = KonCept512.from_config(old_config)
    assert not module.fold_bn and module.config() == {**old_config, "fold_bn": False}
    folded = dataclasses.replace(module, fold_bn=True)
    assert KonCept512.from_config(json.loads(json.dumps(folded.config()))) == folded


# ---------------------------------------------------------------- the real timm reference


def test_folded_torch_parity(torch_loaded):
    """The folded full-size model still matches timm's InceptionResNetV2 KonCept512 (384x512)."""
    model, x, expected = torch_loaded
    assert test_koncept.relative_error(model.inference().score(x), expected) < test_koncept.RTOL
