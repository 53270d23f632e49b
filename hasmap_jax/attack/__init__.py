"""The HASMap attack on a quality classifier: the paper's sensitivity-weighted Carlini-Wagner L2
attack, and a minimum-norm method in the same weighted norm.

config   `AttackConfig`: how `attack_batch` optimises, one frozen, validated value
loss     the objectives for one image (tanh box, 8-bit rounding, C&W loss, margins, views)
minnorm  the minimum-norm method's per-photo budget rule (after FMN) and its settings
loop     the batched optimisation: evaluate / check / update, the search over alpha, device and host loops
batch    `attack_batch` and `AttackResult`: arguments, model preparation, measurement
"""

from hasmap_jax.attack.batch import AttackResult, attack_batch, prepare_model
from hasmap_jax.attack.config import METHODS, AttackConfig, default_compute_dtype
from hasmap_jax.attack.loop import KEPT, default_loop
from hasmap_jax.attack.loss import (
    checkpoint_views,
    cw_loss,
    from_tanh_space,
    hasmap_loss,
    jpeg_chain_of,
    margin_loss,
    model_views,
    quantize,
    to_tanh_space,
    weighted_distortion,
)
from hasmap_jax.attack.minnorm import MinNorm

__all__ = [
    "KEPT",
    "METHODS",
    "AttackConfig",
    "AttackResult",
    "MinNorm",
    "attack_batch",
    "checkpoint_views",
    "cw_loss",
    "default_compute_dtype",
    "default_loop",
    "from_tanh_space",
    "hasmap_loss",
    "jpeg_chain_of",
    "margin_loss",
    "model_views",
    "prepare_model",
    "quantize",
    "to_tanh_space",
    "weighted_distortion",
]
