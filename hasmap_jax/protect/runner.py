"""Protecting folders of real photos: batches by size, safe outputs and a resumable manifest.

`protect_paths` runs `attack_batch` over files and folders and writes one protected copy per photo
into an output folder. What it promises:

- Inputs are only read. An output that would land on an input file is a usage error before any work
  (`UsageError`), and so is an input that does not exist.
- Every output is written atomically (`hasmap_jax.files.atomic_output`: a temporary file in the same
  folder, then `os.replace`), so Ctrl-C or a crash never leaves a partial file.
- Names: `<relative path>/<stem><suffix>.png|.jpg`, the relative path taken inside each input folder
  (a file named directly goes to the top of the output folder). Two inputs that would get the same
  output name (`a.jpg` and `a.png`) are not merged: the second one fails with a message.
- A file already in the output folder that this tool did not write there (the manifest does not
  name it) is never replaced, unless `force`.
- Resumable: `OUTDIR/hasmap-manifest.jsonl` (JSON lines, appended and flushed per file) records the
  settings and each file's result. A rerun with the same settings skips each photo whose input
  (sha256) and output (sha256) are unchanged and redoes the rest. A rerun with different settings is
  refused (`SettingsMismatch`, listing the differences), so one folder never mixes two settings
  silently; `force=True` (`--force`) starts a new settings section in the manifest and redoes every
  photo with the new settings.
- Ctrl-C: the photo being written is either complete or absent, every finished photo is in the
  manifest, and `ProtectInterrupted` (a `KeyboardInterrupt`) carries the summary so far. (The
  command line turns SIGTERM into the same.) Temporary files a killed run left where this run
  writes are removed by the next run that takes the folder's lock, and listed in its summary.
- A full disk (ENOSPC, EDQUOT), or an output folder that stops taking writes (read-only, I/O
  error), stops the run at the first failed write: nothing half-written stays, every finished photo
  is kept and recorded, and `ProtectStopped` carries the summary so far (a rerun resumes). An output
  folder that cannot be written at all is an `OutputNotWritable` usage error before any work.
- Memory: photos are batched within a memory budget (`hasmap_jax.protect.memory`), and a photo too
  large for all the memory there is fails alone, before its attack.
- Earlier runs' output folders (those holding a `hasmap-manifest*.jsonl`) inside an input folder
  are left out of the inputs, and so are the outputs an input folder's own manifest records (an
  earlier run into it with a `--suffix`); the summary names the folders left out.
- Bad inputs get a per-file result (status "skipped" or "failed" and a message; see
  `hasmap_jax.files` for the behaviour per kind) and the other photos still complete.
- Photos of one size are attacked together (each distinct size compiles its own program); the
  perturbation lives at the photo's own resolution, the model sees `attack_batch`'s view.
- Metadata: by default EXIF, XMP, IPTC and comments are not copied (they can hold GPS position,
  camera serial and time); the ICC colour profile is kept, since it is part of how the pixels look
  (`strip_icc` drops it too). `keep_metadata` also copies EXIF, with orientation set to 1 (the pixels
  are already upright) and without the EXIF thumbnail (IFD1), which would show the unprotected photo.
- Transparency: PNG output keeps the alpha channel (the colour pixels are protected as stored);
  JPEG output is composited on white first, and that composite is what the attack protects.
- A photo the attack could not push below the threshold is still written (the attack then returns
  the original pixels, re-encoded) and reported as not protected; that is a measurement, not an error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import functools
import hashlib
import io
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hasmap_jax.attack import attack_batch
from hasmap_jax.files import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    atomic_output,
    composite_on_white,
    encode_image,
    find_images,
    probe_image,
    read_image,
    real_path,
    remove_temporaries,
    sha256_file,
)
from hasmap_jax.protect import memory as mem
from hasmap_jax.protect.lock import LOCK_NAME, FolderLock, FolderLocked
from hasmap_jax.protect.manifest import (
    MANIFEST_NAME,
    Manifest,
    manifest_files,
    model_identity,
    now,
    part_name,
    recorded_outputs,
)
from hasmap_jax.protect.settings import ProtectSettings, UsageError
from hasmap_jax.runtime.distributed import Team
from hasmap_jax.sensitivity.maps import resolve_sensitivity
from hasmap_jax.weights.loading import load_quality_model


@dataclasses.dataclass
class FileResult:
    """What happened to one input.

    Attributes:
      input: the input file.
      output: the output file (None when nothing was written).
      status: "ok" (written now), "done" (already done by an earlier run, left as is), "skipped"
        (too small) or "failed". A photo already rated low as given is "ok" too: written unchanged
        (`already_low`).
      message: why it was skipped or failed.
      notes: conversions applied on reading (greyscale, orientation, alpha, ...).
      record: the manifest record (scores and distortion for "ok" and "done").
    """

    input: Path
    output: Path | None
    status: str
    message: str = ""
    notes: tuple[str, ...] = ()
    record: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def protected(self) -> bool | None:
        """Rated not high (after JPEG when that was checked); None when no output exists."""
        if self.status not in ("ok", "done"):
            return None
        return bool(self.record.get("protected"))

    @property
    def already_low(self) -> bool:
        """Written now, but unchanged: the model already rated the photo low (`kept` "already_low")."""
        return self.status == "ok" and self.record.get("kept") == "already_low"


#: What `ProtectSummary.totals` counts, in this order (a job sums them over its processes).
TOTALS = (
    "inputs",
    "ok",
    "already_low",
    "done",
    "skipped",
    "failed",
    "written",
    "protected",
    "after_jpeg",
    "after_checkpoints",
    "interrupted",
)


#: Exit status of a run stopped by a full disk (`ProtectSummary.exit_code`; `hasmap protect --help`).
EXIT_DISK_FULL = 3
#: errno values that mean the output's file system is full (a quota counts as full).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})
#: errno values of a write that no other photo's write would escape either: stop the run.
_STOP_WRITING = DISK_FULL | {errno.EROFS, errno.EIO}


@dataclasses.dataclass
class ProtectSummary:
    """This process's per-file results, in input order, and whether it was interrupted or stopped.

    In a job of several processes, `results` are this process's share and `job_totals` the counts
    summed over every process (`TOTALS`); `text()` and `exit_code` speak for the whole job.

    Attributes:
      planned: the inputs this process was given (its round-robin share), whether or not it reached
        them; None: as many as `results`.
      stopped: why the run stopped before the end (a full disk, ...); "" when it did not.
      disk_full: the stop was a full disk (ENOSPC, EDQUOT).
      left_out: folders among the inputs left out as earlier runs' output folders.
      cleaned: temporary files of a killed run removed from the output folder.
      not_done: the inputs not reached when the run was interrupted or stopped (a single process's
        run; a job's processes share their photos, so each cannot tell).
    """

    outdir: Path
    results: list[FileResult]
    interrupted: bool = False
    seconds: float = 0.0
    job_totals: dict[str, int] | None = None
    processes: int = 1
    planned: int | None = None
    stopped: str = ""
    disk_full: bool = False
    left_out: list[Path] = dataclasses.field(default_factory=list)
    cleaned: list[Path] = dataclasses.field(default_factory=list)
    not_done: list[Path] = dataclasses.field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def totals(self) -> dict[str, int]:
        """This process's counts (`TOTALS`)."""
        written = [r for r in self.results if r.status in ("ok", "done")]
        return {
            "inputs": len(self.results) if self.planned is None else self.planned,
            "ok": self.count("ok"),
            "already_low": sum(r.already_low for r in self.results),
            **{s: self.count(s) for s in ("done", "skipped", "failed")},
            "written": len(written),
            "protected": sum(bool(r.protected) for r in written),
            "after_jpeg": sum("protected_after_jpeg" in r.record for r in written),
            "after_checkpoints": sum("protected_after_checkpoints" in r.record for r in written),
            "interrupted": int(self.interrupted),
        }

    @property
    def exit_code(self) -> int:
        """0: every input image has its output; 1: some were skipped or failed, or writing stopped
        for another reason than a full disk; `EXIT_DISK_FULL` (3): stopped by a full disk; 130:
        interrupted (over the whole job when there are several processes)."""
        t = self.job_totals or self.totals()
        if t["interrupted"]:
            return 130
        if self.stopped:
            return EXIT_DISK_FULL if self.disk_full else 1
        return 1 if t["failed"] or t["skipped"] else 0

    def text(self) -> str:
        """A few lines for people: counts (the job's), then every photo of this process that needs attention."""
        t = self.job_totals or self.totals()
        not_done = t["inputs"] - sum(t[k] for k in ("ok", "done", "skipped", "failed"))
        low = f"{t['already_low']} already rated low (written unchanged), " if t["already_low"] else ""
        parts = [
            f"{t['inputs']} input(s): {t['ok'] - t['already_low']} protected now, {low}{t['done']} already done, "
            f"{t['skipped']} skipped, {t['failed']} failed"
            + (f", {not_done} not done" if not_done > 0 else "")
            + (f" ({self.processes} processes)" if self.processes > 1 else "")
        ]
        if t["written"]:
            check = "after JPEG" if t["after_jpeg"] else "as saved"
            if t["after_checkpoints"]:
                check = "after every --robust web check: JPEG, resizing, blur, crop, flip"
            parts.append(f"{t['protected']} of {t['written']} output(s) rated not high quality by the model ({check})")
        if self.left_out:
            parts.append(
                f"left out {len(self.left_out)} folder(s) holding an earlier run's outputs (a hasmap-manifest*.jsonl); "
                "to protect photos there, name the folder itself as an input: "
                + ", ".join(map(str, self.left_out[:10]))
                + (" ..." if len(self.left_out) > 10 else "")
            )
        if self.cleaned:
            parts.append(
                f"removed {len(self.cleaned)} temporary file(s) left in {self.outdir} by a run that was killed"
            )
        for r in self.results:
            if r.status in ("skipped", "failed"):
                parts.append(f"  {r.status}: {r.message}")
            elif r.protected is False:
                parts.append(f"  NOT protected (still rated high): {r.input} -> {r.output}")
        for f in self.not_done[:20]:
            parts.append(f"  not done: {f}")
        if len(self.not_done) > 20:
            parts.append(f"  ... and {len(self.not_done) - 20} more not done")
        if t["interrupted"]:
            parts.append("interrupted: rerun the same command to finish (finished photos are skipped)")
        elif self.stopped:
            parts.append(f"stopped: {self.stopped}")
        return "\n".join(parts)


class ProtectInterrupted(KeyboardInterrupt):
    """Ctrl-C during `protect_paths`; `summary` holds the results up to then."""

    def __init__(self, summary: ProtectSummary):
        super().__init__("interrupted")
        self.summary = summary


class ProtectStopped(Exception):
    """Writing into the output folder failed for every photo alike (a full disk, a read-only or
    failing file system): the run stopped at the first failed write. `summary` holds the results up
    to then (`summary.stopped` says why and what to do; `summary.exit_code` is `EXIT_DISK_FULL` for
    a full disk); finished photos are kept and recorded, so a rerun resumes."""

    def __init__(self, summary: ProtectSummary):
        super().__init__(summary.stopped)
        self.summary = summary


class OutputNotWritable(UsageError):
    """The output folder cannot be written (read-only, no permission, full): nothing was written."""

    def __init__(self, message: str, *, disk_full: bool = False):
        super().__init__(message)
        self.disk_full = disk_full


def _unwritable(folder: Path, e: OSError) -> str:
    """The message for an output folder that refused a write."""
    what = f" ({e.filename})" if e.filename else ""
    if e.errno in DISK_FULL:
        todo = "free space there (or choose another output folder with -o) and rerun the same command"
    else:
        todo = "make it writable, or choose another output folder with -o"
    return f"cannot write to the output folder {folder}: {e.strerror or e}{what}; {todo}"


def _stopped_text(outdir: Path, e: OSError) -> str:
    what = f", {e.filename}" if e.filename else ""
    if e.errno in DISK_FULL:
        head, todo = f"the disk holding {outdir} is full ({e.strerror}{what})", "free space there"
    else:
        head, todo = f"writing into {outdir} failed ({e.strerror or e}{what})", "fix that"
    return f"{head}; {todo} and rerun the same command to finish (finished photos are kept and skipped)"


# --------------------------------------------------------------------------------------------
# Planning


@dataclasses.dataclass
class _Job:
    src: Path
    rel_out: str  # output path relative to the output folder, POSIX separators
    out: Path
    collides_with: Path | None = None


def plan(
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    settings: ProtectSettings,
    *,
    listed: Sequence[str] = (),
    left_out: list[Path] | None = None,
) -> list[_Job]:
    """Input files and their output paths; raises `UsageError` before anything is written.

    Folders are walked recursively (image extensions only; hidden files, the output folder and the
    outputs its manifest records are left out, so protecting into the input folder with a suffix
    does not protect the outputs again on a rerun). Folders below an input folder that hold a
    manifest (`hasmap-manifest*.jsonl`) hold an earlier run's outputs: they are left out and
    appended to `left_out` when it is given; an input folder named directly that holds one (an
    earlier run into it with a suffix) keeps its photos, less the outputs its manifest records.
    Files named directly are tried whatever their
    extension and go to the top of the output folder. `listed` (`--files-from`) are files, one per
    entry, that keep their relative path under the output folder (an absolute path, or one that
    climbs out with "..", keeps only its name). Every process of a job gets the same list in the
    same order.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"output {outdir} exists and is not a folder")
    ours = recorded_outputs(outdir)
    jobs: list[_Job] = []

    def earlier_run(folder: Path) -> bool:
        if not manifest_files(folder):
            return False
        if left_out is not None:
            left_out.append(folder)
        return True

    earlier = 0  # outputs of earlier runs among the photos of the input folders
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            recorded = ours | recorded_outputs(p)
            for f in find_images(p, exclude=(outdir,), skip=earlier_run):
                if real_path(f) not in recorded:
                    jobs.append(_job(f, f.relative_to(p), outdir, settings))
                else:
                    earlier += 1
        elif p.exists():
            jobs.append(_job(p, Path(p.name), outdir, settings))
        else:
            raise UsageError(f"input {p}: no such file or folder")
    for line in listed:
        p = Path(line)
        if not p.is_file():
            raise UsageError(f"listed input {p}: no such file")
        rel = Path(p.name) if p.is_absolute() or ".." in p.parts else p
        jobs.append(_job(p, rel, outdir, settings))
    if not jobs:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        why = f"; {earlier} photo(s) there are outputs its hasmap-manifest*.jsonl records" if earlier else ""
        if left_out:
            why += f"; left out as earlier runs' outputs: {', '.join(map(str, left_out))}"
        raise UsageError(f"no image files in {', '.join(map(str, inputs))} (looked for {exts}){why}")
    inputs_resolved = {real_path(j.src): j.src for j in jobs}
    seen: dict[str, Path] = {}
    for j in jobs:
        target = real_path(j.out)
        if target in inputs_resolved:
            raise UsageError(
                f"the output for {j.src} would overwrite the input {inputs_resolved[target]}; choose another "
                "output folder (-o) or a --suffix"
            )
        if j.rel_out in seen:
            j.collides_with = seen[j.rel_out]
        else:
            seen[j.rel_out] = j.src
    return jobs


def _job(src: Path, rel: Path, outdir: Path, settings: ProtectSettings) -> _Job:
    rel_out = settings.output_name(rel)
    return _Job(src, rel_out.as_posix(), outdir / rel_out)


# --------------------------------------------------------------------------------------------
# Running


ProgressFn = Callable[[int, int, str], None]


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How a `protect_paths` run goes about its work; none of it changes an output's bytes.

    Attributes:
      batch_size: at most this many photos of one size attacked together.
      force: redo everything with these settings even if the folder holds other results, and
        replace output files this tool did not write.
      team: the processes of a multi-process job (`hasmap_jax.runtime.distributed.Team`): every
        process calls `protect_paths` with the same arguments; each checks its round-robin share
        of the inputs, attacks whole batches dealt to it, and appends to its own manifest part.
        None: this process alone.
      io_workers: threads that decode the next batch and encode and write outputs while the
        attack runs (at most two batches of photos in memory at a time).
      memory: the bytes this process may use at its peak: batches hold as many photos (up to
        `batch_size`) as fit (`hasmap_jax.protect.memory`); None: the default budget there.
    """

    batch_size: int = 4
    force: bool = False
    team: Team | None = None
    io_workers: int = 2
    memory: int | None = None


def protect_paths(
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    settings: ProtectSettings | None = None,
    model: Any = None,
    sensitivity: Any = None,
    run: RunOptions | None = None,
    progress: ProgressFn | None = None,
    on_result: Callable[[FileResult], None] | None = None,
    listed: Sequence[str] = (),
) -> ProtectSummary:
    """Protects photo files and folders into `outdir`; see the module docstring for the guarantees.

    Args:
      inputs: image files and folders (walked recursively).
      outdir: the output folder (created if needed).
      settings: `ProtectSettings` (default: the "mid" preset, PNG output).
      model: a quality model (`QualityModel` or anything with the same `apply`); default: loaded
        from `settings.model`. Its identity should be in `settings.model` for the manifest.
      sensitivity: `attack_batch`'s sensitivity; default: from `settings.sensitivity`.
      run: how the run goes about it (`RunOptions`: batch size, `--force`, the processes of a
        job, I/O threads, memory budget); default: `RunOptions()`.
      progress: called as progress(done, total, note) as photos are attacked (photos to attack only;
        `done` is fractional inside a batch, which reports its steps in `note`).
      on_result: called with each `FileResult` as soon as it is known.
      listed: more input files, as `plan`'s `listed` (`--files-from`).

    Returns:
      A `ProtectSummary` (with the job's totals when `team` has several processes).

    Raises:
      UsageError / SettingsMismatch / FolderLocked / OutputNotWritable: before anything was written.
      ProtectInterrupted: on Ctrl-C, after the running writes finished or were removed.
      ProtectStopped: a write failed for want of space (or the output folder failed): at once.
    """
    # The manifest records the precision this backend runs, not "auto" (`ProtectSettings.resolved`).
    settings = (settings if settings is not None else ProtectSettings()).resolved()
    run = run if run is not None else RunOptions()
    team, batch_size, force = run.team if run.team is not None else Team(), run.batch_size, run.force
    io_workers, memory = run.io_workers, run.memory
    if model is None:
        model = load_quality_model(settings.model.split(" (")[0])
    # Record the model that runs, not the name the settings were made with: a rerun with another
    # model object must not take these outputs for its own (and the library records what the
    # command line does).
    ident = model_identity(settings.model.split(" (")[0], model)
    if settings.model != ident:
        settings = dataclasses.replace(settings, model=ident)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    outdir = Path(outdir)
    left_out: list[Path] = []
    jobs = plan(inputs, outdir, settings, listed=listed, left_out=left_out)
    summary = ProtectSummary(
        outdir,
        [],
        processes=team.count,
        planned=len(range(team.index, len(jobs), team.count)),
        left_out=left_out,
        not_done=[j.src for j in jobs] if team.count == 1 else [],  # until the run says otherwise
    )
    try:
        lock, summary.cleaned = _take_lock(outdir, team, {j.out.parent for j in jobs})
    except OutputNotWritable as e:
        if not e.disk_full:
            raise
        summary.stopped, summary.disk_full = str(e), True
        raise ProtectStopped(summary) from None
    try:
        return _protect(
            jobs,
            summary,
            settings,
            model,
            sensitivity,
            batch_size,
            force,
            progress,
            on_result,
            team,
            io_workers,
            memory,
        )
    finally:
        lock.release()


def _take_lock(outdir: Path, team: Team, folders: set[Path]) -> tuple[FolderLock, list[Path]]:
    """Process 0 takes the folder lock for the job (with a token all processes share) and removes
    the temporary files a killed run left in the `folders` this run writes into (listed in the
    result; a folder holding another run's lock is left alone); the others check the lock is in
    place. A refusal on process 0 is raised on every process."""
    token = team.broadcast(np.frombuffer(os.urandom(8), np.uint8)).tobytes().hex()
    lock = FolderLock(outdir, token=token, processes=team.count)
    message, refusal = "", 0  # 1: locked, 2: not writable, 3: full
    cleaned: list[Path] = []
    if team.index == 0:
        try:
            lock.acquire()
        except FolderLocked as e:
            message, refusal = str(e), 1
        except OSError as e:
            message, refusal = _unwritable(outdir, e), 3 if e.errno in DISK_FULL else 2
        else:
            # Nobody else writes here while we hold the lock: a temporary file now is a dead run's.
            ours = [d for d in folders if d == outdir or not (d / LOCK_NAME).exists()]
            cleaned = remove_temporaries(ours)
    refusal = int(team.broadcast(np.array([refusal], np.int32))[0])
    if refusal:
        message = message or f"{outdir}: process 0 of this job could not take the folder lock"
        if refusal == 1:
            raise FolderLocked(message)
        raise OutputNotWritable(message, disk_full=refusal == 3)
    if team.index != 0:
        lock.join()
    return lock, cleaned


def _protect(
    jobs, summary, settings, model, sensitivity, batch_size, force, progress, on_result, team, io_workers, memory
):
    outdir = summary.outdir
    manifest = Manifest(outdir / MANIFEST_NAME, write_to=outdir / part_name(team.index, team.count))
    team.barrier("hasmap-manifest-read")  # every process has read the parts before any writes
    try:
        manifest.start(settings.to_json(), force=force)
    except OSError as e:  # the first write after the lock
        if e.errno in DISK_FULL:
            summary.stopped, summary.disk_full = _stopped_text(outdir, e), True
            raise ProtectStopped(summary) from None
        raise OutputNotWritable(_unwritable(outdir, e)) from None
    if sensitivity is None:
        sensitivity = resolve_sensitivity(settings.sensitivity)

    t0 = time.monotonic()
    results: dict[int, FileResult] = {}
    finished = threading.Lock()

    def finish(i: int, r: FileResult) -> None:
        with finished:
            results[i] = r
            if on_result is not None:
                on_result(r)

    def close(interrupted: bool) -> None:
        summary.results = [results[i] for i in sorted(results)]
        if team.count == 1:
            summary.not_done = [j.src for i, j in enumerate(jobs) if i not in results]
        summary.interrupted, summary.seconds = interrupted, time.monotonic() - t0
        record = {"type": "run", "finished": not (interrupted or summary.stopped), "time": now(), **_counts(summary)}
        with contextlib.suppress(OSError):  # the run's record is for people; a full disk may refuse it
            manifest.append(record)

    try:
        mine = _triage(jobs, manifest, settings, force, finish, team)
        sizes = _pending_sizes(len(jobs), mine, team)
        limits = _memory_limits(memory, team)
        dealt, owners = _deal(_batches(sizes, batch_size, limits[0], robust=settings.robust), team.count)
        batches = [b for b, owner in zip(dealt, owners, strict=True) if owner == team.index]
        _run_batches(
            jobs, batches, mine, manifest, settings, model, sensitivity, progress, finish, io_workers, limits[1]
        )
    except KeyboardInterrupt:
        close(True)
        raise ProtectInterrupted(summary) from None
    except OSError as e:  # a write that every photo would meet (a photo's own read errors are its result)
        summary.stopped, summary.disk_full = _stopped_text(outdir, e), e.errno in DISK_FULL
        close(False)
        raise ProtectStopped(summary) from None
    close(False)
    if team.count > 1:
        totals = team.sum(np.array([summary.totals()[k] for k in TOTALS], np.int64))
        summary.job_totals = dict(zip(TOTALS, (int(v) for v in totals), strict=True))
    return summary


def _memory_limits(memory: int | None, team: Team) -> tuple[int | None, int | None]:
    """(budget, ceiling) of `memory.limits`, the smallest over the job's processes (every process
    must form the same batches; gathered in KiB, rounded up)."""
    local = mem.limits(memory)
    if team.count == 1:
        return local
    kib = [-1 if v is None else min(-(-v // 1024), 2**31 - 1) for v in local]
    every = team.allgather(np.array(kib, np.int32))
    agreed = []
    for k in range(2):
        known = [int(v) for v in every[:, k] if v >= 0]
        agreed.append(min(known) * 1024 if known else None)
    return agreed[0], agreed[1]


def _counts(summary: ProtectSummary) -> dict[str, int]:
    return {s: summary.count(s) for s in ("ok", "done", "skipped", "failed")}


def _triage(jobs, manifest: Manifest, settings: ProtectSettings, force: bool, finish, team: Team) -> dict[int, tuple]:
    """Finishes what needs no attack (done, collisions, unreadable) in this process's round-robin
    share of the jobs; returns that share's photos to attack, {index: (sha, (h, w))}."""
    pending: dict[int, tuple] = {}
    for i in range(team.index, len(jobs), team.count):
        job = jobs[i]
        if job.collides_with is not None:
            msg = (
                f"{job.src}: its output {job.rel_out} is already the output of {job.collides_with}; rename "
                "one of them or protect them in separate runs"
            )
            finish(i, _problem(manifest, job, msg, kind="name-collision"))
            continue
        try:
            sha = sha256_file(job.src)
        except OSError as e:
            finish(i, _problem(manifest, job, _cannot_read(job, e), kind="unreadable"))
            continue
        rec = manifest.files.get(job.rel_out)
        if (
            not force
            and rec is not None
            and rec.get("status") == "ok"
            and rec.get("input_sha256") == sha
            and job.out.is_file()
            and sha256_file(job.out) == rec.get("output_sha256")
        ):
            finish(i, FileResult(job.src, job.out, "done", notes=tuple(rec.get("notes", ())), record=rec))
            continue
        if job.out.exists() and job.rel_out not in manifest.owned and not force:
            msg = (
                f"{job.src}: {job.out} already exists and was not written by hasmap protect; move it away, "
                "choose another output folder, or use --force"
            )
            finish(i, _problem(manifest, job, msg, kind="output-exists"))
            continue
        try:
            size = probe_image(job.src, max_pixels=settings.max_pixels, min_side=settings.min_side)
        except ImageReadError as e:
            finish(i, _unreadable(manifest, job, e))
            continue
        pending[i] = (sha, size)
    return pending


def _cannot_read(job: _Job, e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return f"{job.src}: cannot read: a symbolic link loop ({e.strerror}); fix or remove the link"
    return f"{job.src}: cannot read ({e.strerror or e})"


def _pending_sizes(n: int, mine: dict[int, tuple], team: Team) -> dict[int, tuple[int, int]]:
    """{job index: (h, w)} of every photo to attack, over all processes' shares (one gather of
    about 12 bytes per photo, whatever the process count)."""
    share = -(-n // team.count)
    local = np.zeros((share, 3), np.int64)
    for i, (_, (h, w)) in mine.items():
        local[i // team.count] = (1, h, w)
    every = team.allgather(local)  # (count, share, 3): process p's k-th job is job k * count + p
    return {
        k * team.count + p: (int(every[p, k, 1]), int(every[p, k, 2]))
        for k in range(share)
        for p in range(team.count)
        if every[p, k, 0]
    }


def _batches(
    sizes: dict[int, tuple[int, int]], batch_size: int, budget: int | None = None, *, robust: str = "jpeg90"
) -> list[tuple[tuple[int, int], list[int], int]]:
    """(size, job indices, rows) per batch: one compiled program per photo size, a size's photos in
    as few batches as `batch_size` and the memory `budget` (bytes; None: no limit) allow, made as
    even as possible (6 photos at 4: 3 + 3); a last, smaller batch is padded to its size's `rows`
    rather than compiling a program of its own. A photo too large for the budget goes alone."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i in sorted(sizes):  # in input order: sizes in order of first appearance
        groups.setdefault(sizes[i], []).append(i)
    batches = []
    for size, idx in groups.items():
        cap = batch_size
        if budget is not None:
            cap = max(1, min(batch_size, mem.photos_per_batch(size, budget, robust=robust)))
        rows = -(-len(idx) // -(-len(idx) // cap))  # ceil(n / ceil(n / cap))
        batches += [(size, idx[k : k + rows], rows) for k in range(0, len(idx), rows)]
    return batches


def _deal(batches: list, count: int) -> tuple[list, list[int]]:
    """Deals whole batches to processes, each to the one with the fewest photos so far (the lowest
    index on ties): every process computes the same deal, and its batches stay full."""
    load = [0] * count
    owners = []
    for _, idx, _ in batches:
        p = min(range(count), key=lambda q: (load[q], q))
        load[p] += len(idx)
        owners.append(p)
    return batches, owners


def _problem(manifest: Manifest, job: _Job, message: str, *, status: str = "failed", kind: str = "") -> FileResult:
    """A skipped or failed file: recorded in the manifest (for the record; it is retried on a rerun)."""
    manifest.append(
        {
            "type": "file",
            "input": str(job.src),
            "output": job.rel_out,
            "status": status,
            "kind": kind,
            "message": message,
            "time": now(),
        }
    )
    return FileResult(job.src, None, status, message)


def _unreadable(manifest: Manifest, job: _Job, e: ImageReadError) -> FileResult:
    return _problem(manifest, job, str(e), status="skipped" if e.skip else "failed", kind=e.kind)


def _run_batches(
    jobs, batches, mine, manifest, settings, model, sensitivity, progress, finish, io_workers, ceiling=None
) -> None:
    """Attacks this process's batches, decoding the next batch and writing the last one's outputs
    in `io_workers` threads meanwhile (at most the running batch, the next one and the last one's
    outputs in memory). A photo whose estimated memory alone is above `ceiling` (bytes) fails
    before it is read. A write that fails for every photo alike (`_STOP_WRITING`) is raised before
    the next batch is attacked."""
    if ceiling is not None:
        fits = []
        for size, idx, rows in batches:
            need = mem.batch_bytes(size, 1, robust=settings.robust)
            if need <= ceiling:
                fits.append((size, idx, rows))
                continue
            for i in idx:
                msg = (
                    f"{jobs[i].src}: {size[1]}x{size[0]} = {size[0] * size[1] / 1e6:.1f} MP needs about "
                    f"{mem.format_size(need)} of memory to protect, more than this process can have "
                    f"({mem.format_size(ceiling)}); downscale it, or free memory (--memory SIZE runs it anyway)"
                )
                finish(i, _problem(manifest, jobs[i], msg, kind="memory"))
        batches = fits

    total = sum(len(idx) for _, idx, _ in batches)
    done = 0
    seen_sizes: set[tuple[int, int]] = set()
    kwargs: dict[str, Any] = dict(model=model, sensitivity=sensitivity, config=settings.attack_config())
    if progress is not None:
        progress(0, total, "")

    def load(idx: list[int]) -> list[tuple[int, Any, str]]:
        out = []
        for i in idx:
            job = jobs[i]
            try:
                sha = mine[i][0] if i in mine else sha256_file(job.src)  # another process checked it
                out.append((i, read_image(job.src, max_pixels=settings.max_pixels, min_side=settings.min_side), sha))
            except ImageReadError as e:
                finish(i, _unreadable(manifest, job, e))
            except OSError as e:
                finish(i, _problem(manifest, job, _cannot_read(job, e), kind="unreadable"))
        return out

    with concurrent.futures.ThreadPoolExecutor(max(1, io_workers), thread_name_prefix="hasmap-io") as pool:
        writes: list[concurrent.futures.Future] = []
        try:
            upcoming = pool.submit(load, batches[0][1]) if batches else None
            for b, (size, idx, rows) in enumerate(batches):
                loaded = upcoming.result()
                upcoming = pool.submit(load, batches[b + 1][1]) if b + 1 < len(batches) else None
                # A photo whose decoded size differs from the probe (a PNG orientation stored after
                # its pixels, or a file replaced meanwhile) goes alone.
                parts = [[x for x in loaded if x[1].size == size]] + [[x] for x in loaded if x[1].size != size]
                for part in parts:
                    if not part:
                        continue
                    s = part[0][1].size
                    if progress is not None and s not in seen_sizes:
                        progress(done, total, f"compiling for {s[1]}x{s[0]}")
                    seen_sizes.add(s)
                    if progress is not None:
                        label = f"batch {b + 1}/{len(batches)}"
                        kwargs["progress"] = functools.partial(_step_progress, progress, done, len(idx), total, label)
                    pad_to = rows if part is parts[0] else 0
                    for w in writes:  # the last batch's writes failed already: stop before attacking
                        if w.done():
                            w.result()
                    res = _attack(jobs, part, manifest, settings, kwargs, finish, pad_to)
                    for w in writes:  # the previous batch's outputs are on disk before the next is queued
                        w.result()
                    # One task writes the batch's photos in order: an error (or Ctrl-C) while writing
                    # one leaves the photos after it unwritten rather than racing on.
                    if res is not None:
                        writes = [pool.submit(_write_all, jobs, part, res, manifest, settings, finish)]
                    else:
                        writes = []
                done += len(idx)
                if progress is not None:
                    progress(done, total, "")
            for w in writes:
                w.result()
        except BaseException:
            if upcoming is not None:
                upcoming.cancel()
            for w in writes:  # a write in progress completes (record first, then the file)
                w.cancel()
            raise


def _step_progress(progress, base: int, share: int, total: int, label: str, k: int, n: int) -> None:
    """Steps inside a batch move the bar by fractions of the batch's photos."""
    progress(base + share * k / n, total, f"{label}, step {k}/{n}")


def _attack(jobs, loaded, manifest, settings, kwargs, finish, rows=0):
    """Attacks one batch of same-size photos; None (each photo recorded as failed) where the attack
    could not run. A batch of fewer than `rows` photos is padded with copies of its last photo
    (results dropped), so that it runs the program already compiled for full batches of that size."""
    rgb = []
    for _, img, _ in loaded:
        x = img.rgb
        if img.alpha is not None and settings.format == "jpeg":
            x = composite_on_white(x, img.alpha)  # what the JPEG will hold
        rgb.append(x)
    rgb += rgb[-1:] * (rows - len(rgb))
    try:
        # The minimum-norm method has no alpha (`ProtectSettings.alpha` is None): attack_batch ignores it.
        alpha = settings.alpha if settings.alpha is not None else 1.0
        return attack_batch(np.stack(rgb), alpha, **kwargs)
    except (ValueError, MemoryError, jax.errors.JaxRuntimeError) as e:
        # What a photo can cause: a size the model cannot take (ValueError), running out of host
        # or device memory (RESOURCE_EXHAUSTED). Programming errors surface instead.
        for i, _, _ in loaded:
            msg = f"{jobs[i].src}: the attack failed ({type(e).__name__}: {e})"
            finish(i, _problem(manifest, jobs[i], msg, kind="attack"))
        return None


def _write_all(jobs, part, res, manifest, settings, finish) -> None:
    for k, (i, img, sha) in enumerate(part):
        _write(i, jobs[i], img, sha, res, k, manifest, settings, finish)


def _write(i, job, img, sha, res, k, manifest, settings, finish) -> None:
    """Encodes one protected photo and writes it: the manifest record first, then the file."""
    buf = io.BytesIO()
    encode_image(
        buf,
        res.images[k],
        format=settings.format,
        quality=settings.quality,
        alpha=img.alpha,
        exif=img.exif if settings.keep_metadata else None,
        icc_profile=None if settings.strip_icc else img.icc_profile,
    )
    data = buf.getvalue()
    record = {
        "type": "file",
        "input": str(job.src),
        "output": job.rel_out,
        "input_sha256": sha,
        "output_sha256": hashlib.sha256(data).hexdigest(),
        "status": "ok",
        "size": list(img.size),
        "notes": list(img.notes),
        "time": now(),
        **_metrics(res, k, settings),
    }
    # The record goes first: if we are stopped before the file is in place, the rerun finds the
    # output missing (or its digest different), redoes it, and knows the path is ours to replace.
    manifest.append(record)
    try:
        with atomic_output(job.out) as f:
            f.write(data)
    except OSError as e:
        if e.errno in _STOP_WRITING:  # every other photo would fail alike: stop the run
            raise
        why = e.strerror or e
        msg = f"{job.src}: cannot write {job.out} ({why}); make its folder writable or move aside what is there"
        finish(i, _problem(manifest, job, msg, kind="unwritable"))
        return
    finish(i, FileResult(job.src, job.out, "ok", notes=img.notes, record=record))


def _metrics(res, k: int, settings: ProtectSettings) -> dict[str, Any]:
    def num(a):
        v = float(np.asarray(a)[k])
        return v if np.isfinite(v) else None  # PSNR of an unchanged image is inf; JSON has no inf

    checks = res.scores_after_checkpoints
    # What the file holds: the 8-bit image (PNG), or its JPEG round trip (JPEG output: the first
    # checkpoint, of the JPEG chain and of "web" alike).
    saved = res.score_after if settings.format != "jpeg" or checks is None else np.asarray(checks)[:, 0]
    m = {
        "score_before": num(res.score_before),
        "score_after": num(saved),
        "rated_low": bool(float(np.asarray(saved)[k]) <= settings.threshold),
        "rated_low_before": bool(float(np.asarray(res.score_before)[k]) <= settings.threshold),
        "psnr": num(res.psnr),
        "ssim": num(res.ssim),
        "l2": num(res.l2),
        "linf": num(res.linf),
        "weighted_l2": num(res.weighted_l2),
        "alpha": num(res.alpha),
        "steps": int(np.asarray(res.steps)[k]),
        "kept": str(res.kept[k]),
    }
    if settings.robust == "web" and checks is not None:
        names = list(res.checkpoints)
        m["checkpoints"] = {n: num(np.asarray(checks)[:, j]) for j, n in enumerate(names)}
        m["protected_after_checkpoints"] = bool(np.all(np.asarray(res.success_after_checkpoints)[k]))
        m["protected"] = m["protected_after_checkpoints"]
        return m
    if settings.robust_jpeg is not None and checks is not None:
        # The checkpoints are the JPEG chain's prefixes: the last is after the re-encoding.
        m["jpeg_quality"] = int(settings.robust_jpeg)
        m["jpeg_chain"] = list(settings.jpeg_chain)
        m["score_after_jpeg"] = num(np.asarray(checks)[:, -1])
        m["protected_after_jpeg"] = bool(np.asarray(res.success_after_checkpoints)[k, -1])
        m["protected"] = m["protected_after_jpeg"]
    else:
        m["protected"] = m["rated_low"]
    return m
