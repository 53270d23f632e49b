"""The HASMap attack: a sensitivity-weighted Carlini-Wagner L2 attack on a quality classifier.

loss    the objective for one image (tanh box, 8-bit rounding, C&W loss, JPEG views)
loop    the batched optimisation: steps, search over alpha, device loop and host loop
batch   `attack_batch` and `AttackResult`: arguments, model preparation, measurement
"""

from hasmap_jax.attack.batch import AttackResult, attack_batch, default_compute_dtype, prepare_model
from hasmap_jax.attack.loop import KEPT, default_loop
from hasmap_jax.attack.loss import (
    cw_loss,
    from_tanh_space,
    hasmap_loss,
    jpeg_chain_of,
    model_views,
    quantize,
    to_tanh_space,
    weighted_distortion,
)

__all__ = [
    "KEPT",
    "AttackResult",
    "attack_batch",
    "cw_loss",
    "default_compute_dtype",
    "default_loop",
    "from_tanh_space",
    "hasmap_loss",
    "jpeg_chain_of",
    "model_views",
    "prepare_model",
    "quantize",
    "to_tanh_space",
    "weighted_distortion",
]
