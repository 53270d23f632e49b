"""Training: the default quality model that ships in `weights/default`, and the learned sensitivity map.

photos       the licensed photographs the quality model learns from (`photos.toml`: read from
             installed packages, pinned by sha256)
data         degraded views of them with target scores
train        the quality model's training loop and `train_default_model` (`hasmap train-quality`)
evaluate     its held-out evaluation, as a report and a table
card         its model card
sensitivity  training the VGG16 sensitivity network on (photo, map) pairs (`hasmap train-sensitivity`;
             the pairs are read by `hasmap_jax.sensitivity.data`)
"""
