"""Training of the default quality model that ships in `weights/default`.

`photos` loads the licensed photographs it learns from (`photos.toml`: read from installed
packages, pinned by sha256), `data` makes degraded views with target scores, and `train` trains
and evaluates the model and writes the checkpoint (`hasmap train-quality --help`). The learned
sensitivity map trains in `hasmap_jax.sensitivity.train`.
"""
