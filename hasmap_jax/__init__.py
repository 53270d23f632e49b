"""hasmap_jax: HASMap (human-aware sensitivity map) adversarial protection against image-quality models."""

from hasmap_jax.attack import AttackResult, attack_batch
from hasmap_jax.models.inception_resnet_v2 import InceptionResNetV2
from hasmap_jax.models.jnd import JNDSensitivity, jnd_sensitivity
from hasmap_jax.models.koncept import KonCept512, koncept512, quality_logits
from hasmap_jax.models.loaded import QualityModel, SensitivityModel
from hasmap_jax.models.variables import WeightError
from hasmap_jax.models.vgg16 import SensitivityNet, VGG16Features
from hasmap_jax.transforms.views import fit_view
from hasmap_jax.weights.loading import (
    convert,
    load_quality_model,
    load_sensitivity_model,
    shipped_models,
)

__version__ = "0.1.0"

__all__ = [
    "AttackResult",
    "InceptionResNetV2",
    "JNDSensitivity",
    "KonCept512",
    "QualityModel",
    "SensitivityModel",
    "SensitivityNet",
    "VGG16Features",
    "WeightError",
    "attack_batch",
    "convert",
    "fit_view",
    "jnd_sensitivity",
    "koncept512",
    "load_quality_model",
    "load_sensitivity_model",
    "quality_logits",
    "shipped_models",
]
