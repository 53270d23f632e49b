"""hasmap_jax: HASMap (human-aware sensitivity map) adversarial protection against image-quality models."""

from hasmap_jax.conversion.common import WeightError
from hasmap_jax.loading import QualityModel, convert, load_quality_model
from hasmap_jax.models.inception_resnet_v2 import InceptionResNetV2
from hasmap_jax.models.koncept import KonCept512, koncept512, quality_logits

__version__ = "0.1.0"

__all__ = [
    "InceptionResNetV2",
    "KonCept512",
    "QualityModel",
    "WeightError",
    "convert",
    "koncept512",
    "load_quality_model",
    "quality_logits",
]
