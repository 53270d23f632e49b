"""Human sensitivity maps: where a change to a photo is noticed (1) and where it is not (0).

  maps     resolving "default" / "uniform" / a model / arrays into per-image maps
  render   colour maps and overlays of maps, written as PNG
  data     image / target-map pairs for training (tensorflow-datasets)

The map models live with the other models: the training-free default, 3 / JND (luminance
adaptation + texture masking), in `hasmap_jax.models.jnd` (re-exported here), the learned
`SensitivityNet` (the paper's VGG16 FCN) in `hasmap_jax.models.vgg16`; it trains in
`hasmap_jax.training.sensitivity`.
"""

from hasmap_jax.models.jnd import JNDSensitivity, default_sensitivity, jnd_profile, jnd_sensitivity
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
