"""Shared fixtures: small random images and tiny model configurations."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("KERAS_BACKEND", "jax")
# Commands run in-process by the tests keep their compiled programs here, not in the user's cache.
os.environ.setdefault("HASMAP_CACHE_DIR", tempfile.mkdtemp(prefix="hasmap-test-xla-"))

import contextlib

import jax
import jax.numpy as jnp
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


@jax.tree_util.register_pytree_node_class
class ToyQuality:
    """A tiny differentiable stand-in for a quality model (same `apply` contract as QualityModel):
    score = bias + gain * tanh(sum(weights * (x - 0.5))). Fast and easy to reason about."""

    def __init__(self, weights, bias=60.0, gain=40.0):
        self.weights, self.bias, self.gain = weights, bias, gain

    def apply(self, images):
        z = jnp.sum(self.weights * (images - 0.5), axis=(1, 2, 3))
        return self.bias + self.gain * jnp.tanh(z)

    def tree_flatten(self):
        return (self.weights, self.bias, self.gain), None

    @classmethod
    def tree_unflatten(cls, aux, children):
        return cls(*children)


def toy_model(height: int, width: int, seed: int = 0, scale: float = 1e-2) -> ToyQuality:
    w = scale * np.abs(np.random.RandomState(seed).randn(height, width, 3)).astype(np.float32)
    return ToyQuality(jnp.asarray(w))


#: Fixtures that build their reference with a framework of the [reference] extra (torch + timm,
#: keras): a test that uses one, itself or through another fixture, is a `reference` test.
REFERENCE_FIXTURES = frozenset({"torch_koncept", "keras_koncept", "torch_files", "keras_files"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REFERENCE_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.reference)


_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_compile_log: list[str] = []
jax.monitoring.register_event_duration_secs_listener(
    lambda name, _secs, **_kw: _compile_log.append(name) if name == _COMPILE_EVENT else None
)


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations inside the block: `with count_compiles() as n: ...; n()`."""
    start = len(_compile_log)
    yield lambda: len(_compile_log) - start
