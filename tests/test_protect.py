"""Protecting folders of photo files: batching, bad inputs, atomic outputs, resuming, metadata, CLI."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ToyQuality, random_images
from PIL import Image

from hasmap_jax import attack, files
from hasmap_jax.cli import build_parser
from hasmap_jax.cli import main as cli_main
from hasmap_jax.cli.common import EXIT_DISK_FULL
from hasmap_jax.protect import (
    MANIFEST_NAME,
    FolderLock,
    FolderLocked,
    Manifest,
    OutputNotWritable,
    ProtectInterrupted,
    ProtectSettings,
    ProtectStopped,
    RunOptions,
    SettingsMismatch,
    UsageError,
    protect_paths,
    runner,
)
from hasmap_jax.protect import memory as mem
from hasmap_jax.protect.lock import LOCK_NAME

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
H, W = 32, 40  # the toy model's input size; other sizes reach it through attack_batch's view
STEPS = 20


@jax.tree_util.register_pytree_node_class
class SizedToy(ToyQuality):
    """ToyQuality with an `input_size`, so `attack_batch(view_size="auto")` resizes other photos to it."""

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.weights.shape[:2])


def sized_toy(h: int = H, w: int = W, seed: int = 0) -> SizedToy:
    weights = 1e-2 * np.abs(np.random.RandomState(seed).randn(h, w, 3)).astype(np.float32)
    return SizedToy(jnp.asarray(weights), 70.0, 40.0)  # clean photos score about 70: "high"


@pytest.fixture(scope="module")
def model() -> SizedToy:
    return sized_toy()


def settings(**kw) -> ProtectSettings:
    return ProtectSettings(**{"steps": STEPS, "model": "toy", **kw})


def save_photo(path: Path, h: int = H, w: int = W, seed: int = 0, mode: str = "RGB", **save) -> np.ndarray:
    a = (random_images(1, h, w, seed=seed)[0] * 255).round().astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(a)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, **save)
    return a


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if files.is_temporary(p)]


@pytest.fixture
def spy(monkeypatch):
    """Records each attack_batch call's batch shape and keyword arguments (and still runs it)."""
    calls = []
    real = attack.attack_batch

    def wrapper(images, alpha, **kw):
        calls.append((np.asarray(images).shape, {k: v for k, v in kw.items() if k not in ("model", "sensitivity")}))
        return real(images, alpha, **kw)

    monkeypatch.setattr(runner, "attack_batch", wrapper)
    return calls


def chain(call) -> tuple[int, ...]:
    """The JPEG chain an `attack_batch` call recorded by `spy` was asked to survive."""
    profile = call[1]["config"].profile
    return () if profile is None else profile.jpeg_chain


# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mixed_sizes_batched_by_size_at_own_resolution(tmp_path, model, spy):
    src = tmp_path / "in"
    for i in range(3):
        save_photo(src / f"a{i}.png", seed=i)
    save_photo(src / "sub" / "b0.png", 48, 64, seed=5)
    save_photo(src / "sub" / "b1.jpg", 48, 64, seed=6, quality=95)
    before = tree_digest(src)
    s = protect_paths([src], tmp_path / "out", settings=settings(), model=model, run=RunOptions(batch_size=2))
    assert s.exit_code == 0 and s.count("ok") == 5
    # One compiled program per size: every call holds photos of one size, at most batch_size of them,
    # and the partial last batch of a size is padded to the size's batch rather than compiled anew.
    assert sorted(shape for shape, _ in spy) == [(2, H, W, 3), (2, H, W, 3), (2, 48, 64, 3)]
    spy.clear()
    for i in range(6):
        save_photo(tmp_path / "six" / f"a{i}.png", seed=i)
    protect_paths([tmp_path / "six"], tmp_path / "out6", settings=settings(), model=model, run=RunOptions(batch_size=4))
    # Six photos of one size with batch size 4: two even batches of 3, not 4 + 2 padded to 4.
    assert sorted(shape for shape, _ in spy) == [(3, H, W, 3), (3, H, W, 3)]
    for r in s.results:
        with Image.open(r.input) as a, Image.open(r.output) as b:
            assert a.size == b.size and b.mode == "RGB"
        assert r.protected and r.record["score_before"] > 50 >= r.record["score_after"]
        assert r.record["kept"] in ("margin", "rated_low")  # which iterate came back is recorded
    assert (tmp_path / "out" / "sub" / "b1.png").is_file()
    assert tree_digest(src) == before and not temporaries(tmp_path)


def test_progress_reports_steps_inside_each_batch(tmp_path, model):
    src = tmp_path / "in"
    for i in range(3):
        save_photo(src / f"a{i}.png", seed=i)
    seen = []
    protect_paths(
        [src],
        tmp_path / "out",
        settings=settings(),
        model=model,
        progress=lambda *a: seen.append(a),
        run=RunOptions(batch_size=2),
    )
    inside = [(d, note) for d, _, note in seen if "step" in note]
    assert len(inside) >= 2 * STEPS // 5 - 1, seen  # both batches report their steps
    assert any(0 < d < 2 for d, _ in inside) and any(2 < d < 3 for d, _ in inside)
    done = [d for d, *_ in seen]
    assert done == sorted(done) and seen[-1][:2] == (3, 3)


@pytest.mark.subprocess
def test_second_run_on_new_photos_compiles_nothing(tmp_path):
    """With the persistent compilation cache (on by default in the command line), a second
    `hasmap protect` on new photos of a known size starts attacking without compiling."""
    script = f"""
import sys, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, {str(Path(__file__).parent)!r})
from test_protect import sized_toy
import hasmap_jax.weights.loading
from hasmap_jax.cli import main as cli_main
compiles = []  # programs compiled because the persistent cache did not have them
jax.monitoring.register_event_listener(
    lambda name, **k: compiles.append(name) if name == "/jax/compilation_cache/cache_misses" else None)
hasmap_jax.weights.loading.load_quality_model = lambda name="default": sized_toy()
code = cli_main(["protect", sys.argv[1], "-o", sys.argv[2], "--steps", "{STEPS}", "-q"])
print("COMPILES", len(compiles), code)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HASMAP_CACHE_DIR": str(tmp_path / "cache")}
    counts = []
    for run in range(2):
        save_photo(tmp_path / f"in{run}" / "p.png", seed=run)
        p = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / f"in{run}"), str(tmp_path / f"out{run}")],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        line = [x for x in p.stdout.splitlines() if x.startswith("COMPILES")]
        assert line and line[0].endswith(" 0"), p.stdout + p.stderr
        counts.append(int(line[0].split()[1]))
    assert counts[0] > 0 and counts[1] == 0, counts
    assert any((tmp_path / "cache").iterdir())


def test_each_bad_input_gets_a_message_and_the_rest_completes(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "good.png")
    save_photo(src / "grey.png", mode="L")
    save_photo(src / "palette.png", mode="P")
    save_photo(src / "cmyk.jpg", mode="CMYK", quality=95)
    a = save_photo(src / "rgba.png", mode="RGBA")
    rgba = Image.open(src / "rgba.png").convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(src / "rgba.png")
    Image.fromarray((np.arange(H * W).reshape(H, W) * 50).astype(np.uint16)).save(src / "sixteen.png")
    frames = [Image.fromarray(a), Image.fromarray(255 - a)]
    frames[0].save(src / "anim.gif", save_all=True, append_images=frames[1:])
    save_photo(src / "tiny.png", 16, 40)
    from test_files import png_header_only

    (src / "huge.png").write_bytes(png_header_only(8000, 6000))
    whole = (src / "good.png").read_bytes()
    (src / "cut.png").write_bytes(whole[: len(whole) // 2])
    (src / "notes.jpg").write_text("not a photo")
    before = tree_digest(src)

    s = protect_paths([src], tmp_path / "out", settings=settings(), model=model, run=RunOptions(batch_size=8))
    by = {r.input.name: r for r in s.results}
    expect = {
        "good.png": ("ok", ""),
        "grey.png": ("ok", "greyscale"),
        "palette.png": ("ok", "palette"),
        "cmyk.jpg": ("ok", "CMYK"),
        "rgba.png": ("ok", "alpha"),
        "sixteen.png": ("ok", "16-bit"),
        "anim.gif": ("ok", "2 frames"),
        "tiny.png": ("skipped", "too small"),
        "huge.png": ("failed", "--max-pixels"),
        "cut.png": ("failed", "truncated or corrupt"),
        "notes.jpg": ("failed", "not an image"),
    }
    for name, (status, words) in expect.items():
        r = by[name]
        assert r.status == status, (name, r.status, r.message)
        text = " ".join(r.notes) + r.message
        assert words in text, (name, text)
        if status != "ok":
            assert name in r.message and r.output is None
    assert s.exit_code == 1
    with Image.open(tmp_path / "out" / "rgba.png") as out:
        assert out.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(out)[..., 3], alpha)
    with Image.open(tmp_path / "out" / "sixteen.png") as out:
        assert out.mode == "RGB"
    # `evaluate` judges the transparent output on the pixels `protect` attacked and scored.
    from hasmap_jax.evaluation import evaluate

    ev = evaluate(src, [tmp_path / "out"], model=model, jpeg_quality=None, lpips=False)
    (row,) = [r for r in ev.runs[0].rows if r["key"] == "rgba"]
    np.testing.assert_allclose(row["score_protected"], by["rgba.png"].record["score_after"], rtol=1e-5)
    assert tree_digest(src) == before and not temporaries(tmp_path)
    text = s.text()
    assert "1 skipped, 3 failed" in text and "notes.jpg" in text


def test_resume_after_interrupt(tmp_path, model):
    src = tmp_path / "in"
    for i in range(5):
        save_photo(src / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    written = []

    def stop_after_three(r):
        written.append(r)
        if len(written) == 3:
            raise KeyboardInterrupt

    with pytest.raises(ProtectInterrupted) as e:
        protect_paths(
            [src], out, settings=settings(), model=model, on_result=stop_after_three, run=RunOptions(batch_size=2)
        )
    assert e.value.summary.interrupted and e.value.summary.exit_code == 130
    assert e.value.summary.count("ok") == 3
    # The count is the folder's, not only the photos reached before the interruption.
    assert "5 input(s): 3 protected now" in e.value.summary.text() and "2 not done" in e.value.summary.text()
    assert sorted(p.name for p in out.glob("*.png")) == ["p0.png", "p1.png", "p2.png"]
    assert not temporaries(tmp_path)
    lines = [json.loads(x) for x in (out / MANIFEST_NAME).read_text().splitlines()]
    assert lines[-1]["type"] == "run" and lines[-1]["finished"] is False
    first = tree_digest(out)

    s = protect_paths([src], out, settings=settings(), model=model, run=RunOptions(batch_size=2))
    assert [r.status for r in s.results] == ["done"] * 3 + ["ok"] * 2 and s.exit_code == 0
    after = tree_digest(out)
    assert all(after[k] == first[k] for k in ("p0.png", "p1.png", "p2.png"))
    assert sorted(p.name for p in out.glob("*.png")) == [f"p{i}.png" for i in range(5)]
    # A third run has nothing left to do.
    assert protect_paths([src], out, settings=settings(), model=model).count("done") == 5


def test_interrupt_while_writing_leaves_no_partial_file(tmp_path, model, monkeypatch):
    src = tmp_path / "in"
    for i in range(3):
        save_photo(src / f"p{i}.png", seed=i)
    out = tmp_path / "out"
    real_replace, calls = os.replace, []

    def replace(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C between writing the temporary file and renaming it
        return real_replace(a, b)

    monkeypatch.setattr(files.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        protect_paths([src], out, settings=settings(), model=model)
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "p0.png"]
    s = protect_paths([src], out, settings=settings(), model=model)
    assert [r.status for r in s.results] == ["done", "ok", "ok"]
    assert not temporaries(tmp_path)


def test_manifest_lines_with_missing_keys_count_as_broken(tmp_path, model):
    src, out = tmp_path / "in", tmp_path / "out"
    save_photo(src / "p.png")
    assert protect_paths([src], out, settings=settings(), model=model).count("ok") == 1
    with open(out / MANIFEST_NAME, "a") as f:
        f.write('{"type": "file", "status": "ok"}\n{"type": "settings", "version": 1}\n[1, 2]\n{"no": "type"}\n')
    from hasmap_jax.protect import Manifest

    m = Manifest(out / MANIFEST_NAME)
    assert m.broken_lines == 4 and len(m.files) == 1
    again = protect_paths([src], out, settings=settings(), model=model)  # resumes: nothing redone
    assert again.count("done") == 1 and again.count("ok") == 0


def test_manifest_records_the_model_object_that_ran(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    save_photo(src / "p.png")
    first, other = sized_toy(seed=0), sized_toy(seed=0)
    first.card, other.card = {"weights": "first"}, {"weights": "other"}
    s = protect_paths([src], out, settings=settings(model="default"), model=first)
    assert s.count("ok") == 1 and s.results[0].record is not None
    # Same settings naming "default", another model object: not taken as done.
    with pytest.raises(SettingsMismatch, match="model"):
        protect_paths([src], out, settings=settings(model="default"), model=other)


def test_programming_errors_surface_photo_errors_do_not(tmp_path, model, monkeypatch):
    src = tmp_path / "in"
    save_photo(src / "p.png")

    def broken(*a, **k):
        raise TypeError("a bug")

    monkeypatch.setattr(runner, "attack_batch", broken)
    with pytest.raises(TypeError, match="a bug"):
        protect_paths([src], tmp_path / "out", settings=settings(), model=model)

    def too_small(*a, **k):
        raise ValueError("'window8' pooling needs a backbone map of 8 to 15")

    monkeypatch.setattr(runner, "attack_batch", too_small)
    s = protect_paths([src], tmp_path / "out2", settings=settings(), model=model)
    assert s.count("failed") == 1 and "window8" in s.results[0].message


def test_other_settings_refused_unless_forced(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "p.png")
    out = tmp_path / "out"
    protect_paths([src], out, settings=settings(method="cw", alpha=20.0), model=model)
    with pytest.raises(SettingsMismatch, match=r"alpha: 20\.0 -> 5\.0.*--force"):
        protect_paths([src], out, settings=settings(method="cw", alpha=5.0), model=model)
    with pytest.raises(SettingsMismatch, match=r"alpha: 20\.0 -> None.*method: 'cw' -> 'fmn'"):
        protect_paths([src], out, settings=settings(), model=model)
    s = protect_paths([src], out, settings=settings(method="cw", alpha=5.0), model=model, run=RunOptions(force=True))
    assert s.results[0].status == "ok" and s.results[0].record["alpha"] == 5.0
    # The new settings are now the folder's: a plain rerun with them resumes.
    five = settings(method="cw", alpha=5.0)
    assert protect_paths([src], out, settings=five, model=model).results[0].status == "done"


def test_inputs_never_overwritten(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "p.png")
    save_photo(src / "q.jpg", quality=90)
    before = tree_digest(src)
    with pytest.raises(UsageError, match="would overwrite the input"):
        protect_paths([src], src, settings=settings(), model=model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no image files"):
        protect_paths([tmp_path / "empty"], tmp_path / "out", settings=settings(), model=model)
    # With a suffix the outputs can live next to the inputs, and a rerun does not protect them again.
    s = protect_paths([src], src, settings=settings(suffix="_protected"), model=model)
    assert s.count("ok") == 2
    s = protect_paths([src], src, settings=settings(suffix="_protected"), model=model)
    assert [r.status for r in s.results] == ["done", "done"]
    after = tree_digest(src)
    assert {k: after[k] for k in before} == before
    assert sorted(after) == sorted([*before, "p_protected.png", "q_protected.png", MANIFEST_NAME])


def test_foreign_output_file_kept_and_name_collisions_reported(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "a.jpg", quality=95)
    save_photo(src / "a.png", seed=1)
    save_photo(src / "b.png", seed=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "b.png").write_bytes(b"someone else's file")
    s = protect_paths([src], out, settings=settings(), model=model)
    by = {r.input.name: r for r in s.results}
    assert by["a.jpg"].status == "ok"
    assert by["a.png"].status == "failed" and "already the output of" in by["a.png"].message
    assert by["b.png"].status == "failed" and "not written by hasmap" in by["b.png"].message
    assert (out / "b.png").read_bytes() == b"someone else's file"
    # The photo that wrote a.png stays done on a rerun; the one colliding with it is reported again.
    s = protect_paths([src], out, settings=settings(), model=model)
    assert [r.status for r in s.results] == ["done", "failed", "failed"]
    s = protect_paths([src], out, settings=settings(), model=model, run=RunOptions(force=True))
    assert {r.input.name: r.status for r in s.results}["b.png"] == "ok"


@pytest.mark.slow
def test_jpeg_output_is_attacked_through_jpeg(tmp_path, model, spy):
    from hasmap_jax.transforms.jpeg import pillow_jpeg
    from hasmap_jax.transforms.views import fit_view_np

    def score(rgb):
        x = np.asarray(rgb, np.float32)[None] / 255.0
        return float(model.apply(jnp.asarray(fit_view_np(x, model.input_size)))[0])

    src = tmp_path / "in"
    save_photo(src / "p.png")
    # JPEG output at 80: attacked through its own encoding, then the protocol's re-encoding at 90.
    s = protect_paths([src], tmp_path / "out", settings=settings(format="jpeg", quality=80), model=model)
    assert chain(spy[-1]) == (80, 90)
    r = s.results[0]
    assert r.output.suffix == ".jpg" and r.record["jpeg_quality"] == 90 and r.record["jpeg_chain"] == [80, 90]
    assert r.record["protected"] == r.record["protected_after_jpeg"]
    # "score_after" is that of the file written (same Pillow encoder and settings), and
    # "score_after_jpeg" that of the file re-encoded at 90, as `hasmap evaluate` does.
    with Image.open(r.output) as im:
        decoded = np.asarray(im.convert("RGB"))
    assert score(decoded) == pytest.approx(r.record["score_after"], abs=1e-3)
    assert r.record["rated_low"] == (r.record["score_after"] <= 50.0)
    assert score(pillow_jpeg(decoded[None], 90)[0]) == pytest.approx(r.record["score_after_jpeg"], abs=1e-3)
    # PNG output: by default attacked through JPEG-90, with --robust-jpeg Q through JPEG-Q, or not.
    protect_paths([src], tmp_path / "out1", settings=settings(), model=model)
    assert chain(spy[-1]) == (90,) and spy[-1][1]["config"].confidence == 10.0  # the preset's margin
    assert spy[-1][1]["config"].sensitivity_floor == 0.0
    protect_paths([src], tmp_path / "out1f", settings=settings(sensitivity_floor=0.4), model=model)
    assert spy[-1][1]["config"].sensitivity_floor == 0.4
    s = protect_paths([src], tmp_path / "out2", settings=settings(robust_jpeg=75), model=model)
    assert chain(spy[-1]) == (75,) and "score_after_jpeg" in s.results[0].record
    s = protect_paths([src], tmp_path / "out3", settings=settings(robust_jpeg=None), model=model)
    assert spy[-1][1]["config"].profile is None and "score_after_jpeg" not in s.results[0].record
    # JPEG output without the re-encoding is still judged on what the file holds.
    s = protect_paths([src], tmp_path / "out4", settings=settings(format="jpeg", robust_jpeg=None), model=model)
    assert chain(spy[-1]) == (90,) and "score_after_jpeg" not in s.results[0].record
    with Image.open(s.results[0].output) as im:
        assert score(np.asarray(im.convert("RGB"))) == pytest.approx(s.results[0].record["score_after"], abs=1e-3)


def test_metadata_stripped_by_default_kept_on_request(tmp_path, model):
    from PIL import ImageCms

    src = tmp_path / "in"
    src.mkdir()
    a = (random_images(1, W, H, seed=3)[0] * 255).round().astype(np.uint8)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "TestCam"
    exif[0x8825] = {1: "N", 2: (52.0, 30.0, 0.0)}  # a GPS position
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(a).save(src / "p.jpg", quality=95, exif=exif.tobytes(), icc_profile=icc)

    s = protect_paths([src], tmp_path / "strip", settings=settings(), model=model)
    assert any("orientation 6" in n for n in s.results[0].notes)
    with Image.open(tmp_path / "strip" / "p.png") as out:
        assert out.size == (W, H)  # upright: W wide, H high
        assert len(out.getexif()) == 0 and out.info.get("icc_profile") == icc
    protect_paths([src], tmp_path / "keep", settings=settings(keep_metadata=True, strip_icc=True), model=model)
    with Image.open(tmp_path / "keep" / "p.png") as out:
        e = out.getexif()
        assert e[0x0112] == 1 and e[0x010F] == "TestCam" and "icc_profile" not in out.info
        assert e.get_ifd(0x8825) == {1: "N", 2: (52.0, 30.0, 0.0)}  # the README says GPS goes with EXIF


# --------------------------------------------------------------------------------------------- CLI


@pytest.fixture
def toy_loader(monkeypatch, model):
    import hasmap_jax.weights.loading

    monkeypatch.setattr(hasmap_jax.weights.loading, "load_quality_model", lambda name="default": model)


def test_cli_exit_codes(tmp_path, toy_loader, capsys, monkeypatch):
    src = tmp_path / "in"
    save_photo(src / "p.png")
    out = tmp_path / "out"
    args = ["protect", str(src), "-o", str(out), "--steps", str(STEPS), "-q"]
    assert cli_main(args) == 0
    assert "1 protected now" in capsys.readouterr().out
    assert cli_main(args) == 0
    assert "1 already done" in capsys.readouterr().out
    assert cli_main([*args, "--alpha", "3"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert cli_main(["protect", str(tmp_path / "missing"), "-o", str(out)]) == 2
    assert cli_main(["protect", str(src), "-o", str(src)]) == 2
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert cli_main(args) == 1
    assert "broken.png" in capsys.readouterr().err

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "attack_batch", interrupted)
    save_photo(src / "new.png", seed=9)
    assert cli_main(args) == 130
    assert "rerun the same command" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["protect", str(src), "-o", str(out), "--preset", "high", "--alpha", "3"])


def test_method_is_recorded_and_an_older_manifest_resumes_as_the_papers(tmp_path, toy_loader, capsys):
    """--method goes into the manifest; without --method a rerun keeps the folder's recorded
    method, and a manifest from before --method existed (no "method" recorded) counts as the
    paper's: the same command resumes instead of refusing other settings."""
    import json

    src = tmp_path / "in"
    save_photo(src / "p.png")
    out = tmp_path / "out"
    args = ["protect", str(src), "-o", str(out), "--steps", str(STEPS), "-q"]
    assert cli_main([*args, "--method", "cw"]) == 0
    manifest = out / "hasmap-manifest.jsonl"
    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert lines[0]["settings"]["method"] == "cw" and lines[0]["settings"]["alpha"] == 20.0
    # Make it a manifest of the version before --method: no "method" in its settings.
    del lines[0]["settings"]["method"]
    manifest.write_text("".join(json.dumps(line) + "\n" for line in lines))
    capsys.readouterr()
    assert cli_main(args) == 0
    assert "1 already done" in capsys.readouterr().out
    # Asking for the minimum-norm method there is other settings (refused without --force).
    assert cli_main([*args, "--method", "fmn"]) == 2
    assert "method: 'cw' -> 'fmn'" in capsys.readouterr().err
    # A new folder gets the default, the minimum-norm method, with no alpha.
    fresh = tmp_path / "fresh"
    assert cli_main(["protect", str(src), "-o", str(fresh), "--steps", str(STEPS), "-q"]) == 0
    settings = json.loads((fresh / "hasmap-manifest.jsonl").read_text().splitlines()[0])["settings"]
    assert settings["method"] == "fmn" and settings["alpha"] is None


def test_score_command_reads_photos_as_protect_does(tmp_path, toy_loader, model, capsys):
    """`hasmap score` turns a photo upright by its EXIF orientation and applies the size guards."""
    from hasmap_jax import cli

    upright = (random_images(1, H, W, seed=3)[0] * 255).round().astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    Image.fromarray(np.rot90(upright, 1).copy()).save(tmp_path / "phone.jpg", quality=100, exif=exif)
    stored = np.asarray(Image.open(tmp_path / "phone.jpg").convert("RGB"))
    assert stored.shape[:2] == (W, H)
    assert cli.main(["score", str(tmp_path / "phone.jpg")]) == 0
    printed = float(capsys.readouterr().out.split("\t")[1])
    from hasmap_jax.files import read_image
    from hasmap_jax.scoring import score_images

    expect = score_images(model, read_image(tmp_path / "phone.jpg").judged[None])[0]
    np.testing.assert_allclose(printed, expect, atol=1e-3)
    assert read_image(tmp_path / "phone.jpg").size == (H, W)
    assert cli.main(["score", str(tmp_path / "phone.jpg"), "--max-pixels", "100"]) == 1
    assert "--max-pixels" in capsys.readouterr().err


def test_cli_help_lists_behaviours():
    text = build_parser()._subparsers._group_actions[0].choices["protect"].format_help()
    for words in ("--preset", "--robust-jpeg", "--keep-metadata", "--max-pixels", "exit status", "--force"):
        assert words in text


def _examples_and_default_model() -> bool:
    from hasmap_jax.weights.loading import weights_dir

    return EXAMPLES.is_dir() and any(EXAMPLES.glob("*.png")) and (weights_dir() / "default").is_dir()


@pytest.mark.subprocess
@pytest.mark.skipif(not _examples_and_default_model(), reason="needs examples/ and weights/default")
def test_protect_then_evaluate_end_to_end_from_the_command_line(tmp_path):
    """The shipped example photos with the shipped default model, through the `hasmap` command."""
    entry = ["-m", "hasmap_jax.cli"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    before = tree_digest(EXAMPLES)
    out, ev = tmp_path / "protected", tmp_path / "evaluation"
    cmd = [sys.executable, *entry, "protect", str(EXAMPLES), "-o", str(out), "--steps", "3", "-q"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    n = len(list(EXAMPLES.glob("*.png")))
    assert len(list(out.glob("*.png"))) == n and tree_digest(EXAMPLES) == before
    manifest = [json.loads(x) for x in (out / MANIFEST_NAME).read_text().splitlines()]
    assert sum(r.get("status") == "ok" for r in manifest) == n
    cmd = [sys.executable, *entry, "evaluate", str(EXAMPLES), str(out), "-o", str(ev), "-q"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr
    assert "accuracy" in p.stdout and "after JPEG-90" in p.stdout
    rows = (ev / "results.csv").read_text().splitlines()
    assert len(rows) == n + 1
    data = json.loads((ev / "results.json").read_text())
    run = data["runs"][0]
    assert run["summary"]["images"] == n and run["summary"]["mean_lpips"] is not None
    assert (ev / "report.html").is_file() and len(list((ev / "report_files").glob("*.png"))) == 4 * n


@pytest.mark.slow
def test_robust_web_records_every_checkpoint(tmp_path, model):
    """`--robust web`: the attack is judged after each of the profile's real operations, recorded per photo."""
    from hasmap_jax.transforms.profiles import PROFILES

    src = tmp_path / "in"
    save_photo(src / "p.png", h=H * 2, w=W * 2)
    s = protect_paths([src], tmp_path / "out", settings=settings(robust="web", steps=5), model=model)
    (r,) = s.results
    names = list(PROFILES["web"].checkpoint_names)
    assert r.status == "ok" and list(r.record["checkpoints"]) == names
    checks = r.record["checkpoints"]
    assert r.record["protected"] == all(v <= 50.0 for v in checks.values())
    assert r.record["protected_after_checkpoints"] == r.record["protected"]
    # JPEG output: the saved file is the first checkpoint
    s = protect_paths([src], tmp_path / "jpg", settings=settings(robust="web", steps=5, format="jpeg"), model=model)
    (r,) = s.results
    assert list(r.record["checkpoints"])[0] == "jpeg90" and len(r.record["checkpoints"]) == len(names) + 1
    assert r.record["score_after"] == r.record["checkpoints"]["jpeg90"]


def test_manifest_from_before_robust_settings_still_resumes(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "p.png")
    out = tmp_path / "out"
    protect_paths([src], out, settings=settings(), model=model)
    lines = (out / MANIFEST_NAME).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    for rec in recs:
        if rec["type"] == "settings":
            del rec["settings"]["robust"]  # as a manifest written before --robust existed
            del rec["settings"]["sensitivity_floor"]  # ... and before the floor
    (out / MANIFEST_NAME).write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert protect_paths([src], out, settings=settings(), model=model).count("done") == 1
    with pytest.raises(SettingsMismatch, match="robust"):
        protect_paths([src], out, settings=settings(robust="off"), model=model)
    with pytest.raises(SettingsMismatch, match="sensitivity_floor"):
        protect_paths([src], out, settings=settings(sensitivity_floor=0.3), model=model)


def test_each_method_and_profile_has_its_own_presets(capsys):
    """Presets come from the table of the method and `--robust` profile ("web" has its own, "off"
    is jpeg90's), from the library and from the command line; explicit values still override them;
    the minimum-norm method has no alpha."""
    from hasmap_jax.cli import build_parser
    from hasmap_jax.cli.protect import settings_from_args
    from hasmap_jax.protect import DEFAULT_METHOD, PRESET_TABLES, ProtectSettings, presets

    assert DEFAULT_METHOD == "fmn"
    for method in ("fmn", "cw"):
        plain, web = PRESET_TABLES[method, "jpeg90"], PRESET_TABLES[method, "web"]
        assert presets("web", method) is web and presets("jpeg90", method) is plain and presets("off", method) is plain
        assert web.keys() == plain.keys() == {"low", "mid", "high"} and web["mid"] != plain["mid"]
        for name in plain:
            for robust, table in (("web", web), ("jpeg90", plain)):
                s = ProtectSettings.from_preset(name, robust=robust, method=method)
                p = table[name]
                assert (s.method, s.alpha, s.steps, s.confidence, s.sensitivity_floor) == (
                    method,
                    p.alpha,
                    p.steps,
                    p.confidence,
                    p.sensitivity_floor,
                )
                assert (p.alpha is None) == (method == "fmn")
    with pytest.raises(UsageError, match="method"):
        presets("jpeg90", "ddn")

    def parsed(*words):
        return settings_from_args(build_parser().parse_args(["protect", "in", "-o", "out", *words]), "default")

    fmn_web, cw_web = PRESET_TABLES["fmn", "web"], PRESET_TABLES["cw", "web"]
    s = parsed("--robust", "web")
    assert (s.method, s.robust, s.alpha, s.steps) == ("fmn", "web", None, fmn_web["mid"].steps)
    s = parsed("--robust", "web", "--preset", "high")
    assert (s.confidence, s.steps) == (fmn_web["high"].confidence, fmn_web["high"].steps)
    s = parsed("--robust", "web", "--method", "cw", "--preset", "high")
    assert (s.alpha, s.steps) == (cw_web["high"].alpha, cw_web["high"].steps)
    s = parsed("--robust", "web", "--alpha", "7")  # alpha: the paper's method, the web default's steps
    assert (s.method, s.alpha, s.steps) == ("cw", 7.0, cw_web["mid"].steps)
    s = parsed("--robust", "web", "--steps", "11")
    assert (s.alpha, s.steps) == (None, 11)
    assert parsed("--robust", "web", "--sensitivity-floor", "0").sensitivity_floor == 0.0
    assert parsed("--sensitivity-floor", "0.25").sensitivity_floor == 0.25
    with pytest.raises(UsageError, match="sensitivity_floor"):
        parsed("--sensitivity-floor", "1.5")
    with pytest.raises(UsageError, match="alpha 3 is the paper's"):
        parsed("--method", "fmn", "--alpha", "3")
    with pytest.raises(UsageError, match="search steps"):
        parsed("--method", "fmn", "--search-steps", "3")
    assert parsed().alpha is None and parsed("--search-steps", "2").method == "cw"
    # The help lists every table, with the values they hold.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["protect", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for (method, robust), table in PRESET_TABLES.items():
        assert f"--method {method}" + (" --robust web" if robust == "web" else "") in out
        for p in table.values():
            alpha = "" if p.alpha is None else f"alpha {p.alpha:g}, "
            floor = f", map floor {p.sensitivity_floor:g}" if p.sensitivity_floor else ""
            assert f"{alpha}kappa {p.confidence:g}, {p.steps} steps{floor} " in out


# ------------------------------------------------------------------------------- faults of a folder


def test_a_symbolic_link_loop_fails_alone(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "a.png")
    save_photo(src / "sub" / "b.png", seed=1)
    (src / "loop1.png").symlink_to(src / "loop2.png")
    (src / "loop2.png").symlink_to(src / "loop1.png")
    s = protect_paths([src], tmp_path / "out", settings=settings(), model=model)
    by = {r.input.name: r for r in s.results}
    assert by["a.png"].status == by["b.png"].status == "ok"
    for name in ("loop1.png", "loop2.png"):
        assert by[name].status == "failed" and "symbolic link loop" in by[name].message, by[name].message
        assert name in by[name].message and "remove the link" in by[name].message
    assert s.exit_code == 1 and "4 input(s): 2 protected now" in s.text()


REAL_FSYNC = os.fsync


def _full_disk(monkeypatch, code: int, failing: int) -> list:
    """A disk that fills up: `os.fsync` (every write of the manifest and of an output ends with
    one) fails with `code` from its `failing`-th call on, after the bytes went out (as a delayed
    allocation does), so what was written must be taken back. Returns the calls."""
    calls = []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= failing:
            raise OSError(code, os.strerror(code))
        return REAL_FSYNC(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("code, failing", [(errno.ENOSPC, 6), (errno.EDQUOT, 7)])
def test_a_full_disk_stops_at_the_first_failed_write_and_a_rerun_resumes(tmp_path, model, monkeypatch, code, failing):
    """fsync calls: 1 the manifest's settings, then per photo its record and its file; so the 6th
    is the third photo's record and the 7th the third photo's file."""
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(4):
        save_photo(src / f"p{i}.png", seed=i)
    _full_disk(monkeypatch, code, failing)
    with pytest.raises(ProtectStopped) as e:
        protect_paths([src], out, settings=settings(), model=model, run=RunOptions(batch_size=2))
    s = e.value.summary
    assert s.disk_full and s.exit_code == EXIT_DISK_FULL == 3
    assert [(r.input.name, r.status) for r in s.results] == [("p0.png", "ok"), ("p1.png", "ok")]
    text = s.text()
    assert "4 input(s): 2 protected now" in text and "2 not done" in text, text
    assert s.not_done == [src / "p2.png", src / "p3.png"]
    assert f"the disk holding {out} is full" in text and "rerun the same command" in text, text
    # Nothing half-written: no temporary file, no partial manifest line, no lock.
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST_NAME, "p0.png", "p1.png"]
    assert not temporaries(tmp_path) and Manifest(out / MANIFEST_NAME).broken_lines == 0
    first = tree_digest(out)
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)  # space freed
    again = protect_paths([src], out, settings=settings(), model=model, run=RunOptions(batch_size=2))
    assert [r.status for r in again.results] == ["done", "done", "ok", "ok"] and again.exit_code == 0
    assert all(tree_digest(out)[k] == first[k] for k in ("p0.png", "p1.png"))


def test_cli_a_full_disk_exits_3_with_the_summary(tmp_path, toy_loader, capsys, monkeypatch):
    src, out = tmp_path / "in", tmp_path / "out"
    save_photo(src / "p.png")
    save_photo(src / "q.png", seed=1)
    args = ["protect", str(src), "-o", str(out), "--steps", str(STEPS), "-q"]
    _full_disk(monkeypatch, errno.ENOSPC, 1)  # full from the start: the manifest's first line fails
    assert cli_main(args) == 3
    err = capsys.readouterr().err
    assert err.startswith("2 input(s): 0 protected now") and "2 not done" in err and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(f"stopped: the disk holding {out} is full (No space left"), err
    assert f"  not done: {src / 'p.png'}" in err and f"  not done: {src / 'q.png'}" in err
    assert list(out.iterdir()) == []  # no manifest begun, no lock, no temporary file
    monkeypatch.setattr(os, "fsync", REAL_FSYNC)
    assert cli_main(args) == 0 and "2 protected now" in capsys.readouterr().out
    help_text = build_parser()._subparsers._group_actions[0].choices["protect"].format_help()
    assert "3 the disk is full" in help_text and "143 terminated (SIGTERM)" in help_text


def test_an_output_folder_that_cannot_be_written_is_a_usage_error(tmp_path, model, toy_loader, capsys, monkeypatch):
    """A read-only file system refuses the lock, the first file written (injected: root writes
    into a chmod 555 folder anyway, and CI has no read-only mount)."""
    src, out = tmp_path / "in", tmp_path / "out"
    save_photo(src / "p.png")
    out.mkdir()
    real_open = os.open

    def read_only(path, flags, *a, **k):
        if Path(path).parent == out and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(OutputNotWritable, match="Read-only file system"):
        protect_paths([src], out, settings=settings(), model=model)
    args = ["protect", str(src), "-o", str(out), "--steps", str(STEPS), "-q"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"hasmap protect: error: cannot write to the output folder {out}: Read-only file system")
    assert LOCK_NAME in err and "choose another output folder with -o" in err
    assert list(out.iterdir()) == []
    monkeypatch.setattr(os, "open", real_open)
    assert cli_main(args) == 0 and "1 protected now" in capsys.readouterr().out


def test_an_output_folder_without_write_permission_is_a_usage_error(tmp_path, toy_loader, capsys):
    src, out = tmp_path / "in", tmp_path / "out"
    save_photo(src / "p.png")
    out.mkdir()
    out.chmod(0o555)
    try:
        try:
            (out / "probe").write_bytes(b"")
        except PermissionError:
            pass
        else:
            pytest.skip("this user writes into a chmod 555 folder anyway (root with CAP_DAC_OVERRIDE)")
        assert cli_main(["protect", str(src), "-o", str(out), "--steps", str(STEPS), "-q"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"hasmap protect: error: cannot write to the output folder {out}: Permission denied")
        assert err.count("\n") == 1 and list(out.iterdir()) == []
    finally:
        out.chmod(0o755)


def test_earlier_output_folders_inside_the_input_are_left_out(tmp_path, model, spy):
    src = tmp_path / "in"
    save_photo(src / "p.png")
    save_photo(src / "sub" / "q.png", seed=1)
    protect_paths([src], src / "protected", settings=settings(), model=model)
    assert sorted(p.name for p in (src / "protected").rglob("*.png")) == ["p.png", "q.png"]
    spy.clear()
    # Another run, to another folder: the earlier run's outputs are not new photos.
    s = protect_paths([src], tmp_path / "out2", settings=settings(), model=model)
    assert sorted(r.input.relative_to(src).as_posix() for r in s.results) == ["p.png", "sub/q.png"]
    assert s.left_out == [src / "protected"]
    assert "left out 1 folder(s) holding an earlier run's outputs (a hasmap-manifest*.jsonl)" in s.text()
    assert str(src / "protected") in s.text()
    # Into the input folder with a suffix: the earlier run's folder gets nothing written into it.
    before = tree_digest(src / "protected")
    s = protect_paths([src], src, settings=settings(suffix="_p"), model=model)
    assert sorted(r.output.relative_to(src).as_posix() for r in s.results) == ["p_p.png", "sub/q_p.png"]
    assert tree_digest(src / "protected") == before
    # A rerun of that: its own outputs are left out (the folder's manifest names them), not the folder.
    s = protect_paths([src], src, settings=settings(suffix="_p"), model=model)
    assert [r.status for r in s.results] == ["done", "done"] and s.left_out == [src / "protected"]
    # Named directly, an earlier output folder gives only what its manifest does not record.
    with pytest.raises(UsageError, match=r"2 photo\(s\) there are outputs its hasmap-manifest\*.jsonl records"):
        protect_paths([src / "protected"], tmp_path / "again", settings=settings(), model=model)
    save_photo(src / "protected" / "added.png", seed=5)
    s = protect_paths([src / "protected"], tmp_path / "again", settings=settings(), model=model)
    assert [r.input.name for r in s.results] == ["added.png"]


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(tmp_path, model):
    src, out = tmp_path / "in", tmp_path / "out"
    save_photo(src / "p.png")
    save_photo(src / "sub" / "q.png", seed=1)
    leftovers = [out / ".p.png.k2j3x.hasmap-tmp", out / "sub" / ".q.png.abcd.hasmap-tmp"]
    for f in leftovers:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"\x89PNG half of a photo")
    # While another run holds the folder, its temporary files are its own: left alone.
    with FolderLock(out), pytest.raises(FolderLocked):
        protect_paths([src], out, settings=settings(), model=model)
    assert all(f.exists() for f in leftovers)
    s = protect_paths([src], out, settings=settings(), model=model)
    assert s.count("ok") == 2 and s.cleaned == sorted(leftovers)
    assert not temporaries(tmp_path) and f"removed 2 temporary file(s) left in {out}" in s.text()


def test_photos_already_rated_low_are_counted_apart(tmp_path, model):
    src = tmp_path / "in"
    save_photo(src / "p.png")
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(src / "dark.png")  # the toy model rates it about 30
    s = protect_paths([src], tmp_path / "out", settings=settings(), model=model)
    by = {r.input.name: r for r in s.results}
    assert by["dark.png"].status == "ok" and by["dark.png"].record["kept"] == "already_low"
    assert by["dark.png"].already_low and not by["p.png"].already_low
    assert s.totals()["ok"] == 2 and s.totals()["already_low"] == 1
    assert "2 input(s): 1 protected now, 1 already rated low (written unchanged), 0 already done" in s.text()


def test_batches_are_filled_within_the_memory_budget(tmp_path, model, spy, monkeypatch):
    src = tmp_path / "in"
    for i in range(3):
        save_photo(src / f"s{i}.png", seed=i)
    save_photo(src / "big.png", 64, 80, seed=9)
    room = mem.batch_bytes((H, W), 2)  # two small photos; the big one needs more than all there is
    monkeypatch.setattr(mem, "limits", lambda memory=None: (room, room))
    s = protect_paths([src], tmp_path / "out", settings=settings(), model=model, run=RunOptions(batch_size=4))
    by = {r.input.name: r for r in s.results}
    assert [by[f"s{i}.png"].status for i in range(3)] == ["ok"] * 3
    big = by["big.png"]
    assert big.status == "failed" and "80x64" in big.message and "of memory to protect" in big.message
    assert "--memory" in big.message and big.record == {}
    assert sorted(shape for shape, _ in spy) == [(2, H, W, 3), (2, H, W, 3)]  # 2 + 1 (padded), never 3
    assert s.exit_code == 1


def test_memory_budget_default_and_given(monkeypatch):
    gib = 2**30
    monkeypatch.setattr(mem, "available_bytes", lambda: 22 * gib)
    monkeypatch.setattr(mem, "resident_bytes", lambda: 1 * gib)
    budget, ceiling = mem.limits()
    assert budget == int(mem.DEFAULT_FRACTION * 23 * gib) and ceiling == 23 * gib
    assert mem.limits(8 * gib) == (8 * gib, 23 * gib)
    assert mem.limits(64 * gib) == (64 * gib, 64 * gib)  # asked for: taken at its word
    # A 24 GB machine: four 39 MP camera photos go two at a time, inside what the machine has.
    size = (5412, 7216)
    assert mem.photos_per_batch(size, budget) == 2 and mem.batch_bytes(size, 2) <= budget
    assert mem.parse_size("8G") == mem.parse_size("8GiB") == 8 * gib and mem.parse_size("512m") == 512 * 2**20
    for bad in ("8Q", "", "-1G", "0"):
        with pytest.raises(ValueError):
            mem.parse_size(bad)
    assert build_parser().parse_args(["protect", "in", "-o", "out", "--memory", "1.5G"]).memory == int(1.5 * gib)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["protect", "in", "-o", "out", "--memory", "lots"])


SIGNALLED = """
import signal, sys, time
# Ctrl-C reaches the run as it would from a terminal, however the tests were started: a job that a
# non-interactive shell starts in the background (`cmd &`, nohup) inherits SIGINT ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
import hasmap_jax.weights.loading
from hasmap_jax import attack
from test_protect import sized_toy

hasmap_jax.weights.loading.load_quality_model = lambda name="default": sized_toy()
real = attack.attack_batch


def slow(*a, **k):  # each photo takes a while, so the signal comes in the middle of the run
    time.sleep(0.5)
    return real(*a, **k)


from hasmap_jax.protect import runner
runner.attack_batch = slow
from hasmap_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.subprocess
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_ctrl_c_end_the_run_with_its_summary(tmp_path, toy_loader, capsys, sig, code):
    src, out = tmp_path / "in", tmp_path / "out"
    for i in range(6):
        save_photo(src / f"p{i}.png", seed=i)
    args = ["protect", str(src), "-o", str(out), "--steps", "5", "--batch-size", "1", "-q"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "HASMAP_CACHE_DIR": str(tmp_path / "c")}
    job = subprocess.Popen(
        [sys.executable, "-c", SIGNALLED.format(tests=str(ROOT / "tests")), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 300
    while not list(out.glob("*.png")) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    job.send_signal(sig)
    _, err = job.communicate(timeout=300)
    assert job.returncode == code, err
    assert "Traceback" not in err and "6 input(s):" in err and "not done" in err, err
    assert "rerun the same command to finish" in err
    assert not (out / LOCK_NAME).exists() and not temporaries(tmp_path)
    finished = sorted(p.name for p in out.glob("*.png"))
    assert 0 < len(finished) < 6
    records = [json.loads(x) for x in (out / MANIFEST_NAME).read_text().splitlines()]
    assert records[-1]["type"] == "run" and records[-1]["finished"] is False
    # The rerun finishes the folder without redoing a finished photo.
    assert cli_main(args) == 0
    assert f"{len(finished)} already done" in capsys.readouterr().out


def test_the_readme_output_folders_are_git_ignored():
    """The README's first command writes `protected/`, and `hasmap evaluate` writes
    `hasmap-evaluation/` by default: a user running them in a checkout commits neither by accident."""
    ignored = (ROOT / ".gitignore").read_text().split()
    evaluation = build_parser().parse_args(["evaluate", "a", "b"]).output
    assert "hasmap protect examples -o protected" in (ROOT / "README.md").read_text()
    assert "/protected/" in ignored and f"/{evaluation}/" in ignored
