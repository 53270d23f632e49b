"""Model attributes as JSON for model cards, and back."""

from __future__ import annotations

import dataclasses
from typing import Any


class ConfigMixin:
    """`config()` / `from_config()` for Flax modules whose attributes define the network."""

    def config(self) -> dict[str, Any]:
        """The attributes that define the network, JSON-serialisable (for model cards)."""
        out = {}
        for f in dataclasses.fields(self):
            if f.name in ("parent", "name", "dtype"):
                continue
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        """The module with the attributes of `config` (tuples come back from JSON lists)."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
