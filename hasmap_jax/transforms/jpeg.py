"""JPEG: a differentiable approximation (for the attack's loss) and the real thing (Pillow).

The approximation follows baseline JFIF as libjpeg encodes and decodes it: RGB -> YCbCr (ITU-R
BT.601, full range), 4:2:0 chroma subsampling (2x2 mean), level shift, 8x8 DCT-II, division by the
Annex K tables scaled for `quality` exactly as libjpeg's `jpeg_quality_scaling`, rounding (with a
straight-through gradient), dequantisation, inverse DCT, chroma upsampling with libjpeg's "fancy"
triangle filter (= bilinear x2 with half-pixel centres), YCbCr -> RGB, clipping and rounding to
8 bits. Like libjpeg, the YCbCr planes are 8-bit integers on both sides of the DCT: the colour
conversion's, the chroma downsampling's, the inverse DCT's and the upsampling's outputs are rounded
(straight-through); without those roundings the mismatch to Pillow is larger
(tests/test_attack.py::test_diff_jpeg_approximates_pillow). After Shin & Song, "JPEG-resistant
adversarial images" (2017), which showed that
attacking through such a model makes perturbations survive real JPEG.
"""

from __future__ import annotations

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from hasmap_jax.transforms.views import resize_axes

# ITU-T T.81 Annex K, tables K.1 (luminance) and K.2 (chrominance).
_LUMA_TABLE = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float32,
)
_CHROMA_TABLE = np.full((8, 8), 99, np.float32)
_CHROMA_TABLE[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def quantization_tables(quality: int) -> tuple[np.ndarray, np.ndarray]:
    """Luminance and chrominance tables for `quality` 1..100 (libjpeg's scaling, baseline clamp)."""
    if not 1 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 1..100, got {quality}")
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return tuple(np.clip(np.floor((t * scale + 50) / 100), 1, 255) for t in (_LUMA_TABLE, _CHROMA_TABLE))


def _dct_matrix() -> np.ndarray:
    k, n = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    c = np.cos(np.pi * (2 * n + 1) * k / 16) * np.sqrt(2 / 8)
    c[0] /= np.sqrt(2)
    return c.astype(np.float32)


_DCT = _dct_matrix()


def _round_ste(x: jax.Array) -> jax.Array:
    return x + jax.lax.stop_gradient(jnp.round(x) - x)


def _blocks_roundtrip(plane: jax.Array, table: np.ndarray) -> jax.Array:
    """DCT-quantise-dequantise-IDCT of (N, H, W) with H, W multiples of 8."""
    n, h, w = plane.shape
    b = plane.reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4)
    d = jnp.asarray(_DCT)
    # Full float32 products: GPUs would otherwise run these in TF32 (10-bit mantissas), which moves
    # coefficients across quantisation steps.
    hi = jax.lax.Precision.HIGHEST
    coef = jnp.einsum("ij,nabjk,lk->nabil", d, b - 128.0, d, precision=hi)
    coef = _round_ste(coef / table) * table
    b = jnp.einsum("ji,nabjk,kl->nabil", d, coef, d, precision=hi) + 128.0
    b = _round_ste(jnp.clip(b, 0.0, 255.0))  # libjpeg's IDCT writes 8-bit samples
    return b.transpose(0, 1, 3, 2, 4).reshape(n, h, w)


# ITU-R BT.601 full-range YCbCr, as libjpeg's rgb_ycc_convert (rows: Y, Cb, Cr; columns: R, G, B).
_RGB_TO_YCC = ((0.299, 0.587, 0.114), (-0.168736, -0.331264, 0.5), (0.5, -0.418688, -0.081312))


@jax.custom_vjp
def _rgb_to_ycc(x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Y, Cb, Cr planes (N, H, W) of RGB (N, H, W, 3) in 0..255 (before libjpeg's rounding)."""
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    (yr, yg, yb), (br, bg, bb), (rr, rg, rb) = _RGB_TO_YCC
    y = yr * r + yg * g + yb * b
    cb = br * r + bg * g + bb * b + 128.0
    cr = rr * r + rg * g + rb * b + 128.0
    return y, cb, cr


def _rgb_to_ycc_fwd(x):
    return _rgb_to_ycc(x), None


def _rgb_to_ycc_bwd(_, g):
    # The transposed 3x3 mix, written as one stacked pass: autodiff's transpose of the three channel
    # slices is three zero-padded full-size copies of the image summed (slow at 12 MP:
    # docs/results.md, "A 12-megapixel photo on the CPU").
    gy, gcb, gcr = g
    m = _RGB_TO_YCC
    return (jnp.stack([m[0][c] * gy + m[1][c] * gcb + m[2][c] * gcr for c in range(3)], axis=-1),)


_rgb_to_ycc.defvjp(_rgb_to_ycc_fwd, _rgb_to_ycc_bwd)


@jax.custom_vjp
def _mean2x2(c: jax.Array) -> jax.Array:
    """Mean over 2x2 blocks of (N, H, W), H and W even: libjpeg's h2v2 chroma downsampling."""
    # Sums of strided slices: one elementwise pass (a reduction here is handed to a much slower
    # fused kernel on XLA:CPU). Equal to reshape-and-mean: the sums are of 8-bit integers, exact.
    s = (c[:, 0::2, 0::2] + c[:, 0::2, 1::2]) + (c[:, 1::2, 0::2] + c[:, 1::2, 1::2])
    return s * 0.25


def _mean2x2_fwd(c):
    return _mean2x2(c), None


def _mean2x2_bwd(_, g):
    n, h, w = g.shape
    up = jnp.broadcast_to((g * 0.25)[:, :, None, :, None], (n, h, 2, w, 2))
    return (up.reshape(n, 2 * h, 2 * w),)


_mean2x2.defvjp(_mean2x2_fwd, _mean2x2_bwd)


def diff_jpeg(images: jax.Array, quality: int) -> jax.Array:
    """Differentiable JPEG round trip of (N, H, W, 3) RGB in [0, 1] at `quality` (static)."""
    qy, qc = quantization_tables(quality)
    n, h, w, _ = images.shape
    ph, pw = -h % 16, -w % 16
    x = images * 255.0
    if ph or pw:  # libjpeg replicates the last row and column up to whole 16x16 MCUs
        x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    y, cb, cr = (_round_ste(c) for c in _rgb_to_ycc(x))  # libjpeg converts to 8-bit YCbCr
    H, W = y.shape[1:]

    def chroma(c):
        small = _round_ste(_mean2x2(c))
        small = _blocks_roundtrip(small, qc)
        # libjpeg's "fancy" upsampling is this triangle filter (and works in integers too, rounding
        # biases aside). Banded: jax.image.resize's dense weight matrices cost ~170 GFLOP per
        # 12 MP photo for these two planes; here each output reads its 2 taps per axis. One axis
        # after the other: both in one pass would be recomputed for each RGB channel of the fused
        # colour conversion that reads it (slower for the whole round trip: docs/results.md,
        # "A 12-megapixel photo on the CPU").
        return _round_ste(resize_axes(resize_axes(small, (1,), (H,)), (2,), (W,)))

    y, cb, cr = _blocks_roundtrip(y, qy), chroma(cb), chroma(cr)
    rgb = jnp.stack(
        [y + 1.402 * (cr - 128.0), y - 0.344136 * (cb - 128.0) - 0.714136 * (cr - 128.0), y + 1.772 * (cb - 128.0)],
        axis=-1,
    )
    rgb = _round_ste(jnp.clip(rgb, 0.0, 255.0))
    if ph or pw:
        rgb = rgb[:, :h, :w]
    return rgb / 255.0


def pillow_jpeg(images: np.ndarray, quality: int) -> np.ndarray:
    """Real JPEG round trip through Pillow (`save(format="JPEG", quality=quality)`), uint8 in and out.

    What the MediaEval 2020 protocol does to every protected image before scoring (quality 90).
    """
    return pillow_roundtrip(images, "JPEG", quality)


def pillow_roundtrip(images: np.ndarray, format: str, quality: int) -> np.ndarray:
    """Each uint8 image saved by Pillow as `format` ("JPEG", "WEBP") at `quality` and decoded to RGB."""
    out = []
    for im in np.asarray(images, np.uint8):
        buf = io.BytesIO()
        Image.fromarray(im).save(buf, format=format, quality=int(quality))
        buf.seek(0)
        with Image.open(buf) as decoded:
            out.append(np.asarray(decoded.convert("RGB")))
    return np.stack(out)


def pillow_jpeg_chain(images: np.ndarray, chain) -> list[np.ndarray]:
    """uint8 images after each real (Pillow) JPEG round trip of `chain` (qualities), one after the other."""
    out, cur = [], images
    for q in chain:
        cur = pillow_jpeg(cur, q)
        out.append(cur)
    return out
