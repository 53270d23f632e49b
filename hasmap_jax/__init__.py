"""hasmap_jax: HASMap (human-aware sensitivity map) adversarial protection against image-quality models."""

from hasmap_jax.conversion.common import WeightError
from hasmap_jax.loading import (
    QualityModel,
    SensitivityModel,
    convert,
    load_quality_model,
    load_sensitivity_model,
    shipped_models,
)
from hasmap_jax.models.inception_resnet_v2 import InceptionResNetV2
from hasmap_jax.models.koncept import KonCept512, koncept512, quality_logits
from hasmap_jax.models.vgg16 import SensitivityNet, VGG16Features

__version__ = "0.1.0"

__all__ = [
    "InceptionResNetV2",
    "KonCept512",
    "QualityModel",
    "SensitivityModel",
    "SensitivityNet",
    "VGG16Features",
    "WeightError",
    "convert",
    "koncept512",
    "load_quality_model",
    "load_sensitivity_model",
    "quality_logits",
    "shipped_models",
]
