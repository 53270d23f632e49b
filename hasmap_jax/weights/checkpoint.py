"""Orbax checkpoints with a JSON model card, written atomically and read strictly."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hasmap_jax.weights.conversion.common import WeightError, assemble, flatten

CARD_NAME = "model_card.json"
VARIABLES_DIR = "variables"
CARD_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CARD_NAME).is_file()


def save(directory: str | os.PathLike, variables: dict[str, Any], card: dict[str, Any]) -> Path:
    """Writes `variables` (an orbax checkpoint) and `card` (model_card.json) to a new `directory`.

    Everything is written into a hidden sibling directory first and renamed into place at the end,
    so an interrupted save leaves nothing half-written behind and never touches an existing path.

    Raises:
      FileExistsError: `directory` already exists (choose another path or remove it yourself).
    """
    import orbax.checkpoint as ocp

    target = Path(directory).expanduser().absolute()  # orbax wants absolute paths
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose a new output path (nothing was written)")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.partial-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        host = jax.tree.map(lambda a: np.asarray(a, dtype=np.float32), variables)
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(staging / VARIABLES_DIR, host)
            ckptr.wait_until_finished()
        card = {"card_version": CARD_VERSION, **card}
        (staging / CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=False) + "\n")
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_card(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / CARD_NAME
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise WeightError(f"{directory}: not a hasmap_jax checkpoint (no {CARD_NAME})") from e
    except json.JSONDecodeError as e:
        raise WeightError(f"{path}: not valid JSON ({e}); the checkpoint is damaged, convert again") from e
    if not isinstance(card, dict) or "kind" not in card or "config" not in card:
        raise WeightError(f"{path}: a model card needs 'kind' and 'config'; the checkpoint is damaged")
    return card


def restore(directory: str | os.PathLike, expected: dict[str, Any]) -> dict[str, Any]:
    """Reads the variables of a checkpoint written by `save`, checked against `expected` shapes."""
    import orbax.checkpoint as ocp

    path = Path(directory).expanduser().absolute() / VARIABLES_DIR
    if not path.is_dir():
        raise WeightError(f"{directory}: the checkpoint has no '{VARIABLES_DIR}' directory; it is damaged")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path)
    except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
        raise WeightError(f"{directory}: could not read the checkpoint ({type(e).__name__}: {e})") from e
    return assemble(flatten(tree), expected, source=os.fspath(directory))
