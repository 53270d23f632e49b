"""Orbax checkpoints with a JSON model card, written atomically and read strictly."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hasmap_jax import files
from hasmap_jax.models.variables import WeightError, flatten
from hasmap_jax.weights.conversion.common import assemble

CARD_NAME = "model_card.json"
VARIABLES_DIR = "variables"
CARD_VERSION = 1


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / CARD_NAME).is_file()


def save(
    directory: str | os.PathLike,
    variables: dict[str, Any],
    card: dict[str, Any],
    *,
    replace: bool = False,
    into_existing: bool = False,
) -> Path:
    """Writes `variables` (an orbax checkpoint in `variables/`) and `card` (`model_card.json`).

    Staged through `hasmap_jax.files.atomic_directory`, so an interrupted save leaves nothing
    half-written behind.

    Args:
      directory: the checkpoint folder.
      replace: False (default) refuses an existing `directory` before anything is written; True
        swaps a complete new checkpoint in for it (a reader sees the old one or the new one).
      into_existing: add the model to `directory`, an existing folder that holds other things too
        (a training run's `train_state/`) and no model card: `variables/` is put in first (replacing
        one left by an interrupted save), `model_card.json` last, so the folder is a loadable
        checkpoint exactly when it is complete. Not with `replace`.

    Returns:
      The checkpoint's absolute path.

    Raises:
      FileExistsError: `directory` exists (without `replace` or `into_existing`), or holds a model
        card already (`into_existing`).
      NotADirectoryError: `into_existing` and `directory` is not an existing folder.
    """
    target = Path(directory).expanduser().absolute()  # orbax wants absolute paths
    card = {"card_version": CARD_VERSION, **card}
    if not into_existing:
        with files.atomic_directory(target, replace=replace) as staging:
            _save_variables(staging / VARIABLES_DIR, variables)
            (staging / CARD_NAME).write_text(_card_text(card))  # inside the private staging folder
        return target
    if replace:
        raise ValueError("save: into_existing and replace cannot be combined")
    if not target.is_dir():
        raise NotADirectoryError(f"{target} is not an existing directory; nothing was written")
    if is_checkpoint(target):
        raise FileExistsError(f"{target} already holds a model ({CARD_NAME}); nothing was written")
    with files.atomic_directory(target / VARIABLES_DIR, replace=True) as staging:
        # orbax writes a new folder itself (staged beside it, then renamed): the empty staging
        # folder is given to it to replace.
        _save_variables(staging, variables, force=True)
    with files.atomic_output(target / CARD_NAME, "w", replace=False) as f:
        f.write(_card_text(card))
    return target


def _save_variables(path: Path, variables: dict[str, Any], *, force: bool = False) -> None:
    import orbax.checkpoint as ocp  # a slow import: paid when a checkpoint is read or written, not by every start

    host = jax.tree.map(lambda a: np.asarray(a, dtype=np.float32), variables)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(path, host, force=force)
        ckptr.wait_until_finished()


def _card_text(card: dict[str, Any]) -> str:
    return json.dumps(card, indent=2, sort_keys=False) + "\n"


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
    import orbax.checkpoint as ocp  # a slow import: paid when a checkpoint is read or written, not by every start

    path = Path(directory).expanduser().absolute() / VARIABLES_DIR
    if not path.is_dir():
        raise WeightError(f"{directory}: the checkpoint has no '{VARIABLES_DIR}' directory; it is damaged")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            tree = ckptr.restore(path)
    except Exception as e:  # orbax/tensorstore raise many kinds for damaged files
        raise WeightError(f"{directory}: could not read the checkpoint ({type(e).__name__}: {e})") from e
    return assemble(flatten(tree), expected, source=os.fspath(directory))
