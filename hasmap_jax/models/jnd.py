"""A training-free human sensitivity map from the just-noticeable-difference (JND) literature.

S(x) in [0, 1] says how visible a change at pixel x is: 1 where the smallest visible change is
smallest (flat regions at mid luminance), low where luminance adaptation (dark regions) or
texture / edge masking hide changes. It is the reciprocal of a pixel-domain JND profile:

    bg    = 5x5 weighted mean luminance (Chou & Li 1995, the B operator), 0..255
    mg    = max over 4 directions of the 5x5 weighted mean luminance gradient (Chou & Li's G_k)
    LA    = 17 (1 - sqrt(bg / 127)) + 3         if bg <= 127       (luminance adaptation)
            3 / 128 (bg - 127) + 3              otherwise
    TM    = mg (0.0001 bg + 0.115) + (0.5 - 0.01 bg), floored at 0    (texture masking, Chou & Li)
    JND   = LA + TM - 0.3 min(LA, TM)           (nonlinear additivity model, Yang et al. 2005)
    S     = JND_min / JND = 3 / JND             (JND >= 3, so S is in (0, 1])

References: C.-H. Chou and Y.-C. Li, "A perceptually tuned subband image coder based on the
measure of just-noticeable-distortion profile", IEEE TCSVT 1995; X. K. Yang et al., "Motion-
compensated residue preprocessing in video coding based on just-noticeable-distortion profile",
IEEE TCSVT 2005 (NAMM). No saliency term: the cheap cues we tried do not find people reliably,
and a wrong saliency term moves noise onto faces, the one place it must not go.

Pure JAX: `jit`, `vmap` and `grad` work, any image size.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.arrays import as_unit_float

Array = jax.Array

# Chou & Li's 5x5 background-luminance operator B (weights sum to 32).
_B = np.array([[1, 1, 1, 1, 1], [1, 2, 2, 2, 1], [1, 2, 0, 2, 1], [1, 2, 2, 2, 1], [1, 1, 1, 1, 1]], np.float32)
# Their four directional gradient operators G_1..G_4 (each weighted mean over 16).
_G = np.array(
    [
        [[0, 0, 0, 0, 0], [1, 3, 8, 3, 1], [0, 0, 0, 0, 0], [-1, -3, -8, -3, -1], [0, 0, 0, 0, 0]],
        [[0, 0, 1, 0, 0], [0, 8, 3, 0, 0], [1, 3, 0, -3, -1], [0, 0, -3, -8, 0], [0, 0, -1, 0, 0]],
        [[0, 0, 1, 0, 0], [0, 0, 3, 8, 0], [-1, -3, 0, 3, 1], [0, -8, -3, 0, 0], [0, 0, -1, 0, 0]],
        [[0, 1, 0, -1, 0], [0, 3, 0, -3, 0], [0, 8, 0, -8, 0], [0, 3, 0, -3, 0], [0, 1, 0, -1, 0]],
    ],
    np.float32,
)
#: ITU-R BT.601 luma weights.
_LUMA = (0.299, 0.587, 0.114)


def _filter(y: Array, kernels: np.ndarray) -> Array:
    """Correlates (N, H, W) with K 5x5 kernels (edge-replicated borders) -> (N, H, W, K).

    Written as a sum of shifted copies over each kernel's non-zero taps rather than a convolution:
    XLA fuses it into one pass, where XLA:CPU's convolution of a 12-megapixel photo with 5x5 kernels
    needed an im2col buffer about 25 times the image.
    """
    h, w = y.shape[1:]
    yp = jnp.pad(y, ((0, 0), (2, 2), (2, 2)), mode="edge")
    outs = []
    for kernel in kernels:
        acc = None
        for i, j in zip(*np.nonzero(kernel), strict=True):
            term = float(kernel[i, j]) * yp[:, i : i + h, j : j + w]
            acc = term if acc is None else acc + term
        outs.append(acc)
    return jnp.stack(outs, axis=-1)


def jnd_profile(images: Array) -> Array:
    """Pixel-domain JND (N, H, W) in 8-bit luminance levels (>= 3) of RGB images in [0, 1]."""
    y = 255.0 * jnp.tensordot(images.astype(jnp.float32), jnp.asarray(_LUMA), axes=([-1], [0]))
    bg = _filter(y, _B[None])[..., 0] / 32.0
    mg = jnp.max(jnp.abs(_filter(y, _G)), axis=-1) / 16.0
    la = jnp.where(
        bg <= 127.0, 17.0 * (1.0 - jnp.sqrt(jnp.maximum(bg, 1e-6) / 127.0)) + 3.0, 3.0 / 128.0 * (bg - 127.0) + 3.0
    )
    tm = jnp.maximum(mg * (0.0001 * bg + 0.115) + (0.5 - 0.01 * bg), 0.0)
    return la + tm - 0.3 * jnp.minimum(la, tm)


def jnd_sensitivity(images: Array) -> Array:
    """S = 3 / JND in (0, 1], (N, H, W), of RGB images (N, H, W, 3) in [0, 1]; see the module doc."""
    return 3.0 / jnd_profile(images)


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class JNDSensitivity:
    """The default sensitivity model: `apply` (traceable) and `map` (host), like `SensitivityModel`."""

    card: tuple = (
        ("kind", "sensitivity"),
        ("variant", "jnd-chou-li-namm"),
        ("description", "training-free: 3 / JND, luminance adaptation + texture masking (Chou & Li 1995, NAMM)"),
    )

    def apply(self, images: Array) -> Array:
        return jnd_sensitivity(images)

    def map(self, images) -> np.ndarray:
        return np.asarray(_jnd_map(as_unit_float(images)))


_jnd_map = jax.jit(jnd_sensitivity)


def default_sensitivity() -> JNDSensitivity:
    """The sensitivity model `attack_batch` uses unless told otherwise."""
    return JNDSensitivity()
