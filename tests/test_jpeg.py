"""diff_jpeg's cheaper pieces compute what the plain formulation computes (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_images

from hasmap_jax.transforms import jpeg as J


def reference_diff_jpeg(images, quality):
    """diff_jpeg written plainly: channel slices, reshape-and-mean chroma downsampling and
    jax.image.resize for the upsampling (dense weight matrices), left to autodiff."""
    qy, qc = J.quantization_tables(quality)
    n, h, w, _ = images.shape
    ph, pw = -h % 16, -w % 16
    x = jnp.pad(images * 255.0, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128.0
    y, cb, cr = (J._round_ste(c) for c in (y, cb, cr))
    H, W = y.shape[1:]

    def chroma(c):
        small = J._round_ste(c.reshape(n, H // 2, 2, W // 2, 2).mean(axis=(2, 4)))
        small = J._blocks_roundtrip(small, qc)
        return J._round_ste(jax.image.resize(small, (n, H, W), method="linear", antialias=False))

    y, cb, cr = J._blocks_roundtrip(y, qy), chroma(cb), chroma(cr)
    rgb = jnp.stack(
        [y + 1.402 * (cr - 128.0), y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0), y + 1.772 * (cb - 128.0)],
        axis=-1,
    )
    return J._round_ste(jnp.clip(rgb, 0.0, 255.0))[:, :h, :w] / 255.0


def tie_free_photos(n, h, w, seed):
    """8-bit photos whose luma 0.299 R + 0.587 G + 0.114 B is never exactly k + 1/2.

    At such ties the float32 value lands on either side of the half depending on the order XLA
    evaluates the sum in, so any two formulations may round them differently (and a changed
    8-bit Y level moves its whole 8x8 block after the DCT).
    """
    x = np.round(random_images(n, h, w, seed=seed) * 255).astype(np.int64)
    for _ in range(3):
        tie = (299 * x[..., 0] + 587 * x[..., 1] + 114 * x[..., 2]) % 1000 == 500
        x[..., 2] = np.where(tie, np.where(x[..., 2] < 255, x[..., 2] + 1, x[..., 2] - 1), x[..., 2])
    assert not ((299 * x[..., 0] + 587 * x[..., 1] + 114 * x[..., 2]) % 1000 == 500).any()
    return (x / 255.0).astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("h, w", [(48, 64), (50, 70), (33, 17)])
@pytest.mark.parametrize("quality", [90, 50])
def test_diff_jpeg_matches_plain_formulation(h, w, quality):
    x = jnp.asarray(tie_free_photos(2, h, w, seed=h + w))
    ours, ref = J.diff_jpeg(x, quality), reference_diff_jpeg(x, quality)
    np.testing.assert_allclose(np.asarray(ours) * 255, np.asarray(ref) * 255, rtol=0, atol=1e-3)
    ct = jnp.asarray(np.random.RandomState(1).randn(*x.shape).astype(np.float32))
    g_ours = jax.vjp(lambda v: J.diff_jpeg(v, quality), x)[1](ct)[0]
    g_ref = jax.vjp(lambda v: reference_diff_jpeg(v, quality), x)[1](ct)[0]
    np.testing.assert_allclose(g_ours, g_ref, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_diff_jpeg_vmap_and_jit():
    x = jnp.asarray(tie_free_photos(4, 32, 48, seed=3)).reshape(2, 2, 32, 48, 3)
    f = lambda v: J.diff_jpeg(v, 90)  # noqa: E731
    looped = jnp.stack([f(v) for v in x])
    np.testing.assert_array_equal(jax.jit(jax.vmap(f))(x), looped)
    loss = lambda v: jnp.sum(jnp.cos(3.0 * f(v)))  # noqa: E731
    g_loop = jnp.stack([jax.grad(loss)(v) for v in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss)))(x), g_loop, rtol=0, atol=1e-5)


def test_custom_vjps_match_autodiff():
    x = jnp.asarray(np.random.RandomState(4).rand(2, 6, 8, 3).astype(np.float32) * 255)

    def plain_ycc(v):
        r, g, b = v[..., 0], v[..., 1], v[..., 2]
        return (
            0.299 * r + 0.587 * g + 0.114 * b,
            -0.168736 * r - 0.331264 * g + 0.5 * b + 128.0,
            0.5 * r - 0.418688 * g - 0.081312 * b + 128.0,
        )

    def plain_mean(c):
        return c.reshape(2, 3, 2, 4, 2).mean(axis=(2, 4))

    rs = np.random.RandomState(5)
    for ours, plain, arg in ((J._rgb_to_ycc, plain_ycc, x), (J._mean2x2, plain_mean, x[..., 0])):
        out, vjp = jax.vjp(ours, arg)
        ref, ref_vjp = jax.vjp(plain, arg)
        ct = jax.tree.map(lambda o: jnp.asarray(rs.randn(*o.shape).astype(np.float32)), ref)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-4), out, ref)
        np.testing.assert_allclose(vjp(ct)[0], ref_vjp(ct)[0], rtol=1e-6, atol=1e-6)


def test_dct_runs_at_full_precision():
    # On GPUs the default precision of a float32 einsum is TF32, which moves DCT coefficients
    # across quantisation steps; every contraction in diff_jpeg asks for HIGHEST.
    jaxpr = jax.make_jaxpr(lambda v: J.diff_jpeg(v, 90))(jnp.zeros((1, 16, 16, 3)))
    dots = []

    def walk(jp):
        for eqn in jp.eqns:
            if eqn.primitive.name == "dot_general":
                dots.append(eqn.params["precision"])
            for sub in jax.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jaxpr.jaxpr)
    assert dots and all(p is not None and set(p) == {jax.lax.Precision.HIGHEST} for p in dots), dots
