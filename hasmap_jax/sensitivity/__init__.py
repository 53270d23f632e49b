"""Human sensitivity maps: where a change to a photo is noticed (1) and where it is not (0).

jnd      the training-free default: 3 / JND (luminance adaptation + texture masking)
maps     resolving "default" / "uniform" / a model / arrays into per-image maps
render   colour maps and overlays of maps, written as PNG
data     image / target-map pairs for training (tensorflow-datasets)
train    training the learned map (`SensitivityNet`, the paper's VGG16 FCN)
"""

from hasmap_jax.sensitivity.jnd import JNDSensitivity, default_sensitivity, jnd_profile, jnd_sensitivity
from hasmap_jax.sensitivity.maps import UniformSensitivity, resolve_sensitivity, sensitivity_maps

__all__ = [
    "JNDSensitivity",
    "UniformSensitivity",
    "default_sensitivity",
    "jnd_profile",
    "jnd_sensitivity",
    "resolve_sensitivity",
    "sensitivity_maps",
]
