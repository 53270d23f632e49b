"""Protecting folders of real photos (`hasmap protect`): safe outputs and a resumable manifest.

settings   presets and `ProtectSettings` (everything that decides the output bytes)
manifest   `OUTDIR/hasmap-manifest.jsonl`: settings and per-file results, for resuming
lock       `OUTDIR/.hasmap-lock`: one folder, one run (or one multi-process job)
memory     the memory a batch of photos needs, and the budget batches are filled to
runner     `protect_paths`: plan the outputs, batch photos by size, share them between the
           processes of a job, attack, write atomically
"""

from hasmap_jax.protect.lock import FolderLock, FolderLocked
from hasmap_jax.protect.manifest import (
    MANIFEST_NAME,
    Manifest,
    manifest_files,
    model_identity,
    part_name,
    recorded_outputs,
    recorded_settings,
)
from hasmap_jax.protect.runner import (
    EXIT_DISK_FULL,
    FileResult,
    OutputNotWritable,
    ProtectInterrupted,
    ProtectStopped,
    ProtectSummary,
    RunOptions,
    plan,
    protect_paths,
)
from hasmap_jax.protect.settings import (
    DEFAULT_METHOD,
    DEFAULT_PRESET,
    METHODS,
    PRESET_TABLES,
    PROTOCOL_JPEG_QUALITY,
    Preset,
    ProtectSettings,
    SettingsMismatch,
    UsageError,
    presets,
)

__all__ = [
    "DEFAULT_METHOD",
    "DEFAULT_PRESET",
    "EXIT_DISK_FULL",
    "MANIFEST_NAME",
    "METHODS",
    "PRESET_TABLES",
    "PROTOCOL_JPEG_QUALITY",
    "FileResult",
    "FolderLock",
    "FolderLocked",
    "Manifest",
    "OutputNotWritable",
    "Preset",
    "ProtectInterrupted",
    "ProtectStopped",
    "ProtectSettings",
    "ProtectSummary",
    "RunOptions",
    "SettingsMismatch",
    "UsageError",
    "presets",
    "manifest_files",
    "model_identity",
    "part_name",
    "plan",
    "protect_paths",
    "recorded_outputs",
    "recorded_settings",
]
