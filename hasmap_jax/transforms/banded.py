"""Banded linear maps along one image axis (resampling, box blurs), as Pillow computes them on 8-bit images.

Pillow's resampling and box blurs are separable: each pass is a linear map along one axis whose
output reads a few neighbouring inputs, with integer fixed-point weights; the sum of integer pixels
times integer weights is rounded half up (add half, shift right) and clipped to 0..255, and the
next pass reads those 8-bit values. `pillow_pass` computes exactly that, in integers (so it agrees
with Pillow bit for bit: float32 cannot, since the fixed-point sums sit a few 2^-24 from a half
level about as often as the weights are near simple fractions), with a straight-through gradient:
the backward pass is the transposed linear map (`apply_band`), zero where the output was clipped.

Both work from each output's few non-zero taps (K gathers of whole rows, summed) instead of a dense
(out x in) matrix, which at 12 MP would be ~100x the work, and the backward pass gathers again
through the transposed band (each input feeds a few outputs) instead of autodiff's scatter-add,
which XLA:CPU runs far slower (the reasoning of `hasmap_jax.transforms.views.fit_view`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

#: A band's recipe returns (n_out, n_in, rows, cols, weights, bits): the non-zero entries of the map,
#: as integer weights in fixed point with `bits` fractional bits (the real weight is w / 2**bits).
Recipe = Callable[..., tuple[int, int, np.ndarray, np.ndarray, np.ndarray, int]]


@dataclasses.dataclass(frozen=True)
class Band:
    """A linear map along one axis, n_in samples -> n_out, given by a recipe and its arguments.

    Hashable (a static argument of `custom_vjp`s and of compiled programs): `recipe` is a
    module-level function, `args` a tuple of plain values. `transposed` is the map's transpose
    (the backward pass).
    """

    recipe: Recipe
    args: tuple
    transposed: bool = False

    def transpose(self) -> Band:
        return dataclasses.replace(self, transposed=not self.transposed)

    @property
    def shape(self) -> tuple[int, int]:
        """(n_out, n_in) of this map (after the transpose, if any)."""
        n_out, n_in = _entries(self.recipe, self.args)[:2]
        return (n_in, n_out) if self.transposed else (n_out, n_in)

    @property
    def bits(self) -> int:
        return _entries(self.recipe, self.args)[5]

    def taps(self) -> tuple[np.ndarray, np.ndarray]:
        """(indices, integer weights), each (n_out, K): out[j] = sum_k w[j, k] x[idx[j, k]] / 2**bits."""
        return _taps(self.recipe, self.args, self.transposed)

    def dense(self) -> np.ndarray:
        """The map as a dense (n_out, n_in) float64 matrix (tests, small sizes)."""
        n_out, n_in, rows, cols, ints, bits = _entries(self.recipe, self.args)
        m = np.zeros((n_out, n_in))
        np.add.at(m, (rows, cols), ints / float(1 << bits))
        return m.T if self.transposed else m


@functools.lru_cache(maxsize=256)
def _entries(recipe: Recipe, args: tuple):
    return recipe(*args)


@functools.lru_cache(maxsize=256)
def _taps(recipe: Recipe, args: tuple, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    n_out, n_in, rows, cols, ints, _ = _entries(recipe, args)
    if transposed:
        rows, cols, n_out, n_in = cols, rows, n_in, n_out
    # Entries of one (row, col) summed (edge replication maps several taps onto one input), zeros dropped.
    flat = rows.astype(np.int64) * n_in + cols
    uniq, inverse = np.unique(flat, return_inverse=True)
    summed = np.zeros(len(uniq), np.int64)
    np.add.at(summed, inverse, np.asarray(ints, np.int64))
    keep = summed != 0
    uniq, summed = uniq[keep], summed[keep]
    rows, cols = uniq // n_in, uniq % n_in
    counts = np.bincount(rows, minlength=n_out)
    k = max(1, int(counts.max(initial=0)))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    slot = np.arange(len(rows)) - starts[rows]  # `uniq` is sorted by row, then column
    idx = np.zeros((n_out, k), np.int32)
    wts = np.zeros((n_out, k), np.int64)
    idx[rows, slot] = cols
    wts[rows, slot] = summed
    # Padding taps keep weight 0 and an index inside the row's run (a cheap, in-range read).
    pad = np.arange(k)[None, :] >= counts[:, None]
    idx = np.where(pad, idx[:, :1], idx)
    return idx, wts


def _gather_sum(x: Array, axis: int, idx: np.ndarray, wts: np.ndarray, dtype) -> Array:
    """sum_k wts[:, k] * x[idx[:, k]] along `axis`, in `dtype`."""
    shape = x.shape
    x3 = x.reshape(int(np.prod(shape[:axis])), shape[axis], int(np.prod(shape[axis + 1 :])))
    out = None
    for k in range(idx.shape[1]):
        # K gathers of whole rows, summed: XLA fuses them into one loop over the output.
        term = jnp.take(x3, idx[:, k], axis=1, mode="clip").astype(dtype) * jnp.asarray(wts[None, :, k, None], dtype)
        out = term if out is None else out + term
    return out.reshape(*shape[:axis], idx.shape[0], *shape[axis + 1 :])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def apply_band(x: Array, axis: int, band: Band) -> Array:
    """The linear map `band` along `axis` of x (float), in float32 (no rounding).

    Reverse mode, `jit` and `vmap` work (the VJP is the transposed band); forward mode does not.
    `axis` is static and non-negative.
    """
    idx, ints = band.taps()
    wts = (ints / float(1 << band.bits)).astype(np.float32)
    acc = jnp.promote_types(x.dtype, jnp.float32)
    return _gather_sum(x, axis, idx, wts, acc).astype(x.dtype)


def _apply_band_fwd(x, axis, band):
    return apply_band(x, axis, band), None


def _apply_band_bwd(axis, band, _, g):
    return (apply_band(g, axis, band.transpose()),)


apply_band.defvjp(_apply_band_fwd, _apply_band_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def pillow_pass(x: Array, axis: int, band: Band) -> Array:
    """One 8-bit pass of Pillow's: x in 8-bit levels (float 0..255, rounded to integers first), out the same.

    Forward: the integer sum of pixels times fixed-point weights, plus half, shifted right by the
    band's bits, clipped to 0..255: what Pillow stores. Backward: straight through the rounding (the
    transposed map), zero where the output was clipped. Sums stay inside 32 bits as in Pillow
    (int32 with negative weights, uint32 without).
    """
    return _pillow_pass_fwd(x, axis, band)[0]


def _pillow_pass_fwd(x, axis, band):
    idx, ints = band.taps()
    signed = bool((ints < 0).any())
    dtype = jnp.int32 if signed else jnp.uint32
    xi = jnp.clip(jnp.round(x), 0, 255).astype(dtype)
    s = _gather_sum(xi, axis, idx, ints.astype(np.int32 if signed else np.uint32), dtype)
    s = jnp.right_shift(s + dtype(1 << (band.bits - 1)), dtype(band.bits))
    if signed:
        inside = (s >= 0) & (s <= 255)
        s = jnp.clip(s, 0, 255)
    else:
        inside = s <= 255
        s = jnp.minimum(s, dtype(255))
    return s.astype(x.dtype), inside


def _pillow_pass_bwd(axis, band, inside, g):
    return (apply_band(jnp.where(inside, g, 0), axis, band.transpose()),)


pillow_pass.defvjp(_pillow_pass_fwd, _pillow_pass_bwd)
