"""Sensitivity-network training: data rules, tfds/grain pipeline, training, resuming, loading, the CLI."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from hasmap_jax import load_sensitivity_model
from hasmap_jax.cli import build_parser
from hasmap_jax.models.variables import WeightError
from hasmap_jax.sensitivity import data as sd
from hasmap_jax.sensitivity import jnd_sensitivity
from hasmap_jax.sensitivity.render import colorize, overlay, to_uint8, write_sensitivity_maps
from hasmap_jax.training.sensitivity import (
    STATE_DIR,
    TrainConfig,
    initial_variables,
    sensitivity_metrics,
    train_sensitivity,
)
from hasmap_jax.weights import checkpoint

SIZE = 64
#: A tiny network and a short, fast run; `TINY_ARGS` is the same on the command line.
TINY = TrainConfig(
    width=0.0625, backbone="random", size=(SIZE, SIZE), epochs=20, batch_size=8, learning_rate=3e-3, val_fraction=0.2
)
TINY_ARGS = [
    "--width=0.0625",
    "--backbone=random",
    f"--size={SIZE}x{SIZE}",
    "--epochs=20",
    "--batch-size=8",
    "--learning-rate=3e-3",
    "--val-fraction=0.2",
]


def run_cli(*argv: str) -> int:
    """Runs a `hasmap` command; unlike `hasmap_jax.cli.main`, lets its exceptions through."""
    args = build_parser().parse_args([str(a) for a in argv])
    return args.func(args)


# --------------------------------------------------------------------------------------------
# Synthetic pairs: the map is computable from the photo


def _box_mean(a: np.ndarray, k: int = 7) -> np.ndarray:
    return sliding_window_view(np.pad(a, k // 2, mode="edge"), (k, k)).mean(axis=(-1, -2))


def target_map(image: np.ndarray) -> np.ndarray:
    """High on flat mid-grey regions, low on texture and towards black or white (the JND idea, smoother)."""
    y = image @ np.array([0.299, 0.587, 0.114])
    mean = _box_mean(y)
    std = np.sqrt(np.maximum(_box_mean(y * y) - mean**2, 0.0))
    return np.clip(0.1 + 0.8 * np.exp(-std / 0.05) * (1.0 - 1.2 * np.abs(mean - 0.5)), 0.0, 1.0)


def synthetic_photo(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A 4x4 grid of flat patches at random luminance, half of them covered in noise texture."""
    c = size // 4
    img = np.zeros((size, size, 3))
    for i in range(4):
        for j in range(4):
            patch = np.full((c, c, 3), rng.uniform(0.05, 0.95)) + rng.uniform(-0.05, 0.05, 3)
            if rng.random() < 0.5:
                patch = patch + rng.uniform(0.05, 0.3) * rng.standard_normal((c, c, 1))
            img[i * c : (i + 1) * c, j * c : (j + 1) * c] = patch
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_pairs(folder, n: int, seed: int = 0) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k in range(n):
        photo = synthetic_photo(rng)
        Image.fromarray(photo).save(folder / f"s{k:03d}.png")
        smap = np.round(target_map(photo / 255.0) * 255).astype(np.uint8)
        Image.fromarray(smap).save(folder / f"s{k:03d}_sensitivity.png")


@pytest.fixture(scope="module")
def pairs_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pairs")
    write_pairs(d, 40)
    return d


@pytest.fixture(scope="module")
def trained(pairs_dir, tmp_path_factory):
    """`hasmap train-sensitivity` run straight through on the synthetic pairs."""
    out = tmp_path_factory.mktemp("runs") / "straight"
    assert run_cli("train-sensitivity", pairs_dir, "-o", out, *TINY_ARGS) == 0
    return out


# --------------------------------------------------------------------------------------------
# Training, resuming, loading


@pytest.mark.slow
def test_training_drives_validation_loss_down(trained):
    card = checkpoint.read_card(trained)
    history = card["metrics"]["history"]
    assert [h["epoch"] for h in history] == list(range(TINY.epochs + 1))
    before, after = history[0]["validation"], history[-1]["validation"]
    assert after["mse"] < 0.35 * before["mse"], (before, after)
    assert before["cc"] is None  # the fresh FCN head predicts 0.5 everywhere
    assert after["cc"] > 0.6 and after["auc"] > 0.75 and np.isfinite(after["kl"]), (before, after)
    assert card["kind"] == "sensitivity" and card["variant"] == "vgg16-fcn-trained"
    assert card["config"] == {
        "head": "fcn",
        "fcn_stages": [1, 2, 3, 4, 5],
        "width": 0.0625,
        "normalization": "imagenet",
    }
    data = card["training"]["data"]
    assert (data["layout"], data["pairs"], data["train"], data["validation"]) == ("flat", 40, 32, 8)
    assert card["training"]["settings"] == TINY.as_json()


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(trained, pairs_dir, tmp_path):
    out = tmp_path / "resumed"

    class Interrupt(Exception):
        pass

    def stop_at_7(epoch, entry):
        if epoch == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        train_sensitivity(pairs_dir, out, TINY, keep=2, on_epoch_end=stop_at_7, progress=False)
    assert not checkpoint.is_checkpoint(out)
    with pytest.raises(WeightError, match="model_card.json"):
        load_sensitivity_model(out)
    assert sorted(p.name for p in (out / STATE_DIR / "checkpoints").iterdir() if p.name.isdigit()) == ["6", "7"]
    # Other settings are refused, naming them.
    with pytest.raises(ValueError, match="config.learning_rate"):
        train_sensitivity(pairs_dir, out, dataclasses.replace(TINY, learning_rate=1e-3), progress=False)

    epochs = []
    result = train_sensitivity(pairs_dir, out, TINY, keep=2, on_epoch_end=lambda e, _: epochs.append(e), progress=False)
    assert epochs == list(range(8, TINY.epochs + 1))
    straight = load_sensitivity_model(trained)
    for a, b in zip(jax.tree.leaves(straight.variables), jax.tree.leaves(result.model.variables), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert result.history[-1]["validation"] == checkpoint.read_card(trained)["metrics"]["validation"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["resumed"]  # no staging folders left behind

    # The written checkpoint reproduces the in-memory model's maps, through the loader and the CLI.
    photos = sorted(pairs_dir.glob("s00[0-3].png"))
    x = np.stack([np.asarray(Image.open(p)) for p in photos])
    loaded = load_sensitivity_model(out)
    np.testing.assert_array_equal(loaded.map(x), result.model.map(x))
    assert loaded.card == result.model.card
    assert run_cli("sensitivity", *photos, "-o", tmp_path / "maps", "--model", out) == 0
    written = np.stack([np.asarray(Image.open(tmp_path / "maps" / f"{p.stem}_sensitivity.png")) for p in photos])
    np.testing.assert_array_equal(written, np.round(np.clip(loaded.map(x), 0, 1) * 255).astype(np.uint8))

    # A finished model is never overwritten.
    with pytest.raises(FileExistsError, match="finished model"):
        train_sensitivity(pairs_dir, out, TINY, progress=False)


def test_output_directory_with_other_files_is_refused(pairs_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        train_sensitivity(pairs_dir, tmp_path, TINY, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("head", ["fcn", "conv3x3"])
def test_training_starts_from_the_lpips_imagenet_backbone(head):
    from hasmap_jax.training.sensitivity import _programs
    from hasmap_jax.weights.conversion.vgg16 import from_lpips

    config = TrainConfig(head=head)  # otherwise the defaults: full VGG16, lpips backbone
    variables = initial_variables(config)
    lpips = from_lpips()
    for name, layer in lpips.items():
        for w, value in layer.items():
            np.testing.assert_array_equal(np.asarray(variables["params"]["backbone"][name][w]), value)
    heads = {"fcn": {f"score_block{k}" for k in range(1, 6)}, "conv3x3": {"head_conv"}}
    assert set(variables["params"]["head"]) == heads[head]
    # One training step traces (shapes only: compiling the full VGG16 is accelerator work).
    tx, step, _ = _programs(config.module(), config.learning_rate)
    state = {"params": variables["params"], "opt_state": tx.init(variables["params"])}
    batch = jax.ShapeDtypeStruct((2, 64, 96, 3), np.uint8), jax.ShapeDtypeStruct((2, 64, 96), np.uint8)
    new_state, loss = jax.eval_shape(step, state, *batch)
    assert loss.shape == () and jax.tree.structure(new_state) == jax.tree.structure(state)
    with pytest.raises(ValueError, match="width"):
        TrainConfig(width=0.5)


# --------------------------------------------------------------------------------------------
# Data: layouts and bad-data rules


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, np.uint8)).save(path)


def _grey(h=40, w=48, value=None, seed=0):
    r = np.random.default_rng(seed)
    return np.full((h, w), value, np.uint8) if value is not None else r.integers(0, 256, (h, w), dtype=np.uint8)


def _rgb(h=40, w=48, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_flat_layout_missing_partners_warn_and_are_skipped(tmp_path):
    _save(tmp_path / "a.jpg", _rgb())
    _save(tmp_path / "a_sensitivity.png", _grey())
    _save(tmp_path / "b.png", _rgb())  # no map
    _save(tmp_path / "c_sensitivity.png", _grey())  # no photo
    (tmp_path / "notes.txt").write_text("ignored")
    with pytest.warns(sd.DataWarning) as record:
        found = sd.find_pairs(tmp_path)
    messages = sorted(str(w.message) for w in record)
    assert len(messages) == 2
    assert str(tmp_path / "b.png") in messages[0] and "no sensitivity map" in messages[0]
    assert str(tmp_path / "c_sensitivity.png") in messages[1] and "without its photo" in messages[1]
    assert found.layout == "flat" and [p.name for p in found.pairs] == ["a"]
    assert found.pairs[0].map == tmp_path / "a_sensitivity.png"


def test_emod_layout(tmp_path):
    for name in ("0001", "0002"):
        _save(tmp_path / "images" / f"{name}.jpg", _rgb())
        _save(tmp_path / "sensitivity" / f"{name}_sensitivity.jpg", _grey())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = sd.find_pairs(tmp_path)
    assert found.layout == "emod" and [p.name for p in found.pairs] == ["0001", "0002"]
    assert found.pairs[0].image == tmp_path / "images" / "0001.jpg"
    (tmp_path / "sensitivity" / "0001_sensitivity.jpg").unlink()
    (tmp_path / "sensitivity" / "0002_sensitivity.jpg").unlink()
    (tmp_path / "sensitivity").rmdir()
    with pytest.raises(FileNotFoundError, match="sensitivity"):
        sd.find_pairs(tmp_path)


def test_ambiguous_names_and_empty_folders_are_errors(tmp_path):
    _save(tmp_path / "a.jpg", _rgb())
    _save(tmp_path / "a.png", _rgb())
    _save(tmp_path / "a_sensitivity.png", _grey())
    with pytest.raises(sd.DataError, match="a.jpg.*a.png|a.png.*a.jpg"):
        sd.find_pairs(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(sd.DataError, match="no .photo, map. pairs"):
        sd.find_pairs(empty)


def test_unreadable_file_is_an_error_naming_it(tmp_path):
    for k in range(3):
        _save(tmp_path / f"p{k}.png", _rgb(seed=k))
        _save(tmp_path / f"p{k}_sensitivity.png", _grey(seed=k))
    (tmp_path / "p1.png").write_bytes(b"not an image")
    truncated = (tmp_path / "p2_sensitivity.png").read_bytes()
    with pytest.raises(sd.DataError, match="p1.png: cannot read"):
        sd.read_photo(tmp_path / "p1.png")
    (tmp_path / "p2_sensitivity.png").write_bytes(truncated[: len(truncated) // 2])
    with pytest.raises(sd.DataError, match="p2_sensitivity.png: cannot read"):
        sd.read_map(tmp_path / "p2_sensitivity.png")
    # Through the tfds builder, too: the error reaches the caller unchanged.
    with pytest.raises(sd.DataError, match=r"p1\.png|p2_sensitivity\.png"):
        sd.prepare(tmp_path, tmp_path / "cache", size=(32, 32), val_fraction=0.34)


def test_map_of_another_size_is_stretched_with_a_warning(tmp_path):
    photo, smap = _rgb(40, 48), np.tile(np.linspace(0, 255, 24).astype(np.uint8), (20, 1))
    _save(tmp_path / "a.png", photo)
    _save(tmp_path / "a_sensitivity.png", smap)
    pair = sd.find_pairs(tmp_path).pairs[0]
    with pytest.warns(sd.DataWarning, match=r"a_sensitivity\.png: map is 24x20 but its photo a\.png is 48x40"):
        image, resized = sd.load_pair(pair, (32, 64))
    assert image.shape == (32, 64, 3) and resized.shape == (32, 64)
    assert resized[:, 0].mean() < 20 and resized[:, -1].mean() > 235  # the ramp spans the width
    assert np.all(np.diff(resized[16].astype(int)) >= 0)


def test_multichannel_maps(tmp_path):
    grey = _grey(value=None)
    # A grey map saved as RGB JPEG: accepted as its luminance, silently.
    _save(tmp_path / "grey_rgb.png", np.repeat(grey[..., None], 3, -1))
    Image.fromarray(np.repeat(grey[..., None], 3, -1)).save(tmp_path / "grey_rgb.jpg", quality=90)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(sd.read_map(tmp_path / "grey_rgb.png"), grey / 255.0, atol=1e-6)
        assert np.abs(sd.read_map(tmp_path / "grey_rgb.jpg") * 255 - grey).mean() < 8
    # A colour (false-colour heat) map: an error naming the file.
    _save(tmp_path / "heat.png", (colorize(grey / 255.0) * 255).round())
    with pytest.raises(sd.DataError, match=r"heat\.png: a colour sensitivity map"):
        sd.read_map(tmp_path / "heat.png")
    # Alpha is dropped; a transparent one is warned about.
    Image.fromarray(np.stack([grey, np.full_like(grey, 128)], -1), "LA").save(tmp_path / "la.png")
    with pytest.warns(sd.DataWarning, match=r"la\.png: the map's alpha channel is ignored"):
        np.testing.assert_allclose(sd.read_map(tmp_path / "la.png"), grey / 255.0, atol=1e-6)
    # 16-bit maps keep their scale.
    deep = Image.fromarray(grey.astype(np.uint16) * 257)
    assert deep.mode.startswith("I;16")
    deep.save(tmp_path / "deep.png")
    np.testing.assert_allclose(sd.read_map(tmp_path / "deep.png"), grey / 255.0, atol=1e-6)


def test_split_is_seeded_and_held_out(tmp_path):
    pairs = [sd.Pair(f"n{k:02d}", tmp_path / "x", tmp_path / "y") for k in range(20)]
    train, val = sd.split_pairs(pairs, val_fraction=0.2, seed=3)
    again = sd.split_pairs(list(reversed(pairs)), val_fraction=0.2, seed=3)
    assert len(val) == 4 and len(train) == 16 and not {p.name for p in train} & {p.name for p in val}
    assert (train, val) == again
    assert sd.split_pairs(pairs, val_fraction=0.2, seed=4)[1] != val
    with pytest.raises(sd.DataError, match="at least 2"):
        sd.split_pairs(pairs[:1], val_fraction=0.5, seed=0)


def test_pipeline_augments_photo_and_map_alike(tmp_path):
    # Photo channels all equal to the map: any misalignment between them would show.
    for k in range(6):
        m = _grey(48, 64, seed=k)
        _save(tmp_path / "d" / f"p{k}.png", np.repeat(m[..., None], 3, -1))
        _save(tmp_path / "d" / f"p{k}_sensitivity.png", m)
    data = sd.prepare(tmp_path / "d", tmp_path / "cache", size=(48, 64), val_fraction=0.34, seed=1)
    assert (len(data.train), len(data.validation)) == (4, 2)
    example = data.train[0]
    assert example["image"].dtype == np.uint8 and example["image"].shape == (48, 64, 3)
    assert example["map"].shape == (48, 64, 1)
    epoch1 = sd.train_dataset(data.train, epoch=1, batch_size=2, seed=0, max_scale=1.5)
    batches = [epoch1[i] for i in range(len(epoch1))]
    assert len(batches) == 2 and batches[0]["image"].shape == (2, 48, 64, 3) and batches[0]["map"].shape == (2, 48, 64)
    for b in batches:
        np.testing.assert_array_equal(b["image"][..., 0], b["map"])
    # Rebuilding an epoch gives the same batches; another epoch differs.
    rebuilt = sd.train_dataset(data.train, epoch=1, batch_size=2, seed=0, max_scale=1.5)
    for a, b in zip(batches, [rebuilt[i] for i in range(len(rebuilt))], strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
    epoch2 = sd.train_dataset(data.train, epoch=2, batch_size=2, seed=0, max_scale=1.5)
    assert not np.array_equal(epoch2[0]["image"], batches[0]["image"])
    # Augmentation did something: not every sample is a stored photo as it is.
    stored = {data.train[i]["image"].tobytes() for i in range(len(data.train))}
    assert any(img.tobytes() not in stored for b in batches for img in b["image"])


def test_metrics():
    rng = np.random.default_rng(0)
    t = rng.uniform(size=(3, 16, 16))
    perfect = sensitivity_metrics(t, t)
    assert perfect["mse"] == 0 and perfect["cc"] == pytest.approx(1) and perfect["kl"] == pytest.approx(0, abs=1e-9)
    assert perfect["auc"] == pytest.approx(1) and perfect["auc_images"] == 3
    inverted = sensitivity_metrics(1 - t, t)
    assert inverted["cc"] == pytest.approx(-1) and inverted["auc"] == pytest.approx(0)
    binary = (t > 0.7).astype(float)
    assert sensitivity_metrics(t, binary)["auc"] == pytest.approx(1)
    const = sensitivity_metrics(t, np.full_like(t, 0.5))
    assert const["auc"] is None and const["cc"] is None and const["auc_images"] == 0


# --------------------------------------------------------------------------------------------
# `hasmap sensitivity`


def test_sensitivity_command_writes_maps_and_never_overwrites(tmp_path, capsys):
    photos = []
    for k in range(2):
        p = tmp_path / "in" / f"photo{k}.png"
        _save(p, synthetic_photo(np.random.default_rng(k)))
        photos.append(p)
    out = tmp_path / "out"
    assert run_cli("sensitivity", *photos, "-o", out) == 0
    for p in photos:
        smap = np.asarray(Image.open(out / f"{p.stem}_sensitivity.png"))
        over = Image.open(out / f"{p.stem}_overlay.png")
        x = np.asarray(Image.open(p))
        assert smap.dtype == np.uint8 and smap.shape == x.shape[:2]
        expected = np.asarray(jnd_sensitivity(x[None] / 255.0))[0]
        np.testing.assert_array_equal(smap, np.round(expected * 255).astype(np.uint8))
        assert over.mode == "RGB" and over.size == (x.shape[1], x.shape[0])
        np.testing.assert_array_equal(np.asarray(over), overlay(x, expected))
    assert not [f for f in out.iterdir() if f.name.startswith(".")]  # no temporary files left
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    # A second run stops before writing, naming the existing files; nothing changes.
    with pytest.raises(FileExistsError, match="photo0_sensitivity.png"):
        run_cli("sensitivity", *photos, "-o", out)
    with pytest.raises(FileExistsError):
        write_sensitivity_maps([photos[1]], out)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before
    # Two photos with one stem would collide: refused up front.
    twin = tmp_path / "other" / "photo0.jpg"
    _save(twin, _rgb(64, 64))
    with pytest.raises(FileExistsError, match="both write"):
        run_cli("sensitivity", photos[0], twin, "-o", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    # An unreadable photo is reported; the others are written; the exit status says so.
    bad = tmp_path / "in" / "broken.png"
    bad.write_bytes(b"nope")
    assert run_cli("sensitivity", bad, photos[0], "-o", tmp_path / "out3") == 1
    assert "broken.png: cannot read" in capsys.readouterr().err
    assert sorted(f.name for f in (tmp_path / "out3").iterdir()) == ["photo0_overlay.png", "photo0_sensitivity.png"]


def test_colour_map_is_ordered_by_brightness():
    """The one colour map (overlays, the evaluation report): brighter with every step up, so its
    order survives greyscale; dark blue at 0, bright at 1; continuous; clipped; any shape."""
    v = np.linspace(0.0, 1.0, 1001)
    c = colorize(v)
    assert c.shape == (1001, 3) and c.dtype == np.float32 and c.min() >= 0 and c.max() <= 1
    luma = c @ np.array([0.2126, 0.7152, 0.0722], np.float32)
    assert np.all(np.diff(luma) > 0)
    assert luma[0] < 0.15 and luma[-1] > 0.8
    assert c[0, 2] > max(c[0, 0], c[0, 1])  # low end: blue
    assert c[-1, 0] > c[-1, 2]  # high end: warm (red over blue)
    assert np.abs(np.diff(c, axis=0)).max() < 0.01  # no jumps between neighbouring values
    np.testing.assert_array_equal(colorize(np.array([-1.0, np.nan, 2.0])), c[[0, 0, -1]])
    assert colorize(np.zeros((2, 5))).shape == (2, 5, 3)
    u = to_uint8(colorize(np.zeros((2, 5))))
    assert u.shape == (2, 5, 3) and u.dtype == np.uint8
