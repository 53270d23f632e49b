"""The training-free default sensitivity map (3 / JND): documented behaviour, reference formulas, jit/vmap/grad."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hasmap_jax.sensitivity import default_sensitivity, jnd_profile, jnd_sensitivity

B = np.array([[1, 1, 1, 1, 1], [1, 2, 2, 2, 1], [1, 2, 0, 2, 1], [1, 2, 2, 2, 1], [1, 1, 1, 1, 1]], float)
G = [
    [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
    [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
    [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]],
]


def reference_jnd(image: np.ndarray) -> np.ndarray:
    """The module docstring's formulas, written out in float64 numpy for one (H, W, 3) image in [0, 1]
    (Chou & Li 1995 background luminance and gradients, NAMM combination, edge-replicated borders)."""
    y = 255.0 * image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    h, w = y.shape
    yp = np.pad(y, 2, mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(yp, (5, 5))  # (h, w, 5, 5)
    bg = (windows * B).sum((-1, -2)) / 32.0
    mg = np.max([np.abs((windows * np.array(g, float)).sum((-1, -2))) for g in G], axis=0) / 16.0
    la = np.where(bg <= 127, 17 * (1 - np.sqrt(bg / 127)) + 3, 3 / 128 * (bg - 127) + 3)
    tm = np.maximum(mg * (0.0001 * bg + 0.115) + (0.5 - 0.01 * bg), 0.0)
    assert la.shape == (h, w)
    return la + tm - 0.3 * np.minimum(la, tm)


def flat(value: float, size: int = 24) -> np.ndarray:
    return np.full((1, size, size, 3), value, np.float32)


def photo_like(n: int = 3, size: int = 40, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a flat patch and a textured patch, in [0, 1]."""
    r = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, size), np.linspace(0, 1, size), indexing="ij")
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        img = 0.2 + 0.6 * (yy * r.uniform() + xx * (1 - r.uniform()))[..., None] * np.ones(3)
        a, b, c, d = size // 8, 3 * size // 8, size // 2, 7 * size // 8
        img[a:b, a:b] = r.uniform(0.2, 0.8)
        img[c:d, c:d] += 0.2 * r.standard_normal((d - c, d - c, 3))
        out[i] = np.clip(img, 0, 1)
    return out


def test_matches_the_documented_formulas():
    x = photo_like()
    got = np.asarray(jnd_profile(jnp.asarray(x)))
    for i in range(len(x)):
        np.testing.assert_allclose(got[i], reference_jnd(x[i]), rtol=2e-5, atol=2e-4)
    np.testing.assert_allclose(np.asarray(jnd_sensitivity(jnp.asarray(x))), 3.0 / got, rtol=1e-6)


def test_flat_scores_higher_than_textured_at_the_same_luminance():
    r = np.random.default_rng(1)
    img = np.full((1, 48, 96, 3), 0.5, np.float32)
    img[0, :, 48:] += (0.15 * r.choice([-1.0, 1.0], (48, 48)))[..., None]  # texture, same mean
    s = np.asarray(jnd_sensitivity(jnp.asarray(img)))[0]
    flat_part, textured = s[8:40, 8:40], s[8:40, 56:88]
    assert flat_part.mean() == pytest.approx(1.0, abs=0.01)
    assert textured.mean() < 0.7 * flat_part.mean()
    # A random texture has a few pixels where all four gradient operators cancel; nearly all others
    # score below the flat patch.
    assert np.mean(textured < flat_part.min()) > 0.9


def test_luminance_dependence():
    levels = np.array([0, 10, 30, 60, 100, 127, 160, 200, 235, 255]) / 255.0
    s = np.array([float(jnd_sensitivity(jnp.asarray(flat(v)))[0, 12, 12]) for v in levels])
    dark, mid, bright = s[1], s[5], s[8]
    assert dark < mid and bright < mid
    assert mid == pytest.approx(1.0, abs=1e-3)  # JND = 3 at background 127 on a flat patch
    # Rising through the dark range (luminance adaptation), falling slowly above mid-grey.
    assert np.all(np.diff(s[:6]) > 0) and np.all(np.diff(s[5:]) < 0)
    assert s[0] < s[-1]  # black hides more than white (LA 20 vs 6)


@pytest.mark.parametrize("kind", ["photo", "black", "white", "noise"])
def test_values_in_unit_interval(kind):
    x = {
        "photo": photo_like(),
        "black": flat(0.0),
        "white": flat(1.0),
        "noise": np.random.default_rng(0).uniform(size=(2, 24, 24, 3)).astype(np.float32),
    }[kind]
    s = np.asarray(jnd_sensitivity(jnp.asarray(x)))
    assert s.shape == x.shape[:3] and s.dtype == np.float32
    assert np.all(s > 0) and np.all(s <= 1.0)


@pytest.mark.slow
def test_jit_equals_eager_and_vmap_equals_loop():
    x = jnp.asarray(photo_like(3, size=24))
    eager = np.asarray(jnd_sensitivity(x))  # op by op
    np.testing.assert_allclose(np.asarray(jax.jit(jnd_sensitivity)(x)), eager, rtol=1e-6, atol=1e-7)
    one = lambda image: jnd_sensitivity(image[None])[0]  # noqa: E731
    vmapped = np.asarray(jax.vmap(one)(x))
    looped = np.stack([np.asarray(one(x[i])) for i in range(len(x))])
    np.testing.assert_allclose(vmapped, looped, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(vmapped, eager, rtol=1e-6, atol=1e-7)


def test_default_model_and_the_attack_use_the_same_map():
    from hasmap_jax.sensitivity import sensitivity_maps

    x = photo_like(2)
    u8 = np.round(x * 255).astype(np.uint8)
    model = default_sensitivity()
    expected = np.asarray(jnd_sensitivity(jnp.asarray(u8 / 255.0, jnp.float32)))
    np.testing.assert_allclose(model.map(u8), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(sensitivity_maps("default", u8 / np.float32(255))), expected, rtol=1e-6)
    assert dict(model.card)["kind"] == "sensitivity"


@pytest.mark.slow
def test_gradient_is_finite():
    x = jnp.asarray(photo_like(2))
    g = jax.jit(jax.grad(lambda v: jnp.sum(jnd_sensitivity(v) * jnp.linspace(0, 1, v.shape[2]))))(x)
    assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0


def test_gradient_is_finite_on_black():
    g = jax.jit(jax.grad(lambda v: jnp.sum(jnd_sensitivity(v))))(jnp.asarray(flat(0.0, 12)))
    assert np.all(np.isfinite(np.asarray(g)))
