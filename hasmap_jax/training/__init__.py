"""Training of the models that ship in `weights/`.

For the default quality model: `photos` pins the licensed photographs (read from installed
packages), `quality_data` makes degraded views with target scores, and `train_quality` trains and
evaluates the model and writes `weights/default` (`python -m hasmap_jax.training.train --help`).
"""
