"""Differentiable resize, blur, crop, flip and chains of them, each against the real operation (Pillow).

Bounds are mean absolute differences in 8-bit levels over two 48x64 photos (and odd sizes). The
resampling and blur passes compute Pillow's integer arithmetic, so their bound is 0.01 levels
(measured: 0, bit for bit); the wrong kernels and filters the tests also try land 15-300 times above
it. Chains that contain a JPEG inherit `diff_jpeg`'s approximation and nothing more.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_compiles, random_images
from PIL import Image, ImageFilter

from hasmap_jax.transforms import blur as B
from hasmap_jax.transforms import chain as C
from hasmap_jax.transforms import geometry as G
from hasmap_jax.transforms import profiles as P
from hasmap_jax.transforms import resize as R
from hasmap_jax.transforms.banded import apply_band, pillow_pass
from hasmap_jax.transforms.jpeg import diff_jpeg, pillow_jpeg

BOUND = 0.01  # mean |ours - Pillow| in 8-bit levels, for every operation but JPEG


def photos(h=48, w=64, *, seed=3, smooth=False, lo=0, hi=255) -> np.ndarray:
    x = random_images(2, h, w, seed=seed)
    x = (lo + (hi - lo) * x).round().astype(np.uint8)
    if smooth:  # photo-like: noise blurred (JPEG's approximation is measured on such content)
        x = np.stack([np.asarray(Image.fromarray(i).filter(ImageFilter.GaussianBlur(1.5))) for i in x])
    return x


def unit(x: np.ndarray) -> jax.Array:
    return jnp.asarray(x / 255.0, jnp.float32)


def levels(y) -> np.ndarray:
    return np.asarray(y, np.float64) * 255.0


def mad(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


# ---------------------------------------------------------------- against Pillow


@pytest.mark.slow
@pytest.mark.parametrize("method", ["bicubic", "lanczos", "bilinear"])
@pytest.mark.parametrize("factor", [0.5, 0.6, 0.75, 0.9, 1.0])
def test_downscale_matches_pillow(method, factor):
    for x in (photos(), photos(37, 53, seed=4, smooth=True)):
        ours = levels(R.downscale(unit(x), factor=factor, method=method))
        real = R.pillow_downscale(x, factor=factor, method=method)
        assert ours.shape == real.shape == (2, *R.scaled_size(*x.shape[1:3], factor), 3)
        assert mad(ours, real) <= BOUND


def test_resize_kernel_and_rounding_are_pillows():
    """The bound tells the filter apart: another kernel, or bicubic without Pillow's 8-bit passes and
    edge renormalisation (jax.image.resize), lands far outside it."""
    x = photos()
    size = R.scaled_size(48, 64, 0.75)
    real = R.pillow_resize(x, size)
    assert mad(levels(R.resize(unit(x), size, method="lanczos")), real) > 100 * BOUND
    assert mad(levels(R.resize(unit(x), size, method="bilinear")), real) > 100 * BOUND
    dense = jax.image.resize(jnp.asarray(x, jnp.float32), (2, *size, 3), "cubic", antialias=True)
    assert mad(np.clip(np.round(dense), 0, 255), real) > 10 * BOUND
    # Upscaling (the crop's second half) too, at an odd ratio.
    assert mad(levels(R.resize(unit(x), (61, 83))), R.pillow_resize(x, (61, 83))) <= BOUND


def test_resize_weights_by_hand():
    """Pillow's bicubic (Keys, a = -0.5) halving an axis: the kernel widens to support 4, output j
    centres at 2j + 1, pixel centres sit at distances 0.5, 1.5, 2.5, 3.5 from it, so the taps are
    k(0.25), k(0.75), k(1.25), k(1.75) = 0.8671875, 0.2265625, -0.0703125, -0.0234375 (by hand),
    normalised over the window; at the edge the window is cut and renormalised."""
    m = R.resample_band(16, 8).dense()
    k = np.array([-0.0234375, -0.0703125, 0.2265625, 0.8671875, 0.8671875, 0.2265625, -0.0703125, -0.0234375])
    np.testing.assert_allclose(m[3, 3:11], k / k.sum(), atol=2**-21)  # an inner row: the whole kernel
    assert np.count_nonzero(m[3]) == 8
    np.testing.assert_allclose(m[0, :5], k[3:] / k[3:].sum(), atol=2**-21)  # the edge renormalises
    assert R.resample_band(16, 8).shape == (8, 16) and R.resample_band(16, 8).transpose().shape == (16, 8)


@pytest.mark.slow
@pytest.mark.parametrize("sigma", [0.3, 0.5, 0.8, 1.0, 1.2, 1.5])
def test_gaussian_blur_matches_pillow(sigma):
    for x in (photos(), photos(37, 53, seed=4, smooth=True)):
        ours = levels(jax.jit(lambda v, s=sigma: B.gaussian_blur(v, sigma=s))(unit(x)))
        assert mad(ours, B.pillow_gaussian_blur(x, sigma=sigma)) <= BOUND


def test_blur_is_pillows_box_approximation_of_sigma():
    """Pillow's radius is the standard deviation, reached with three extended boxes: the impulse
    response has variance sigma^2, yet it is not a Gaussian, and the bound tells them apart."""
    for sigma in (0.5, 1.0, 1.5):
        m = np.linalg.matrix_power(B.box_band(41, B.box_radius(sigma)).dense(), B.PASSES)
        response = m[:, 20]
        offsets = np.arange(41) - 20
        assert np.sum(response * offsets**2) / response.sum() == pytest.approx(sigma**2, rel=1e-5)
    assert B.box_radius(1.0) == pytest.approx(0.25) and B.box_radius(1.5) == pytest.approx(1.0384616, rel=1e-6)
    x = photos()
    real = B.pillow_gaussian_blur(x, sigma=1.0)
    import scipy.ndimage as nd

    gaussian = np.round(nd.gaussian_filter(x.astype(np.float64), (0, 1.0, 1.0, 0), mode="nearest"))
    assert mad(gaussian, real) > 10 * BOUND
    assert mad(levels(B.gaussian_blur(unit(x), sigma=1.1)), real) > 10 * BOUND
    assert mad(levels(B.gaussian_blur(unit(x), sigma=0)), B.pillow_gaussian_blur(x, sigma=0)) <= BOUND


@pytest.mark.slow
@pytest.mark.parametrize("fraction", [0.5, 0.8, 0.9, 0.95])
def test_center_crop_resize_matches_pillow(fraction):
    for x in (photos(), photos(37, 53, seed=4)):
        ours = levels(G.center_crop_resize(unit(x), fraction=fraction))
        real = G.pillow_center_crop_resize(x, fraction=fraction)
        assert ours.shape == real.shape == x.shape and mad(ours, real) <= BOUND
    top, left, ch, cw = G.crop_box(48, 64, 0.9)
    assert (top, left, ch, cw) == (2, 3, 43, 58)
    with pytest.raises(ValueError, match="crop fraction"):
        G.crop_box(48, 64, 0.0)


def test_hflip_is_exact():
    x = photos()
    np.testing.assert_array_equal(levels(G.hflip(unit(x))).round(), G.pillow_hflip(x))
    np.testing.assert_array_equal(G.pillow_hflip(x), x[:, :, ::-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    ["jpeg60", "resize0.75+jpeg75", "resize0.5+jpeg85", "blur1+jpeg80", "crop0.9+jpeg85", "flip+jpeg75"],
)
def test_chains_with_jpeg_add_nothing_to_jpegs_approximation(name):
    """A chain ending in JPEG differs from Pillow by what `diff_jpeg` differs from libjpeg on the
    same (exactly transformed) photo, no more; measured 0.42-0.92 levels on these photos."""
    x = photos(smooth=True)
    chain = C.parse_chain(name)
    ours = levels(C.apply_chain(unit(x), chain))
    real = C.pillow_chain(x, chain)
    before = C.pillow_chain(x, chain[:-1])
    jpeg_alone = mad(levels(diff_jpeg(unit(before), chain[-1].value)), pillow_jpeg(before, chain[-1].value))
    assert ours.shape == real.shape
    assert mad(ours, real) <= jpeg_alone + BOUND
    assert mad(ours, real) <= 1.2


def test_chain_without_jpeg_matches_pillow():
    x = photos(37, 53, seed=4)
    chain = C.parse_chain("resize0.75+blur1+crop0.9+flip")
    ours = levels(C.apply_chain(unit(x), chain))
    assert mad(ours, C.pillow_chain(x, chain)) <= BOUND
    assert ours.shape[1:3] == C.chain_output_size(chain, 37, 53) == (28, 40)


def test_pillow_chains_share_prefixes_and_equal_single_chains():
    x = photos(24, 32)
    chains = C.parse_chains("jpeg80,jpeg80+jpeg90,resize0.5,resize0.5+jpeg75,flip")
    for together, chain in zip(C.pillow_chains(x, chains), chains, strict=True):
        np.testing.assert_array_equal(together, C.pillow_chain(x, chain))


def test_webp_is_judging_only():
    x = photos(24, 32)
    (op,) = C.parse_chain("webp80")
    out = op.pillow(x)
    assert out.shape == x.shape and out.dtype == np.uint8 and 0 < mad(out, x) < 20
    assert not op.differentiable
    with pytest.raises(ValueError, match="no differentiable version"):
        op.apply(unit(x))


# ---------------------------------------------------------------- gradients, jit, vmap


def test_pass_gradient_is_the_transposed_map_and_zero_where_clipped():
    x = jnp.asarray(photos(lo=60, hi=190)[..., :1], jnp.float32)  # mid-range: bicubic does not clip
    band = R.resample_band(64, 45)
    ct = jnp.asarray(np.random.RandomState(0).randn(2, 48, 45, 1).astype(np.float32))
    out, vjp = jax.vjp(lambda v: pillow_pass(v, 2, band), x)
    np.testing.assert_allclose(vjp(ct)[0], np.einsum("nhoc,oi->nhic", ct, band.dense()), atol=1e-4)
    np.testing.assert_allclose(jax.vjp(lambda v: apply_band(v, 2, band), x)[1](ct)[0], vjp(ct)[0], atol=1e-5)
    # A hard edge: bicubic overshoots, Pillow clips, and the clipped outputs pass no gradient.
    edge = jnp.zeros((1, 1, 16, 1)).at[:, :, 8:].set(255.0)
    up = R.resample_band(16, 40)
    pre = np.einsum("oi,i->o", up.dense(), np.asarray(edge[0, 0, :, 0]))
    clipped = (pre < -0.5) | (pre > 255.5)
    assert clipped.any()
    g = jax.grad(lambda v: jnp.sum(pillow_pass(v, 2, up) * jnp.asarray(clipped, jnp.float32)[None, None, :, None]))
    np.testing.assert_array_equal(g(edge), 0.0)


def _downscale(v):
    return R.downscale(v, factor=0.6)


def _downscale_passes(h, w):
    th, tw = R.scaled_size(h, w, 0.6)
    return R.resample_band(h, th).dense(), R.resample_band(w, tw).dense()


def _blur(v):
    return B.gaussian_blur(v, sigma=1.2)


def _blur_passes(h, w):
    return tuple(np.linalg.matrix_power(B.box_band(n, B.box_radius(1.2)).dense(), B.PASSES) for n in (h, w))


@pytest.mark.parametrize("op, passes", [(_downscale, _downscale_passes), (_blur, _blur_passes)], ids=["resize", "blur"])
def test_transform_gradient_is_its_linear_map(op, passes):
    """Straight through each 8-bit rounding: the VJP of the whole transform is the transpose of
    its passes composed (mid-range photos, where nothing clips)."""
    x = unit(photos(lo=60, hi=190))
    out, vjp = jax.vjp(op, x)
    ct = jnp.asarray(np.random.RandomState(1).randn(*out.shape).astype(np.float32))
    mv, mh = passes(*x.shape[1:3])
    expected = np.einsum("oh,nopc,pw->nhwc", mv, np.asarray(ct), mh)
    np.testing.assert_allclose(vjp(ct)[0], expected, atol=1e-4)
    assert float(jnp.abs(vjp(ct)[0]).mean()) > 0.1


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resize0.5+jpeg85", "lanczos0.75", "blur1+jpeg80", "crop0.9+jpeg85", "flip+jpeg75"])
def test_chain_gradients_are_finite(name):
    x = unit(photos(24, 32, smooth=True))
    chain = C.parse_chain(name)
    g = jax.grad(lambda v: jnp.sum(jnp.cos(3.0 * C.apply_chain(v, chain))))(x)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).mean()) > 1e-3


@pytest.mark.slow
def test_chain_jit_equals_eager_and_vmap_equals_loop():
    x = unit(np.stack([photos(24, 32, seed=s) for s in (1, 2)]))  # (2, 2, 24, 32, 3)
    chain = C.parse_chain("resize0.75+blur1+crop0.9+flip")
    f = lambda v: C.apply_chain(v, chain)  # noqa: E731
    looped = jnp.stack([f(v) for v in x])
    np.testing.assert_array_equal(jax.jit(jax.vmap(f))(x), looped)
    loss = lambda v: jnp.sum(jnp.cos(3.0 * f(v)))  # noqa: E731
    g_loop = jnp.stack([jax.grad(loss)(v) for v in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss)))(x), g_loop, atol=1e-5)
    jf = jax.jit(f)
    jf(x[0])
    with count_compiles() as compiles:
        jf(x[1])
    assert compiles() == 0


# ---------------------------------------------------------------- names


def test_parse_names_and_chains():
    chain = C.parse_chain("Resize0.75+JPEG75")
    assert chain == (C.Op("resize", 0.75), C.Op("jpeg", 75)) and C.chain_name(chain) == "resize0.75+jpeg75"
    assert C.chain_name(C.parse_chain("crop.9+flip+blur1.50+lanczos1")) == "crop0.9+flip+blur1.5+lanczos1"
    chains = C.parse_chains("jpeg50,jpeg70,jpeg90,resize0.5,resize0.75,blur1,crop0.9,flip,webp80,jpeg50")
    assert [C.chain_name(c) for c in chains] == [
        "jpeg50",
        "jpeg70",
        "jpeg90",
        "resize0.5",
        "resize0.75",
        "blur1",
        "crop0.9",
        "flip",
        "webp80",
    ]
    assert C.parse_chains(["flip", chain]) == (C.parse_chain("flip"), chain)
    assert C.parse_chain(C.Op("flip")) == (C.Op("flip"),) and C.Op("jpeg", 75).output_size(5, 7) == (5, 7)


@pytest.mark.parametrize(
    "name, match",
    [
        ("jpg50", "unknown operation 'jpg50'.*jpegQ"),
        ("sharpen", "unknown operation"),
        ("jpeg101", r"must be in \[1, 100\]"),
        ("jpeg90.5", "whole quality"),
        ("resize1.5", r"must be in \(0, 1\]"),
        ("resize", "needs a number"),
        ("crop1", r"must be in \(0, 1\)"),
        ("blur0", r"must be in \(0, 10\]"),
        ("flip2", "takes no number"),
        ("resize0.5++jpeg70", "empty operation"),
        ("jpeg50,,flip", "empty name"),
        ("", "empty name"),
    ],
)
def test_parse_errors_say_what_is_accepted(name, match):
    with pytest.raises(ValueError, match=match):
        C.parse_chains(name)


# ---------------------------------------------------------------- profiles


def test_shipped_profiles():
    assert P.PROFILES["off"] is None
    jpeg90 = P.PROFILES["jpeg90"]
    assert jpeg90.jpeg_chain == (90,) and jpeg90.eot is None and jpeg90.checkpoint_names == ("jpeg90",)
    web = P.PROFILES["web"]
    assert web.checkpoint_names == (
        "jpeg90",
        "jpeg75",
        "jpeg50",
        "resize0.75+jpeg75",
        "resize0.5+jpeg85",
        "blur1",
        "crop0.9",
        "flip",
    )
    assert [C.chain_name(c) for c in web.eot.groups[0]] == ["jpeg60", "jpeg70", "jpeg80", "jpeg90", "jpeg95"]
    # Downscales have a group of their own: they are the views that converge slowest (eot_trace.py).
    assert all(c[0].kind == "resize" for c in web.eot.groups[1]) and web.eot.views_per_step == 3
    kinds = {op.kind for c in web.eot.groups[2] for op in c}
    assert kinds == {"blur", "crop", "flip", "jpeg"}
    drawable = [o for g in web.eot.groups[1:] for c in g for o in c]
    values = {op.kind: [] for op in drawable}
    for o in drawable:
        values[o.kind].append(o.value)
    assert 0.5 <= min(values["resize"]) and max(values["resize"]) < 1 and max(values["blur"]) <= 1.5
    assert min(values["crop"]) >= 0.9 and all(60 <= q <= 95 for q in values["jpeg"])


def test_resolve_profile():
    assert P.resolve_profile() is None and P.resolve_profile("off") is None
    assert P.resolve_profile(robust_jpeg=90) == P.PROFILES["jpeg90"] == P.resolve_profile("jpeg90")
    assert P.resolve_profile("jpeg75") == P.resolve_profile(robust_jpeg=75)
    chain = P.resolve_profile(robust_jpeg=(85, 90))
    assert chain.jpeg_chain == (85, 90) and chain.checkpoint_names == ("jpeg85", "jpeg85+jpeg90")
    two = P.resolve_profile("resize0.75+jpeg75,blur1")
    assert two.eot.always == C.parse_chains("resize0.75+jpeg75,blur1") and not two.eot.groups
    assert two.checkpoint_names == ("resize0.75+jpeg75", "blur1")
    five = P.resolve_profile(["jpeg50", "jpeg70", "flip", "blur1", "crop0.9"])
    assert [len(g) for g in five.eot.groups] == [2, 2, 1] and five.eot.drawable == 5
    assert list(five.eot.group_offsets) == [0, 2, 4] and len(five.checkpoints) == 5
    assert P.resolve_profile(P.PROFILES["web"]) is P.PROFILES["web"]
    with pytest.raises(ValueError, match="robust: expected one of.*web"):
        P.resolve_profile("websites")
    with pytest.raises(ValueError, match="not both"):
        P.resolve_profile("web", robust_jpeg=90)
    with pytest.raises(ValueError, match="no differentiable version"):
        P.resolve_profile("webp80,jpeg90")
    with pytest.raises(ValueError, match="robust_jpeg"):
        P.resolve_profile(robust_jpeg=0)


def test_saved_as():
    assert P.PROFILES["jpeg90"].saved_as("jpeg85") == P.resolve_profile(robust_jpeg=(85, 90))
    web = P.PROFILES["web"].saved_as("jpeg85")
    assert web.eot.prefix == C.parse_chain("jpeg85") and web.eot.groups == P.PROFILES["web"].eot.groups
    assert web.checkpoint_names[0] == "jpeg85" and len(web.checkpoints) == 9
    assert all(n.startswith("jpeg85+") for n in web.checkpoint_names[1:])
    resized = P.PROFILES["jpeg90"].saved_as("resize0.5")
    assert resized.eot.prefix == C.parse_chain("resize0.5") and resized.eot.always == (C.parse_chain("jpeg90"),)
    assert resized.checkpoint_names == ("resize0.5", "resize0.5+jpeg90")


def test_eot_draws_are_seeded_and_cover_every_chain():
    eot = P.PROFILES["web"].eot
    steps = jnp.arange(300, dtype=jnp.int32)
    draws = np.asarray(jax.jit(jax.vmap(eot.draw))(steps))
    eager = np.stack([np.asarray(eot.draw(jnp.int32(i))) for i in range(5)])
    np.testing.assert_array_equal(draws[:5], eager)  # the same in and out of jit, one step or many
    assert draws.shape == (300, 3) and draws.dtype == np.int32
    assert (
        [set(draws[:, g]) for g in range(3)]
        == [set(range(len(c))) for c in eot.groups]
        == [
            set(range(5)),
            set(range(4)),
            set(range(6)),
        ]
    )
    assert len({tuple(d) for d in draws[:10]}) > 3  # the draw changes from step to step
    other = dataclasses.replace(eot, seed=1)
    assert not np.array_equal(np.asarray(jax.vmap(other.draw)(steps)), draws)
