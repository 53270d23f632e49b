"""Reading awkward photo files and writing outputs atomically (hasmap_jax.files)."""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from hasmap_jax import files
from hasmap_jax.files import ImageReadError, read_image


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb16(a: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow cannot write one)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )


def png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with no pixel data (a decompression-bomb stand-in)."""
    ihdr = _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + ihdr + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _png_chunk(b"IEND", b"")


def photo(h=40, w=48, seed=0) -> np.ndarray:
    r = np.random.RandomState(seed)
    return (r.rand(h, w, 3) * 255).astype(np.uint8)


def test_rgb_roundtrip_is_exact(tmp_path):
    a = photo()
    Image.fromarray(a).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(img.rgb, a)
    assert img.alpha is None and img.notes == () and img.size == (40, 48)


def test_greyscale_becomes_rgb_with_note(tmp_path):
    g = photo()[..., 0]
    Image.fromarray(g, "L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.rgb.shape == (40, 48, 3)
    np.testing.assert_array_equal(img.rgb, np.repeat(g[..., None], 3, -1))
    assert any("greyscale" in n for n in img.notes)


def test_palette_with_and_without_transparency(tmp_path):
    p = Image.fromarray(photo()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p.save(tmp_path / "p.png")
    img = read_image(tmp_path / "p.png")
    np.testing.assert_array_equal(img.rgb, np.asarray(p.convert("RGB")))
    assert img.alpha is None and any("palette" in n for n in img.notes)
    p.info["transparency"] = 0
    p.save(tmp_path / "pt.png", transparency=0)
    img = read_image(tmp_path / "pt.png")
    assert img.alpha is not None and (img.alpha == 0).any() and (img.alpha == 255).any()


def test_rgba_alpha_kept_aside_and_reattached(tmp_path):
    a = photo()
    alpha = np.tile(np.linspace(0, 255, 48).astype(np.uint8), (40, 1))
    Image.fromarray(np.dstack([a, alpha]), "RGBA").save(tmp_path / "t.png")
    img = read_image(tmp_path / "t.png")
    np.testing.assert_array_equal(img.rgb, a)
    np.testing.assert_array_equal(img.alpha, alpha)
    assert any("alpha" in n for n in img.notes)
    files.write_image(tmp_path / "out.png", img.rgb, alpha=img.alpha)
    with Image.open(tmp_path / "out.png") as back:
        assert back.mode == "RGBA"
        np.testing.assert_array_equal(np.asarray(back), np.dstack([a, alpha]))
    files.write_image(tmp_path / "out.jpg", img.rgb, alpha=img.alpha, quality=100)
    with Image.open(tmp_path / "out.jpg") as back:
        assert back.mode == "RGB"
        # Fully transparent columns become white.
        assert np.asarray(back)[:, 0].min() >= 250


def test_16bit_greyscale_scaled_to_8_bits(tmp_path):
    g = (np.arange(40 * 48).reshape(40, 48) * 34).astype(np.uint16)
    Image.fromarray(g).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img = read_image(tmp_path / "g16.png")
    np.testing.assert_array_equal(img.rgb[..., 1], np.round(g / 257.0).astype(np.uint8))
    assert any("16-bit" in n for n in img.notes)


def test_48bit_rgb_png_noted(tmp_path):
    a = (np.random.RandomState(1).rand(40, 48, 3) * 65535).astype(np.uint16)
    (tmp_path / "rgb16.png").write_bytes(png_rgb16(a))
    img = read_image(tmp_path / "rgb16.png")
    np.testing.assert_array_equal(img.rgb, (a >> 8).astype(np.uint8))
    assert any("16 bits" in n for n in img.notes)


def test_cmyk_converted(tmp_path):
    a = photo()
    Image.fromarray(a).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    img = read_image(tmp_path / "c.jpg")
    assert img.rgb.shape == (40, 48, 3) and img.mode == "CMYK"
    assert np.abs(img.rgb.astype(int) - a).mean() < 20
    assert any("CMYK" in n for n in img.notes)


def test_animated_first_frame_with_warning(tmp_path):
    frames = [Image.fromarray(np.full((40, 48, 3), v, np.uint8)) for v in (10, 200, 90)]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:], duration=50)
    img = read_image(tmp_path / "a.gif")
    assert abs(int(img.rgb.mean()) - 10) <= 2
    assert any(n.startswith("warning") and "3 frames" in n for n in img.notes)


def test_tiny_is_skipped(tmp_path):
    Image.fromarray(photo(20, 200)).save(tmp_path / "tiny.png")
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "tiny.png")
    assert e.value.kind == "too-small" and e.value.skip and "32" in str(e.value)
    assert read_image(tmp_path / "tiny.png", min_side=16).size == (20, 200)


def test_too_many_pixels_refused_before_decoding(tmp_path):
    # Headers only, no real pixel data: a decoding attempt would report "corrupt", not "too-large".
    (tmp_path / "48mp.png").write_bytes(png_header_only(8000, 6000))
    for read in (files.probe_image, read_image):
        with pytest.raises(ImageReadError) as e:
            read(tmp_path / "48mp.png")
        assert e.value.kind == "too-large" and "48.0 MP" in str(e.value) and "--max-pixels" in str(e.value)
    # Above Pillow's own guard (89.5 MP warns, 179 MP refuses) the refusal is still ours: it quotes
    # --max-pixels and the value that would let the photo through, never Pillow's limit.
    for w, h in ((10000, 10000), (30000, 30000)):
        (tmp_path / "big.png").write_bytes(png_header_only(w, h))
        for read in (files.probe_image, read_image):
            with pytest.raises(ImageReadError) as e:
                read(tmp_path / "big.png")
            text = str(e.value)
            assert e.value.kind == "too-large" and f"{w * h / 1e6:.1f} MP" in text, text
            assert f"--max-pixels {w * h}" in text and "40.0 MP" in text and "89478485" not in text, text
    Image.fromarray(photo()).save(tmp_path / "a.png")
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "a.png", max_pixels=1000)
    assert e.value.kind == "too-large"


def test_pillow_bomb_warning_is_an_error(tmp_path):
    # Above Pillow's warning limit (89 MP) but under its hard limit: a warning Pillow would let through.
    (tmp_path / "bomb.png").write_bytes(png_header_only(10000, 10000))
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "bomb.png")
    assert e.value.kind == "too-large"
    # A larger --max-pixels raises Pillow's limit while opening, and only then.
    assert files.probe_image(tmp_path / "bomb.png", max_pixels=2 * 10**8) == (10000, 10000)
    assert Image.MAX_IMAGE_PIXELS == 89478485


def test_truncated_and_non_images(tmp_path):
    buf = io.BytesIO()
    Image.fromarray(photo(200, 200)).save(buf, format="JPEG", quality=95)
    (tmp_path / "cut.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError) as e:
        read_image(tmp_path / "cut.jpg")
    assert e.value.kind == "corrupt" and "truncated" in str(e.value)
    (tmp_path / "notes.jpg").write_text("hello, not a photo")
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("notes.jpg", "empty.png"):
        with pytest.raises(ImageReadError) as e:
            read_image(tmp_path / name)
        assert e.value.kind == "not-an-image" and name in str(e.value)


def test_exif_orientation_applied_and_reset(tmp_path):
    a = photo(40, 48)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    exif[0x010F] = "TestCam"
    Image.fromarray(a).save(tmp_path / "o.jpg", quality=100, exif=exif.tobytes())
    img = read_image(tmp_path / "o.jpg")
    assert img.size == (48, 40)
    assert files.probe_image(tmp_path / "o.jpg") == (48, 40)
    with Image.open(tmp_path / "o.jpg") as raw:
        expected = np.asarray(raw.transpose(Image.Transpose.ROTATE_270))
    np.testing.assert_array_equal(img.rgb, expected)
    back = Image.Exif()
    back.load(img.exif)
    assert back[0x0112] == 1 and back[0x010F] == "TestCam"


def test_icc_profile_carried(tmp_path):
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(photo()).save(tmp_path / "i.png", icc_profile=icc)
    assert read_image(tmp_path / "i.png").icc_profile == icc


def test_atomic_write_leaves_nothing_on_error(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"previous")

    def broken_save(self, fp, *a, **k):
        fp.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        files.write_image(target, photo())
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["out.png"]


def test_a_symbolic_link_loop_is_listed_and_fails_alone_when_read(tmp_path):
    (tmp_path / "loop1.png").symlink_to(tmp_path / "loop2.png")
    (tmp_path / "loop2.png").symlink_to(tmp_path / "loop1.png")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "up").symlink_to(tmp_path)  # a folder link back up is not followed
    Image.fromarray(photo()).save(tmp_path / "a.png")
    found = files.find_images(tmp_path, exclude=(tmp_path / "elsewhere",))
    assert [p.name for p in found] == ["a.png", "loop1.png", "loop2.png"]
    assert files.real_path(tmp_path / "loop1.png").name in ("loop1.png", "loop2.png")  # no RuntimeError
    with pytest.raises(ImageReadError, match="cannot read") as e:
        read_image(tmp_path / "loop1.png")
    assert "loop1.png" in str(e.value) and e.value.kind == "not-an-image"


def test_remove_temporaries_removes_only_what_atomic_output_leaves(tmp_path):
    leftovers = [tmp_path / ".p.png.k2j3.hasmap-tmp", tmp_path / "sub" / ".q.jpg.x1.hasmap-tmp"]
    kept = [tmp_path / "p.png", tmp_path / ".keep", tmp_path / "p.hasmap-tmp.png", tmp_path / "other" / ".a.hasmap-tmp"]
    for f in leftovers + kept:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"x")
    (tmp_path / ".dir.hasmap-tmp").mkdir()  # a staging folder (`atomic_directory`) is not a file
    assert files.remove_temporaries([tmp_path, tmp_path / "sub", tmp_path / "gone"]) == sorted(leftovers)
    assert not any(f.exists() for f in leftovers) and all(f.exists() for f in kept)
    assert (tmp_path / ".dir.hasmap-tmp").is_dir()
    # What `atomic_output` stages (here: as if its process died while writing) is what this removes.
    with pytest.raises(KeyboardInterrupt), files.atomic_output(tmp_path / "r.png") as f:
        f.write(b"partial")
        (staged,) = files.remove_temporaries([tmp_path])
        raise KeyboardInterrupt
    assert staged.name.startswith(".r.png.") and files.is_temporary(staged)
    assert not (tmp_path / "r.png").exists()


def test_find_images_skips_hidden_others_and_excluded(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "out").mkdir()
    for name in ("a.JPG", "sub/b.png", ".hidden.png", "._a.jpg", "notes.txt", "out/c.png"):
        (tmp_path / name).write_bytes(b"x")
    found = files.find_images(tmp_path, exclude=(tmp_path / "out",))
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "sub/b.png"]
    asked = []
    found = files.find_images(tmp_path, skip=lambda d: asked.append(d.name) or d.name == "sub")
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "out/c.png"]
    assert sorted(asked) == ["out", "sub"]  # folders below the root only


# ------------------------------------------------------------------------------ writers and readers


def test_atomic_output_replace_false_never_overwrites(tmp_path):
    target = tmp_path / "run.json"
    with files.atomic_output(target, replace=False) as f:  # a new file is written
        f.write(b"first")
    assert target.read_bytes() == b"first"
    with pytest.raises(FileExistsError, match="run.json"):
        with files.atomic_output(target, replace=False) as f:
            f.write(b"second")
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["run.json"]
    # A file that appears while the new one is being written wins, and nothing is left behind.
    late = tmp_path / "late.txt"
    with pytest.raises(FileExistsError, match="late.txt"):
        with files.atomic_output(late, replace=False) as f:
            f.write(b"mine")
            late.write_bytes(b"theirs")
    assert late.read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == ["late.txt", "run.json"]
    # replace=True (the default) does replace.
    with files.atomic_output(target) as f:
        f.write(b"third")
    assert target.read_bytes() == b"third"


def test_atomic_output_cleans_up_on_exception(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with pytest.raises(RuntimeError):
        with files.atomic_output(target, "w") as f:
            f.write("partial")
            assert not target.exists()  # only the staging file exists while writing
            raise RuntimeError("interrupted")
    assert not target.exists()
    assert os.listdir(tmp_path / "sub") == []
    with files.atomic_output(target, "w") as f:  # text mode is UTF-8
        f.write("café\n")
    assert target.read_bytes() == "café\n".encode()


def test_atomic_directory_refuses_an_existing_folder(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    entered = []
    with pytest.raises(FileExistsError, match="nothing was written"):
        with files.atomic_directory(target) as staging:
            entered.append(staging)
    assert entered == []  # refused before anything is written
    assert os.listdir(tmp_path) == ["ckpt"] and os.listdir(target) == ["old.txt"]


def test_atomic_directory_creates_and_removes_staging_on_exception(tmp_path):
    target = tmp_path / "ckpt"
    with files.atomic_directory(target) as staging:
        assert staging != target and staging.parent == tmp_path and not target.exists()
        assert staging.name.startswith(".") and files.is_temporary(staging)
        (staging / "a.txt").write_text("a")
    assert os.listdir(tmp_path) == ["ckpt"] and (target / "a.txt").read_text() == "a"
    for replace in (False, True):
        new = tmp_path / f"new-{replace}"
        if replace:
            new.mkdir()
            (new / "keep.txt").write_text("keep")
        with pytest.raises(KeyboardInterrupt):
            with files.atomic_directory(new, replace=replace) as staging:
                (staging / "half.txt").write_text("half")
                raise KeyboardInterrupt
        if replace:  # the existing folder is untouched
            assert os.listdir(new) == ["keep.txt"]
        else:
            assert not new.exists()
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "new-True"]


def test_atomic_directory_replace_swaps_content(tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (target / "sub").mkdir()
    with files.atomic_directory(target, replace=True) as staging:
        (staging / "new.txt").write_text("new")
        assert (target / "old.txt").read_text() == "old"  # readers see the old folder meanwhile
    assert os.listdir(target) == ["new.txt"] and (target / "new.txt").read_text() == "new"
    assert os.listdir(tmp_path) == ["ckpt"]  # the old folder is gone, no staging left


def test_sha256_file_is_the_sha256_of_the_bytes(tmp_path):
    import hashlib

    data = np.random.RandomState(0).bytes(3 * (1 << 20) + 17)  # several read chunks
    (tmp_path / "big.bin").write_bytes(data)
    (tmp_path / "empty.bin").write_bytes(b"")
    assert files.sha256_file(tmp_path / "big.bin") == hashlib.sha256(data).hexdigest()
    assert files.sha256_file(tmp_path / "empty.bin") == hashlib.sha256(b"").hexdigest()
    assert files.sha256_file(tmp_path / "big.bin") != files.sha256_file(tmp_path / "empty.bin")


def test_open_image_keeps_the_mode_upright_with_the_same_refusals(tmp_path):
    deep = (np.arange(40 * 48, dtype=np.uint16).reshape(40, 48) * 31).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    with files.open_image(tmp_path / "deep.png") as im:
        assert im.mode.startswith("I")
        np.testing.assert_array_equal(np.asarray(im), deep)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(photo(40, 48)[..., 0], "L").save(tmp_path / "o.jpg", quality=100, exif=exif.tobytes())
    with files.open_image(tmp_path / "o.jpg") as im:
        assert im.mode == "L" and im.size == (40, 48)  # (width, height): turned upright
    buf = io.BytesIO()
    Image.fromarray(photo(200, 200)).save(buf, format="PNG")
    (tmp_path / "cut.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageReadError) as e:
        with files.open_image(tmp_path / "cut.png"):
            pass
    assert e.value.kind == "corrupt" and "cut.png" in str(e.value)
    with pytest.raises(ImageReadError) as e:
        with files.open_image(tmp_path / "deep.png", max_pixels=100):
            pass
    assert e.value.kind == "too-large"


def test_checkpoint_save_staged_replaced_and_into_existing(tmp_path):
    from hasmap_jax.weights import checkpoint

    def variables(v):
        return {"params": {"w": np.full((2, 3), v, np.float32), "b": np.arange(3, dtype=np.float32)}}

    card = {"kind": "test", "config": {}}
    out = checkpoint.save(tmp_path / "m", variables(1.0), card)
    assert out == (tmp_path / "m").absolute() and checkpoint.is_checkpoint(out)
    with pytest.raises(FileExistsError, match="nothing was written"):
        checkpoint.save(out, variables(2.0), {**card, "note": "refused"})
    assert "note" not in checkpoint.read_card(out)
    checkpoint.save(out, variables(3.0), {**card, "note": "swapped"}, replace=True)
    assert checkpoint.read_card(out)["note"] == "swapped"
    restored = checkpoint.restore(out, variables(0.0))
    np.testing.assert_array_equal(restored["params"]["w"], variables(3.0)["params"]["w"])
    assert os.listdir(tmp_path) == ["m"]

    # Into a training run's folder: its other contents stay, a stale variables/ is replaced.
    run = tmp_path / "run"
    (run / "train_state").mkdir(parents=True)
    (run / "train_state" / "run.json").write_text("{}")
    (run / checkpoint.VARIABLES_DIR).mkdir()
    (run / checkpoint.VARIABLES_DIR / "stale").write_text("left by an interrupted save")
    checkpoint.save(run, variables(4.0), card, into_existing=True)
    assert sorted(os.listdir(run)) == sorted(["train_state", checkpoint.VARIABLES_DIR, checkpoint.CARD_NAME])
    assert not (run / checkpoint.VARIABLES_DIR / "stale").exists()
    assert (run / "train_state" / "run.json").read_text() == "{}"
    assert checkpoint.read_card(run) == {"card_version": checkpoint.CARD_VERSION, **card}
    np.testing.assert_array_equal(checkpoint.restore(run, variables(0.0))["params"]["w"], variables(4.0)["params"]["w"])
    with pytest.raises(FileExistsError, match="already holds a model"):
        checkpoint.save(run, variables(5.0), card, into_existing=True)
    with pytest.raises(NotADirectoryError):
        checkpoint.save(tmp_path / "missing", variables(5.0), card, into_existing=True)
    assert sorted(os.listdir(tmp_path)) == ["m", "run"]
