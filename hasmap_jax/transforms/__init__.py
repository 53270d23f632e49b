"""Differentiable image transforms, each checked against the real operation it stands for:
the model's view of a photo (`views.fit_view`: resize to cover, centre crop, as jax.image.resize)
and a JPEG round trip (`jpeg.diff_jpeg`: libjpeg's tables, 4:2:0, as Pillow encodes)."""

from hasmap_jax.transforms.jpeg import diff_jpeg, pillow_jpeg
from hasmap_jax.transforms.views import fit_view

__all__ = ["diff_jpeg", "fit_view", "pillow_jpeg"]
