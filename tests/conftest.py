"""Shared fixtures: small random images and tiny model configurations."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np
import pytest


@pytest.fixture(scope="session")
def rng() -> np.random.RandomState:
    return np.random.RandomState(0)


def random_images(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth-ish random RGB images in [0, 1] (noise plus gradients, like photos have)."""
    r = np.random.RandomState(seed)
    yy, xx = np.meshgrid(np.linspace(0, 1, height), np.linspace(0, 1, width), indexing="ij")
    base = np.stack([yy, xx, 0.5 * (yy + xx)], axis=-1)[None]
    return np.clip(0.6 * base + 0.4 * r.rand(n, height, width, 3), 0, 1).astype(np.float32)
