"""The quality model's view of a photo of any size: resize to cover, then centre crop (differentiable)."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np


def view_geometry(height: int, width: int, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(resized height, resized width, top, left) of `fit_view` for a height x width photo."""
    th, tw = size
    scale = max(th / height, tw / width)
    rh, rw = max(th, round(height * scale)), max(tw, round(width * scale))
    return rh, rw, (rh - th) // 2, (rw - tw) // 2


def fit_view(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Resizes (N, H, W, C) images to cover `size` (antialiased bilinear) and centre-crops them.

    The identity when the images already have that size. Linear in the pixels, so a perturbation
    at the photo's own resolution reaches the model through it with exact gradients. Aspect ratio
    is kept; what falls outside the crop is not seen by the model.

    The same linear map as `jax.image.resize(images, (N, rh, rw, C), "linear", antialias=True)`
    followed by the crop (`view_geometry`), computed from each output pixel's few non-zero taps
    instead of jax's dense (out x in) weight matrices: a 4032 -> 512 axis has about 17 taps per
    output, so this is ~100x less work at 12 MP, and the backward pass is the transposed band
    (again gathers: each photo pixel feeds 1-3 view pixels per axis) instead of autodiff's
    scatter-add, which XLA:CPU runs far slower (docs/results.md, "A 12-megapixel photo on the CPU").
    Reverse mode, `jit` and `vmap` work; forward mode (`jax.jvp`) does not (a `custom_vjp`).

    Args:
      images: (N, H, W, C) float (integers are promoted to float32, as `jax.image.resize` does).
      size: (height, width) of the view, static.

    Returns:
      (N, *size, C), the dtype of `images` (float32 for integer input).
    """
    n, h, w, c = images.shape
    th, tw = (int(s) for s in size)
    if (h, w) == (th, tw):
        return images
    if not jnp.issubdtype(images.dtype, jnp.inexact):
        images = images.astype(jnp.float32)
    rh, rw, top, left = view_geometry(h, w, (th, tw))
    return _resample(images, (1, 2), (_Band(h, rh, top, th), _Band(w, rw, left, tw)))


def resize_axes(x: jax.Array, axes: tuple[int, ...], sizes: tuple[int, ...]) -> jax.Array:
    """`jax.image.resize(x, shape, method="linear", antialias=True)` changing only `axes` to `sizes`.

    Banded like `fit_view` (each output reads only the inputs under its triangle: 2 per axis when
    upsampling), with the transposed band as the backward pass. Reverse mode, `jit` and `vmap`
    work, forward mode does not. `x` is float; `axes` and `sizes` are static.
    """
    axes = tuple(a % x.ndim for a in axes)
    bands = tuple(_Band(x.shape[a], int(n), 0, int(n)) for a, n in zip(axes, sizes, strict=True))
    return _resample(x, axes, bands)


def fit_view_np(images, size):
    """`fit_view` on host arrays (float in [0, 1]), returning numpy."""
    return np.asarray(_fit_view_jit(jnp.asarray(images, jnp.float32), tuple(size)))


_fit_view_jit = jax.jit(fit_view, static_argnums=1)


# --------------------------------------------------------------------------------------------
# Banded resampling: each output reads the few inputs under its triangle


@dataclasses.dataclass(frozen=True)
class _Band:
    """One axis of `fit_view`: n_in samples resized to n_full, of which [start, start + n_out) kept.

    Hashable (a static parameter of the `custom_vjp`); `transposed` is the map's transpose, for
    the backward pass.
    """

    n_in: int
    n_full: int
    start: int
    n_out: int
    transposed: bool = False

    def transpose(self) -> _Band:
        return dataclasses.replace(self, transposed=not self.transposed)

    def is_identity(self) -> bool:
        return self.n_in == self.n_full == self.n_out and self.start == 0

    def taps(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, weights), each (outputs, K): output j = sum_k weights[j, k] * input[indices[j, k]]."""
        return _taps(self.n_in, self.n_full, self.start, self.n_out, self.transposed)


def triangle_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_in, n_out) float32 weights of `jax.image.resize(..., "linear", antialias=True)` on one axis.

    A numpy transcription of `compute_weight_mat` in jax/_src/image/scale.py (translation 0, no
    edge padding), in the same float32 operations, so the weights agree to the last bit or two.
    """
    f32 = np.float32
    inv_scale = f32(1.0 / (n_out / n_in))  # jax: 1. / scale, scale = out / in as a Python float
    kernel_scale = max(inv_scale, f32(1.0))  # the triangle widens when downsampling (antialias)
    sample_f = (np.arange(n_out, dtype=f32) + f32(0.5)) * inv_scale - f32(0.5)
    x = np.abs(sample_f[None, :] - np.arange(n_in, dtype=f32)[:, None]) / kernel_scale
    weights = np.maximum(f32(0.0), f32(1.0) - x)
    total = weights.sum(axis=0, keepdims=True, dtype=f32)
    weights = np.where(np.abs(total) > 1000.0 * np.finfo(np.float32).eps, weights / np.where(total != 0, total, 1), 0)
    inside = (sample_f >= -0.5) & (sample_f <= n_in - 0.5)
    return np.where(inside[None, :], weights, 0).astype(f32)


@functools.lru_cache(maxsize=64)
def _taps(n_in: int, n_full: int, start: int, n_out: int, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    m = triangle_weights(n_in, n_full)[:, start : start + n_out]  # (sources, destinations)
    if transposed:
        m = m.T
    nz = m != 0
    any_nz = nz.any(axis=0)
    first = np.where(any_nz, nz.argmax(axis=0), 0)
    last = np.where(any_nz, m.shape[0] - 1 - nz[::-1].argmax(axis=0), -1)
    # The triangle's support is an interval, so each destination's taps are one contiguous run.
    k = max(1, int((last - first + 1).max()))
    src = first[:, None] + np.arange(k)[None, :]
    valid = src <= last[:, None]
    src = np.where(valid, src, first[:, None])  # padding taps: weight 0, an index in range
    weights = np.where(valid, m[src, np.arange(m.shape[1])[:, None]], 0).astype(np.float32)
    return src.astype(np.int32), weights


# Leading sizes up to this are resampled one image at a time.
_MAX_SPLIT = 8


def _apply_taps(x: jax.Array, axes: tuple[int, ...], bands: tuple[_Band, ...]) -> jax.Array:
    """The banded linear map `bands` along `axes` of x, one axis after the other.

    Rows first when `axes` is (1, 2): they are contiguous runs of W * C values, and the second
    pass then works on the already small image (faster than columns first at 12 MP: docs/results.md,
    "A 12-megapixel photo on the CPU").
    """
    for axis, band in zip(axes, bands, strict=True):
        idx, wts = band.taps()
        # As (before, axis, after): the reshape pins each row to a contiguous layout. Without it
        # XLA keeps a gather's output index-major (for the columns pass: W-major) and the next
        # gather reads it across the grain.
        shape = x.shape
        x3 = x.reshape(int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1 :])))
        if x3.shape[0] <= _MAX_SPLIT:
            # A few images (the attack's views): one at a time, so each gather writes whole rows
            # in order. Costs a copy to stack them, still faster for the attack step at 12 MP, with
            # less scratch, than one gather along the middle axis (docs/results.md, "A 12-megapixel
            # photo on the CPU").
            out = jnp.stack([_gather_sum(x3[i], idx, wts) for i in range(x3.shape[0])])
        else:  # Many leading rows (the columns pass): one gather along the middle axis.
            out = jax.vmap(_gather_sum, in_axes=(0, None, None))(x3, idx, wts)
        x = out.reshape(*shape[:axis], idx.shape[0], *shape[axis + 1 :])
    return x


def _gather_sum(x: jax.Array, idx: np.ndarray, wts: np.ndarray) -> jax.Array:
    """out[j] = sum_k wts[j, k] * x[idx[j, k]] along axis 0 of (n, m)."""
    # Accumulate in at least float32 (bf16 inputs would otherwise sum 17 products in bf16).
    acc_dtype = jnp.promote_types(x.dtype, jnp.float32)
    out = None
    for k in range(idx.shape[1]):
        # K gathers of whole rows, summed: XLA fuses them into one loop over the output.
        term = jnp.take(x, idx[:, k], axis=0, mode="clip", indices_are_sorted=True).astype(acc_dtype)
        term = term * jnp.asarray(wts[:, k, None], acc_dtype)
        out = term if out is None else out + term
    return out.astype(x.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _resample(x: jax.Array, axes: tuple[int, ...], bands: tuple[_Band, ...]) -> jax.Array:
    kept = [(a, b) for a, b in zip(axes, bands, strict=True) if not b.is_identity()]
    if not kept:
        return x
    return _apply_taps(x, tuple(a for a, _ in kept), tuple(b for _, b in kept))


def _resample_fwd(x, axes, bands):
    return _resample(x, axes, bands), None


def _resample_bwd(axes, bands, _, g):
    # The map is linear with constant weights: its VJP is the transposed band, gathered again
    # (each input pixel feeds a few outputs) instead of autodiff's scatter-add, which XLA:CPU runs
    # far slower (docs/results.md, "A 12-megapixel photo on the CPU"). Itself a `_resample`, so
    # second derivatives work too.
    # Axes in reverse order: the map's transpose undoes the last axis first, so the large output
    # is written only by the final pass (the order does not change the result: the axes commute).
    return (_resample(g, axes[::-1], tuple(b.transpose() for b in bands[::-1])),)


_resample.defvjp(_resample_fwd, _resample_bwd)
