"""`OUTDIR/hasmap-manifest.jsonl`: the settings of a protection run and each file's result.

A rerun reads it to skip finished photos and to refuse other settings; `hasmap evaluate` reads it
to find the outputs and the settings they were made with.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from hasmap_jax.protect.settings import SettingsMismatch, UsageError, settings_diff

MANIFEST_NAME = "hasmap-manifest.jsonl"
MANIFEST_VERSION = 1


def now() -> str:
    """The time for a manifest record: UTC, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Manifest:
    """`OUTDIR/hasmap-manifest.jsonl`: a settings line, then one line per file result.

    Lines are appended and flushed one at a time, so a crash loses at most the line being written
    (unreadable lines are ignored and counted in `broken_lines`). A later settings line (after
    `force`) starts a new section; only the last section's file records count for resuming, but every
    output recorded as written anywhere in the file counts as this tool's to replace.
    """

    def __init__(self, path: Path):
        self.path = path
        self.settings: dict[str, Any] | None = None
        self.files: dict[str, dict[str, Any]] = {}
        self.owned: set[str] = set()
        self.broken_lines = 0
        if path.exists():
            self._read()

    def _read(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                self.broken_lines += 1  # a line cut short when a run was killed
                continue
            kind = rec.get("type") if isinstance(rec, dict) else None
            if kind == "settings":
                if rec.get("version") != MANIFEST_VERSION:
                    raise UsageError(f"{self.path}: manifest version {rec.get('version')} is not supported")
                if not isinstance(rec.get("settings"), dict):
                    self.broken_lines += 1
                    continue
                self.settings, self.files = rec["settings"], {}
            elif kind == "file":
                if rec.get("status") == "ok" and not isinstance(rec.get("output"), str):
                    self.broken_lines += 1  # a record without its output path cannot be resumed from
                    continue
                self._note(rec)
            elif kind is None:
                self.broken_lines += 1

    def _note(self, rec: dict[str, Any]) -> None:
        # Only written outputs count for resuming: a later "failed" line about the same output name
        # (a name collision, say) must not hide the photo that did write it.
        if rec.get("status") == "ok":
            self.files[rec["output"]] = rec
            self.owned.add(rec["output"])

    def start(self, settings: dict[str, Any], *, force: bool) -> None:
        """Checks `settings` against the recorded ones; starts a new section when new or forced."""
        if self.settings is not None and not force:
            diff = settings_diff(self.settings, settings)
            if diff:
                raise SettingsMismatch(
                    f"{self.path.parent} holds results made with other settings ({'; '.join(diff)}). "
                    "Use a new output folder, or --force to redo every photo there with the new settings."
                )
            return
        self.append({"type": "settings", "version": MANIFEST_VERSION, "settings": settings, "time": now()})
        self.settings, self.files = settings, {}

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, sort_keys=True, allow_nan=False, default=_json_default)
        with open(self.path, "ab") as f:
            # After a line cut short by a kill, start a new line rather than extend the broken one.
            if f.tell() > 0 and not _ends_with_newline(self.path):
                f.write(b"\n")
            f.write(line.encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        if record.get("type") == "file":
            self._note(record)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def recorded_outputs(outdir: Path) -> set[Path]:
    """Resolved paths of the outputs `outdir`'s manifest records as written (empty without one)."""
    path = outdir / MANIFEST_NAME
    if not path.is_file():
        return set()
    return {(outdir / rel).resolve() for rel in Manifest(path).owned}


def model_identity(name: str, model: Any) -> str:
    """A short identity of a model for the manifest: its name or path and a digest of its card."""
    card = getattr(model, "card", None)
    if card is None:
        return f"{name} ({type(model).__name__})"
    if not isinstance(card, dict):
        card = dict(card)
    digest = hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{name} (card {digest})"
