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
  manifest, and `ProtectInterrupted` (a `KeyboardInterrupt`) carries the summary so far.
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

import dataclasses
import functools
import hashlib
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hasmap_jax.files import (
    IMAGE_EXTENSIONS,
    ImageReadError,
    atomic_output,
    composite_on_white,
    encode_image,
    find_images,
    probe_image,
    read_image,
    sha256_file,
)
from hasmap_jax.protect.manifest import MANIFEST_NAME, Manifest, model_identity, now, recorded_outputs
from hasmap_jax.protect.settings import ProtectSettings, UsageError
from hasmap_jax.sensitivity.maps import resolve_sensitivity


@dataclasses.dataclass
class FileResult:
    """What happened to one input.

    Attributes:
      input: the input file.
      output: the output file (None when nothing was written).
      status: "ok" (written now), "done" (already done by an earlier run, left as is), "skipped"
        (too small) or "failed".
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


@dataclasses.dataclass
class ProtectSummary:
    """All per-file results of a run, in input order, and whether it was interrupted."""

    outdir: Path
    results: list[FileResult]
    interrupted: bool = False
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def exit_code(self) -> int:
        """0: every input image has its output; 1: some were skipped or failed; 130: interrupted."""
        if self.interrupted:
            return 130
        return 1 if any(r.status in ("failed", "skipped") for r in self.results) else 0

    def text(self) -> str:
        """A few lines for people: counts, then every photo that needs attention."""
        written = [r for r in self.results if r.status in ("ok", "done")]
        low = sum(bool(r.protected) for r in written)
        parts = [
            f"{len(self.results)} input(s): {self.count('ok')} protected now, {self.count('done')} already done, "
            f"{self.count('skipped')} skipped, {self.count('failed')} failed"
        ]
        if written:
            check = "after JPEG" if any("protected_after_jpeg" in r.record for r in written) else "as saved"
            parts.append(f"{low} of {len(written)} output(s) rated not high quality by the model ({check})")
        for r in self.results:
            if r.status in ("skipped", "failed"):
                parts.append(f"  {r.status}: {r.message}")
            elif r.protected is False:
                parts.append(f"  NOT protected (still rated high): {r.input} -> {r.output}")
        if self.interrupted:
            parts.append("interrupted: rerun the same command to finish (finished photos are skipped)")
        return "\n".join(parts)


class ProtectInterrupted(KeyboardInterrupt):
    """Ctrl-C during `protect_paths`; `summary` holds the results up to then."""

    def __init__(self, summary: ProtectSummary):
        super().__init__("interrupted")
        self.summary = summary


# --------------------------------------------------------------------------------------------
# Planning


@dataclasses.dataclass
class _Job:
    src: Path
    rel_out: str  # output path relative to the output folder, POSIX separators
    out: Path
    collides_with: Path | None = None


def plan(inputs: Sequence[str | os.PathLike], outdir: str | os.PathLike, settings: ProtectSettings) -> list[_Job]:
    """Input files and their output paths; raises `UsageError` before anything is written.

    Folders are walked recursively (image extensions only; hidden files, the output folder and the
    outputs its manifest records are left out, so protecting into the input folder with a suffix
    does not protect the outputs again on a rerun); files named directly are tried whatever their
    extension.
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"output {outdir} exists and is not a folder")
    ours = recorded_outputs(outdir)
    jobs: list[_Job] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            for f in find_images(p, exclude=(outdir,)):
                if f.resolve() not in ours:
                    jobs.append(_job(f, f.relative_to(p), outdir, settings))
        elif p.exists():
            jobs.append(_job(p, Path(p.name), outdir, settings))
        else:
            raise UsageError(f"input {p}: no such file or folder")
    if not jobs:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise UsageError(f"no image files in {', '.join(map(str, inputs))} (looked for {exts})")
    inputs_resolved = {j.src.resolve(): j.src for j in jobs}
    seen: dict[str, Path] = {}
    for j in jobs:
        target = j.out.resolve()
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


def protect_paths(
    inputs: Sequence[str | os.PathLike],
    outdir: str | os.PathLike,
    *,
    settings: ProtectSettings | None = None,
    model: Any = None,
    sensitivity: Any = None,
    batch_size: int = 4,
    force: bool = False,
    progress: ProgressFn | None = None,
    on_result: Callable[[FileResult], None] | None = None,
) -> ProtectSummary:
    """Protects photo files and folders into `outdir`; see the module docstring for the guarantees.

    Args:
      inputs: image files and folders (walked recursively).
      outdir: the output folder (created if needed).
      settings: `ProtectSettings` (default: the "mid" preset, PNG output).
      model: a quality model (`QualityModel` or anything with the same `apply`); default: loaded
        from `settings.model`. Its identity should be in `settings.model` for the manifest.
      sensitivity: `attack_batch`'s sensitivity; default: from `settings.sensitivity`.
      batch_size: photos of one size attacked together.
      force: redo everything with these settings even if the folder holds other results, and
        replace output files this tool did not write.
      progress: called as progress(done, total, note) as photos are attacked (photos to attack only;
        `done` is fractional inside a batch, which reports its steps in `note`).
      on_result: called with each `FileResult` as soon as it is known.

    Returns:
      A `ProtectSummary`.

    Raises:
      UsageError / SettingsMismatch: before anything was written.
      ProtectInterrupted: on Ctrl-C, after the running write finished or was removed.
    """
    settings = settings if settings is not None else ProtectSettings()
    if model is not None:
        # Record the model that runs, not the name the settings were made with: a rerun with
        # another model object must not take these outputs for its own.
        ident = model_identity(settings.model.split(" (")[0], model)
        if settings.model != ident:
            settings = dataclasses.replace(settings, model=ident)
    if batch_size < 1:
        raise UsageError("batch size must be at least 1")
    outdir = Path(outdir)
    jobs = plan(inputs, outdir, settings)
    manifest = Manifest(outdir / MANIFEST_NAME)
    manifest.start(settings.to_json(), force=force)
    if model is None:
        from hasmap_jax.weights.loading import load_quality_model

        model = load_quality_model(settings.model)
    if sensitivity is None:
        sensitivity = resolve_sensitivity(settings.sensitivity)

    t0 = time.monotonic()
    results: dict[int, FileResult] = {}
    summary = ProtectSummary(outdir, [])

    def finish(i: int, r: FileResult) -> None:
        results[i] = r
        if on_result is not None:
            on_result(r)

    try:
        pending = _triage(jobs, manifest, settings, force, finish)
        _run_batches(jobs, pending, manifest, settings, model, sensitivity, batch_size, progress, finish)
    except KeyboardInterrupt:
        summary.results = [results[i] for i in sorted(results)]
        summary.interrupted, summary.seconds = True, time.monotonic() - t0
        manifest.append({"type": "run", "finished": False, "time": now(), **_counts(summary)})
        raise ProtectInterrupted(summary) from None
    summary.results = [results[i] for i in sorted(results)]
    summary.seconds = time.monotonic() - t0
    manifest.append({"type": "run", "finished": True, "time": now(), **_counts(summary)})
    return summary


def _counts(summary: ProtectSummary) -> dict[str, int]:
    return {s: summary.count(s) for s in ("ok", "done", "skipped", "failed")}


def _triage(jobs, manifest: Manifest, settings: ProtectSettings, force: bool, finish) -> dict[int, tuple]:
    """Finishes what needs no attack (done, collisions, unreadable); returns {index: (sha, (h, w))}."""
    pending: dict[int, tuple] = {}
    for i, job in enumerate(jobs):
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
            finish(i, _problem(manifest, job, f"{job.src}: cannot read ({e.strerror or e})", kind="unreadable"))
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


def _run_batches(jobs, pending, manifest, settings, model, sensitivity, batch_size, progress, finish) -> None:
    from hasmap_jax.attack import attack_batch

    # Group by upright size (one compiled program each), in order of first appearance.
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (_, size) in pending.items():
        groups.setdefault(size, []).append(i)
    # One compiled program per photo size: a size's photos are split into as few batches as
    # batch_size allows, made as even as possible (6 photos, batch size 4: 3 + 3), and a last,
    # smaller batch is padded to the size's batch instead of compiling a program of its own.
    batches = []
    for size, idx in groups.items():
        rows = -(-len(idx) // -(-len(idx) // batch_size))  # ceil(n / ceil(n / batch_size))
        batches += [(size, idx[k : k + rows], rows) for k in range(0, len(idx), rows)]
    total, done = len(pending), 0
    seen_sizes: set[tuple[int, int]] = set()
    kwargs: dict[str, Any] = dict(
        model=model,
        sensitivity=sensitivity,
        threshold=settings.threshold,
        steps=settings.steps,
        search_steps=settings.search_steps,
        learning_rate=settings.learning_rate,
        compute_dtype=settings.precision,
    )
    if settings.view_size != "auto":
        kwargs["view_size"] = settings.view_size
    if settings.jpeg_chain:
        kwargs["robust_jpeg"] = settings.jpeg_chain
    if settings.confidence:
        kwargs["confidence"] = settings.confidence
    if progress is not None:
        progress(0, total, "")
    for b, (size, idx, rows) in enumerate(batches):
        loaded = []
        for i in idx:
            job = jobs[i]
            try:
                img = read_image(job.src, max_pixels=settings.max_pixels, min_side=settings.min_side)
            except ImageReadError as e:
                finish(i, _unreadable(manifest, job, e))
                continue
            loaded.append((i, img))
        # A photo whose decoded size differs from the probe (a PNG orientation stored after its
        # pixels, or a file replaced meanwhile) goes alone.
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
            _attack_and_write(jobs, pending, part, manifest, settings, attack_batch, kwargs, finish, pad_to)
        done += len(idx)
        if progress is not None:
            progress(done, total, "")


def _step_progress(progress, base: int, share: int, total: int, label: str, k: int, n: int) -> None:
    """Steps inside a batch move the bar by fractions of the batch's photos."""
    progress(base + share * k / n, total, f"{label}, step {k}/{n}")


def _attack_and_write(jobs, pending, loaded, manifest, settings, attack_batch, kwargs, finish, rows=0) -> None:
    """Attacks one batch of same-size photos and writes each output (record first, then the file).

    A batch of fewer than `rows` photos is padded with copies of its last photo (results dropped),
    so that it runs the program already compiled for full batches of that size."""
    rgb = []
    for _, img in loaded:
        x = img.rgb
        if img.alpha is not None and settings.format == "jpeg":
            x = composite_on_white(x, img.alpha)  # what the JPEG will hold
        rgb.append(x)
    rgb += rgb[-1:] * (rows - len(rgb))
    try:
        res = attack_batch(np.stack(rgb), settings.alpha, **kwargs)
    except (ValueError, MemoryError, jax.errors.JaxRuntimeError) as e:
        # What a photo can cause: a size the model cannot take (ValueError), running out of host
        # or device memory (RESOURCE_EXHAUSTED). Programming errors surface instead.
        for i, _ in loaded:
            msg = f"{jobs[i].src}: the attack failed ({type(e).__name__}: {e})"
            finish(i, _problem(manifest, jobs[i], msg, kind="attack"))
        return
    for k, (i, img) in enumerate(loaded):
        job = jobs[i]
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
            "input_sha256": pending[i][0],
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
        with atomic_output(job.out) as f:
            f.write(data)
        finish(i, FileResult(job.src, job.out, "ok", notes=img.notes, record=record))


def _metrics(res, k: int, settings: ProtectSettings) -> dict[str, Any]:
    def num(a):
        v = float(np.asarray(a)[k])
        return v if np.isfinite(v) else None  # PSNR of an unchanged image is inf; JSON has no inf

    chain = getattr(res, "scores_jpeg_chain", None)
    # What the file holds: the 8-bit image (PNG), or its JPEG round trip (JPEG output).
    saved = res.score_after if settings.format != "jpeg" or chain is None else np.asarray(chain)[:, 0]
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
    jpeg = getattr(res, "score_after_jpeg", None)
    if settings.robust_jpeg is not None and jpeg is not None:
        m["jpeg_quality"] = int(settings.robust_jpeg)
        m["jpeg_chain"] = list(settings.jpeg_chain)
        m["score_after_jpeg"] = num(jpeg)
        m["protected_after_jpeg"] = bool(res.success_after_jpeg[k])
        m["protected"] = m["protected_after_jpeg"]
    else:
        m["protected"] = m["rated_low"]
    return m
