"""Model weights: converters from the reference formats (`conversion`), orbax checkpoints with
model cards (`checkpoint`), and loading them as models (`loading`). The shipped models themselves
live in the repository's `weights/` folder (installed as `hasmap_jax.weights.shipped`)."""
