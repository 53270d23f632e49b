"""fit_view and resize_axes: the banded resize equals jax.image.resize (values and gradients)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import count_compiles, random_images

from hasmap_jax.transforms.views import fit_view, fit_view_np, resize_axes, triangle_weights, view_geometry


def reference_fit_view(images, size):
    """The dense original: jax.image.resize (linear, antialiased) to cover `size`, then centre crop."""
    n, h, w, c = images.shape
    if (h, w) == tuple(size):
        return images
    rh, rw, top, left = view_geometry(h, w, size)
    resized = jax.image.resize(images, (n, rh, rw, c), method="linear", antialias=True)
    return jax.lax.dynamic_slice(resized, (0, top, left, 0), (n, *size, c))


# (photo height, width) -> view: down- and upscaling, non-integer ratios, odd sizes, crop on either
# axis, one axis up and the other down, a crop without resizing.
CASES = [
    ((48, 64), (12, 16)),  # exact 4x down
    ((37, 53), (16, 20)),  # odd sizes, non-integer ratios, crop in width
    ((101, 77), (50, 61)),  # crop in height
    ((30, 40), (96, 128)),  # upscaling
    ((13, 90), (20, 20)),  # height up, width down
    ((9, 400), (8, 8)),  # ~50x down in width
    ((40, 60), (40, 50)),  # crop only
    ((3, 5), (11, 2)),
]


@pytest.mark.slow
@pytest.mark.parametrize("shape, size", CASES)
def test_fit_view_matches_jax_resize(shape, size):
    x = jnp.asarray(random_images(2, *shape, seed=1))
    ours, ref = fit_view(x, size), reference_fit_view(x, size)
    assert ours.shape == ref.shape == (2, *size, 3) and ours.dtype == ref.dtype
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-5)
    ct = jnp.asarray(np.random.RandomState(2).randn(*ref.shape).astype(np.float32))
    g_ours = jax.vjp(lambda v: fit_view(v, size), x)[1](ct)[0]
    g_ref = jax.vjp(lambda v: reference_fit_view(v, size), x)[1](ct)[0]
    scale = float(jnp.abs(g_ref).max())
    np.testing.assert_allclose(g_ours, g_ref, rtol=0, atol=1e-5 * max(1.0, scale))


@pytest.mark.parametrize("n_in, n_out", [(4032, 512), (3024, 384), (37, 16), (30, 96), (5, 11), (7, 7), (1, 3)])
def test_triangle_weights_are_jax_weights(n_in, n_out):
    # jax.image.resize of the identity along one axis is its weight matrix (transposed).
    dense = jax.image.resize(jnp.eye(n_in, dtype=jnp.float32), (n_out, n_in), method="linear", antialias=True)
    np.testing.assert_allclose(triangle_weights(n_in, n_out), np.asarray(dense).T, rtol=0, atol=1e-6)


def test_fit_view_identity_is_free():
    x = jnp.asarray(random_images(1, 24, 32))
    assert fit_view(x, (24, 32)) is x
    jaxpr = jax.make_jaxpr(lambda v: fit_view(v, (24, 32)))(x)
    assert not jaxpr.jaxpr.eqns


def test_fit_view_vmap_jit_and_tracing():
    x = jnp.asarray(random_images(6, 45, 70, seed=3)).reshape(3, 2, 45, 70, 3)
    size = (20, 24)
    f = lambda v: fit_view(v, size)  # noqa: E731
    looped = jnp.stack([f(v) for v in x])
    np.testing.assert_allclose(jax.vmap(f)(x), looped, rtol=0, atol=1e-6)
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(x), looped, rtol=0, atol=1e-6)
    loss = lambda v: jnp.sum(jnp.sin(f(v)))  # noqa: E731
    g_loop = jnp.stack([jax.grad(loss)(v) for v in x])
    np.testing.assert_allclose(jax.jit(jax.vmap(jax.grad(loss)))(x), g_loop, rtol=1e-6, atol=1e-6)
    g = jax.jit(jax.grad(loss))
    a, b = x[0], x[1]
    g(a)
    with count_compiles() as compiles:
        g(b)  # same shapes: no new trace or compile
    assert compiles() == 0


def test_fit_view_second_derivative_matches_jax():
    x = jnp.asarray(random_images(1, 23, 31, seed=4))
    v = jnp.asarray(np.random.RandomState(5).randn(*x.shape).astype(np.float32))

    def hvp(fv):
        loss = lambda u: jnp.sum(fv(u, (8, 10)) ** 3)  # noqa: E731
        return jax.grad(lambda u: jnp.vdot(jax.grad(loss)(u), v))(x)

    np.testing.assert_allclose(hvp(fit_view), hvp(reference_fit_view), rtol=1e-4, atol=1e-5)


def test_fit_view_dtypes_and_host():
    x = random_images(2, 40, 30, seed=6)
    ref = np.asarray(reference_fit_view(jnp.asarray(x), (16, 16)))
    np.testing.assert_allclose(fit_view_np(x, (16, 16)), ref, rtol=0, atol=1e-5)
    x8 = jnp.asarray(np.round(x * 255).astype(np.uint8))
    out8 = fit_view(x8, (16, 16))  # integers are promoted as jax.image.resize does
    assert out8.dtype == jnp.float32
    np.testing.assert_allclose(out8, reference_fit_view(x8, (16, 16)), rtol=0, atol=1e-3)
    bf = fit_view(jnp.asarray(x, jnp.bfloat16), (16, 16))
    assert bf.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(bf, np.float32), ref, rtol=0, atol=1e-2)


@pytest.mark.parametrize(
    "shape, axes, sizes",
    [((2, 9, 14), (1,), (18,)), ((2, 9, 14), (1, 2), (18, 28)), ((1, 20, 6, 3), (2,), (4,)), ((5, 7), (-1,), (3,))],
)
def test_resize_axes_matches_jax_resize(shape, axes, sizes):
    x = jnp.asarray(np.random.RandomState(7).rand(*shape).astype(np.float32))
    out_shape = list(shape)
    for a, n in zip(axes, sizes, strict=True):
        out_shape[a] = n
    ref = lambda v: jax.image.resize(v, tuple(out_shape), method="linear", antialias=True)  # noqa: E731
    ours = lambda v: resize_axes(v, axes, sizes)  # noqa: E731
    np.testing.assert_allclose(ours(x), ref(x), rtol=0, atol=1e-5)
    ct = jnp.asarray(np.random.RandomState(8).randn(*out_shape).astype(np.float32))
    np.testing.assert_allclose(jax.vjp(ours, x)[1](ct)[0], jax.vjp(ref, x)[1](ct)[0], rtol=0, atol=1e-5)
