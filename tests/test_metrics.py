"""hasmap_jax.metrics: the one implementation of the distortion metrics and rank statistics."""

from __future__ import annotations

import dm_pix
import jax
import numpy as np
import pytest

from hasmap_jax import metrics


def pair(n=2, h=70, w=50, seed=0):
    r = np.random.RandomState(seed)
    a = (r.rand(n, h, w, 3) * 255).astype(np.uint8)
    b = np.clip(a.astype(int) + r.randint(-6, 7, a.shape), 0, 255).astype(np.uint8)
    return a, b


@pytest.mark.parametrize("max_rows", [7, 13, 59, 60, 1000])
def test_ssim_in_strips_equals_dm_pix(max_rows):
    """Strips (with the last one clamped and overlapping rows masked) count every map row once."""
    a, b = pair()
    got = np.asarray(jax.jit(lambda x, y: metrics.ssim(x, y, max_rows=max_rows))(a, b))
    want = np.asarray(dm_pix.ssim(a.astype(np.float32) / 255, b.astype(np.float32) / 255))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_ssim_strips_see_every_row():
    """A difference confined to the last rows moves the SSIM whatever the strip size."""
    a, _ = pair(n=1, h=64)
    b = a.copy()
    b[0, -3:] = 255 - b[0, -3:]
    for max_rows in (5, 17, 100):
        assert float(metrics.ssim(a, b, max_rows=max_rows)[0]) < 0.999


def test_distortion_against_numpy():
    a, b = pair()
    s = np.random.RandomState(1).rand(*a.shape[:3]).astype(np.float32)
    m = {k: np.asarray(v) for k, v in metrics.distortion(a, b, s).items()}
    d = b.astype(np.float64) / 255 - a.astype(np.float64) / 255
    flat = d.reshape(len(d), -1)
    np.testing.assert_allclose(m["l2"], np.linalg.norm(flat, axis=1), rtol=1e-5)
    np.testing.assert_allclose(m["linf"], np.abs(flat).max(1), rtol=1e-5)
    np.testing.assert_allclose(m["psnr"], -10 * np.log10((flat**2).mean(1)), rtol=1e-5)
    np.testing.assert_allclose(
        m["weighted_l2"], np.sqrt(((s[..., None] * d) ** 2).reshape(len(d), -1).sum(1)), rtol=1e-5
    )
    # float input in [0, 1] is measured alike
    mf = metrics.distortion(a.astype(np.float32) / 255, b.astype(np.float32) / 255, s)
    np.testing.assert_allclose(np.asarray(mf["ssim"]), m["ssim"], atol=1e-6)


def test_distortion_metrics_of_one_pair():
    a, b = pair(n=1)
    m = metrics.distortion_metrics(a[0], b[0], lpips=False)
    assert set(m) == set(metrics.METRICS) and m["lpips"] is None
    assert m["psnr"] > 30 and 0.5 < m["ssim"] < 1 and 0 < m["weighted_l2"] < m["l2"]
    same = metrics.distortion_metrics(a[0], a[0], lpips=False)
    assert same["psnr"] == float("inf") and same["l2"] == 0.0


def test_roc_auc_counts_pairs_ties_half():
    r = np.random.RandomState(0)
    scores = r.randint(0, 5, 200).astype(float)  # many ties
    positive = r.rand(200) < 0.3
    p, n = scores[positive], scores[~positive]
    brute = ((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (len(p) * len(n))
    assert metrics.roc_auc(scores, positive) == pytest.approx(brute, abs=1e-12)
    assert metrics.roc_auc(scores, ~positive) == pytest.approx(1 - brute, abs=1e-12)
    assert np.isnan(metrics.roc_auc(scores, np.zeros(200, bool)))


def test_spearman_with_ties():
    a = np.array([1.0, 2.0, 2.0, 3.0, 5.0])
    b = np.array([10.0, 9.0, 9.0, 4.0, 1.0])

    def ranks(x):
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(1, len(x) + 1)
        for v in np.unique(x):
            r[x == v] = r[x == v].mean()
        return r

    assert metrics.spearman(a, b) == pytest.approx(np.corrcoef(ranks(a), ranks(b))[0, 1])
    assert metrics.spearman(a, -b) == pytest.approx(-metrics.spearman(a, b))
    assert np.isnan(metrics.spearman(a, np.ones(5)))
