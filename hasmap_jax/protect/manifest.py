"""`OUTDIR/hasmap-manifest.jsonl`: the settings of a protection run and each file's result.

A rerun reads it to skip finished photos and to refuse other settings; `hasmap evaluate` reads it
to find the outputs and the settings they were made with.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from hasmap_jax.files import real_path
from hasmap_jax.protect.settings import ADDED_LATER, SettingsMismatch, UsageError, settings_diff

MANIFEST_NAME = "hasmap-manifest.jsonl"
MANIFEST_VERSION = 1
#: The manifest files of a folder: `hasmap-manifest.jsonl` (a single-process run) and one part per
#: process of a `--distributed` job (`part_name`); a folder's manifest is all of them together.
MANIFEST_GLOB = "hasmap-manifest*.jsonl"


def part_name(process: int, processes: int) -> str:
    """The manifest part process `process` of a `processes`-process job writes (one file each)."""
    if processes <= 1:
        return MANIFEST_NAME
    return f"hasmap-manifest.process-{process:05d}-of-{processes:05d}.jsonl"


def manifest_files(folder: str | os.PathLike) -> list[Path]:
    """The manifest files in `folder`, sorted (empty when there is none)."""
    folder = Path(folder)
    return sorted(p for p in folder.glob(MANIFEST_GLOB) if p.is_file()) if folder.is_dir() else []


def now() -> str:
    """The time for a manifest record: UTC, ISO 8601, to the second."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


class Manifest:
    """A folder's manifest: every `hasmap-manifest*.jsonl` file in it, read as one; appends go to one.

    Each file holds settings lines, each starting a section, and one line per file result. Lines are
    appended and flushed one at a time, so a crash loses at most the line being written (unreadable
    lines are ignored and counted in `broken_lines`). Sections carry a generation: `force` starts a
    new generation (one more than any in the folder); only records of the latest generation count
    for resuming, in whichever file they are (so a rerun with another process count resumes from
    all parts), but every output recorded as written anywhere counts as this tool's to replace.
    Settings lines without a generation (older manifests) count up from 0 within their file.

    Args:
      path: the folder's main manifest path (`OUTDIR/hasmap-manifest.jsonl`); its siblings
        matching `hasmap-manifest*.jsonl` are read too.
      write_to: the file this process appends to (default: `path`); one per process of a job.
    """

    def __init__(self, path: Path, *, write_to: Path | None = None):
        self.path = Path(path)
        self.write_to = Path(write_to) if write_to is not None else self.path
        self.settings: dict[str, Any] | None = None
        self.generation = -1
        self.files: dict[str, dict[str, Any]] = {}
        self.owned: set[str] = set()
        self.broken_lines = 0
        self._own_generation = -1  # the latest generation `write_to` has a section of
        self._lock = threading.Lock()
        sections: list[tuple[int, Path, dict[str, Any], list[dict[str, Any]]]] = []
        for f in manifest_files(self.path.parent):
            sections += self._read(f)
        if sections:
            self.generation = max(g for g, *_ in sections)
            latest = [(f, st, recs) for g, f, st, recs in sections if g == self.generation]
            self.settings = latest[0][1]
            for f, st, _ in latest[1:]:
                if settings_diff(self.settings, st):
                    raise UsageError(
                        f"{self.path.parent}: the manifest files disagree on the settings of their latest "
                        f"section ({latest[0][0].name} and {f.name}); move the folder's outputs aside"
                    )
            for _, _, recs in latest:
                for rec in recs:
                    old = self.files.get(rec["output"])
                    if old is None or str(rec.get("time", "")) >= str(old.get("time", "")):
                        self.files[rec["output"]] = rec
            own = [g for g, f, *_ in sections if f == self.write_to]
            self._own_generation = max(own) if own else -1

    def _read(self, path: Path) -> list[tuple[int, Path, dict[str, Any], list[dict[str, Any]]]]:
        """The sections of one file: (generation, file, settings, written-file records)."""
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        sections: list[tuple[int, Path, dict[str, Any], list[dict[str, Any]]]] = []
        for line in lines:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                self.broken_lines += 1  # a line cut short when a run was killed
                continue
            kind = rec.get("type") if isinstance(rec, dict) else None
            if kind == "settings":
                if rec.get("version") != MANIFEST_VERSION:
                    raise UsageError(f"{path}: manifest version {rec.get('version')} is not supported")
                gen = rec.get("generation", sections[-1][0] + 1 if sections else 0)
                if not isinstance(rec.get("settings"), dict) or not isinstance(gen, int):
                    self.broken_lines += 1
                    continue
                sections.append((gen, path, rec["settings"], []))
            elif kind == "file":
                if rec.get("status") == "ok" and not isinstance(rec.get("output"), str):
                    self.broken_lines += 1  # a record without its output path cannot be resumed from
                    continue
                # Only written outputs count for resuming: a later "failed" line about the same
                # output name (a name collision, say) must not hide the photo that did write it.
                if rec.get("status") == "ok":
                    self.owned.add(rec["output"])
                    if sections:
                        sections[-1][3].append(rec)
            elif kind is None:
                self.broken_lines += 1
        return sections

    def start(self, settings: dict[str, Any], *, force: bool) -> None:
        """Checks `settings` against the recorded ones; starts a new generation when new or forced.

        A process whose file has no section of the current generation yet (a new part, or another
        process's rerun) starts one with the same generation, so its records count alongside."""
        if self.settings is not None and not force:
            diff = settings_diff(self.settings, settings)
            if diff:
                raise SettingsMismatch(
                    f"{self.path.parent} holds results made with other settings ({'; '.join(diff)}). "
                    "Use a new output folder, or --force to redo every photo there with the new settings."
                )
            if self._own_generation == self.generation:
                return
            generation = self.generation
        else:
            generation = self.generation + 1
            self.files = {}
        rec = {"type": "settings", "version": MANIFEST_VERSION, "generation": generation, "settings": settings}
        self.append({**rec, "time": now()})
        self.settings, self.generation, self._own_generation = settings, generation, generation

    def append(self, record: dict[str, Any]) -> None:
        """Appends one record to `write_to` (thread-safe: one line at a time)."""
        line = json.dumps(record, sort_keys=True, allow_nan=False, default=_json_default)
        with self._lock:
            self.write_to.parent.mkdir(parents=True, exist_ok=True)
            data = line.encode() + b"\n"
            # Unbuffered: a write that fails leaves nothing queued to come out later.
            fd = os.open(self.write_to, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                start = os.lseek(fd, 0, os.SEEK_END)
                # After a line cut short by a kill, start a new line rather than extend the broken one.
                if start > 0 and not _ends_with_newline(self.write_to):
                    data = b"\n" + data
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError:
                    # A full disk: leave no part of the line behind (a reader would count it as broken),
                    # nor an empty manifest (it would mark the folder as an earlier run's outputs).
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                        if start == 0:
                            os.unlink(self.write_to)
                    raise
            finally:
                os.close(fd)
            if record.get("type") == "file" and record.get("status") == "ok":
                self.files[record["output"]] = record
                self.owned.add(record["output"])


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
    """Resolved paths of the outputs `outdir`'s manifest files record as written (empty without one)."""
    if not manifest_files(outdir):
        return set()
    return {real_path(outdir / rel) for rel in Manifest(outdir / MANIFEST_NAME).owned}


def recorded_settings(outdir: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of the latest run `outdir`'s manifest records, with what an older manifest
    did not record filled in as it meant then (`ADDED_LATER`); None without a readable manifest
    (the run itself then reports what is wrong with it)."""
    outdir = Path(outdir)
    if not manifest_files(outdir):
        return None
    try:
        settings = Manifest(outdir / MANIFEST_NAME).settings
    except (UsageError, OSError):
        return None
    return None if settings is None else {**ADDED_LATER, **settings}


def model_identity(name: str, model: Any) -> str:
    """A short identity of a model for the manifest: its name or path and a digest of its card."""
    card = getattr(model, "card", None)
    if card is None:
        return f"{name} ({type(model).__name__})"
    if not isinstance(card, dict):
        card = dict(card)
    digest = hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{name} (card {digest})"
