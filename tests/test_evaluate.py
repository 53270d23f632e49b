"""Evaluating protected folders: file matching, the MediaEval 2020 protocol, metrics, CSV/JSON, HTML report."""

from __future__ import annotations

import csv
import html
import json
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from test_protect import save_photo, sized_toy

from hasmap_jax import evaluation as E
from hasmap_jax.cli import main as cli_main
from hasmap_jax.evaluation import report
from hasmap_jax.evaluation.protocol import attack_columns
from hasmap_jax.transforms.jpeg import pillow_jpeg
from hasmap_jax.transforms.views import fit_view_np


@pytest.fixture(scope="module")
def model():
    return sized_toy()


def touch(root: Path, *names: str) -> None:
    for n in names:
        save_photo(root / n, seed=len(n))


def test_match_by_relative_path_and_suffix(tmp_path):
    o, p = tmp_path / "orig", tmp_path / "prot"
    touch(o, "a.png", "sub/b.jpg", "c.png", "d.png")
    touch(p, "a_prot.png", "sub/b_prot.png", "c_prot.jpg", "c_prot.png", "extra_prot.png")
    m = E.match_files(o, p)
    assert m.suffix == "_prot"  # inferred
    assert [(k, a.name, b.name) for k, a, b in m.pairs] == [
        ("a", "a.png", "a_prot.png"),
        ("sub/b", "b.jpg", "b_prot.png"),
    ]
    assert list(m.ambiguous) == ["c"] and [f.name for f in m.unmatched_originals] == ["d.png"]
    assert [f.name for f in m.unmatched_protected] == ["extra_prot.png"]
    # An explicit suffix wins; with "" nothing pairs here.
    assert E.match_files(o, p, suffix="").pairs == []


def test_match_uses_the_manifest_suffix_and_falls_back_to_stems(tmp_path):
    o, p = tmp_path / "orig", tmp_path / "prot"
    touch(o, "nested/deeper/x.png", "y_v2.png")
    touch(p, "x_v2.png", "y_v2_v2.png")
    (p / "hasmap-manifest.jsonl").write_text(
        json.dumps({"type": "settings", "version": 1, "settings": {"suffix": "_v2"}}) + "\n"
    )
    m = E.match_files(o, p)
    assert m.suffix == "_v2"
    assert sorted((k, b.name) for k, _, b in m.pairs) == [("nested/deeper/x", "x_v2.png"), ("y_v2", "y_v2_v2.png")]


def test_outputs_next_to_their_inputs(tmp_path, model):
    from hasmap_jax.protect import ProtectSettings, protect_paths

    d = tmp_path / "photos"
    touch(d, "a.png", "b.png")
    settings = ProtectSettings(steps=5, model="toy", suffix="_p")
    assert protect_paths([d], d, settings=settings, model=model).exit_code == 0
    m = E.match_files(d, d)
    assert [(k, b.name) for k, _, b in m.pairs] == [("a", "a_p.png"), ("b", "b_p.png")]
    assert not m.unmatched_originals and not m.unmatched_protected


def test_infer_suffix():
    assert E.infer_suffix(["a", "d/b"], ["a", "d/b"]) == ""
    assert E.infer_suffix(["a", "d/b", "c"], ["a-adv", "d/b-adv", "zzz"]) == "-adv"


def _folders(tmp_path):
    """Three originals and protected copies: one unchanged, one darkened (rated low), one noisy."""
    o, p = tmp_path / "orig", tmp_path / "prot"
    xs = {name: save_photo(o / f"{name}.png", seed=i) for i, name in enumerate(["same", "dark", "noisy"])}
    p.mkdir()
    Image.fromarray(xs["same"]).save(p / "same.png")
    Image.fromarray((xs["dark"] * 0.25).astype(np.uint8)).save(p / "dark.png")
    noise = np.random.RandomState(0).randint(-6, 7, xs["noisy"].shape)
    Image.fromarray(np.clip(xs["noisy"].astype(int) + noise, 0, 255).astype(np.uint8)).save(p / "noisy.png")
    return o, p, xs


def test_protocol_scores_and_metrics(tmp_path, model):
    from hasmap_jax.sensitivity import jnd_sensitivity

    o, p, xs = _folders(tmp_path)
    ev = E.evaluate(o, [p], model=model, model_name="toy", lpips=True)
    run = ev.runs[0]
    rows = {r["key"]: r for r in run.rows}
    for key, x in xs.items():
        r = rows[key]
        with Image.open(p / f"{key}.png") as im:
            y = np.asarray(im.convert("RGB"))
        # Protocol: Pillow JPEG-90, then the model's score; "high" <=> score > 50.
        jpeg = pillow_jpeg(y[None], 90)
        expected = float(model.apply(jnp.asarray(jpeg, jnp.float32) / 255.0)[0])
        assert r["score_protected_jpeg"] == pytest.approx(expected, abs=1e-3)
        assert r["high_after_jpeg"] == (expected > 50)
        d = y.astype(np.float64) / 255 - x.astype(np.float64) / 255
        assert r["l2"] == pytest.approx(np.sqrt((d**2).sum()), rel=1e-4)
        assert r["linf"] == pytest.approx(np.abs(d).max(), abs=1e-6)
        s = np.asarray(jnd_sensitivity(jnp.asarray(x[None], jnp.float32) / 255.0))[0]
        assert r["weighted_l2"] == pytest.approx(np.sqrt(((s[..., None] * d) ** 2).sum()), rel=1e-3)
        if key != "same":
            assert r["psnr"] == pytest.approx(-10 * np.log10((d**2).mean()), rel=1e-4)
    assert rows["same"]["psnr"] == float("inf") and rows["same"]["lpips"] == pytest.approx(0.0, abs=1e-6)
    assert rows["same"]["ssim"] == pytest.approx(1.0)
    assert 0 < rows["noisy"]["lpips"] < rows["dark"]["lpips"]
    assert not rows["dark"]["high_after_jpeg"] and rows["same"]["high_after_jpeg"]
    acc = np.mean([r["high_after_jpeg"] for r in run.rows])
    assert run.summary["accuracy"] == pytest.approx(acc) and run.summary["accuracy_originals"] == 1.0
    assert run.summary["psnr_unchanged"] == 1 and ev.complete


def test_photos_of_other_sizes_are_scored_through_the_view(tmp_path, model):
    o, p = tmp_path / "orig", tmp_path / "prot"
    x = save_photo(o / "big.png", 48, 64)
    save_photo(p / "big.png", 48, 64)
    save_photo(p / "lonely.png", seed=3)
    ev = E.evaluate(o, [p], model=model, lpips=False, jpeg_quality=None)
    r = ev.runs[0].rows[0]
    view = fit_view_np(x[None] / 255.0, model.input_size)
    assert r["score_original"] == pytest.approx(float(model.apply(jnp.asarray(view))[0]), abs=1e-3)
    assert r["lpips"] is None and r["score_protected_jpeg"] == r["score_protected"]
    assert [f.name for f in ev.runs[0].match.unmatched_protected] == ["lonely.png"]


def test_results_files_and_report(tmp_path, model):
    o, p, _ = _folders(tmp_path)
    odd = "<b>&\"odd'.png"
    save_photo(o / odd, seed=7)
    save_photo(p / odd, seed=8)
    p2 = tmp_path / "prot2"
    p2.mkdir()
    for f in p.iterdir():
        (p2 / f.name).write_bytes(f.read_bytes())
    ev = E.evaluate(o, [p, p2], model=model, lpips=False, names=["run A", "run A"])
    assert [r.name for r in ev.runs] == ["run A (1)", "run A (2)"]
    out = tmp_path / "ev"
    paths = E.write_results(ev, out)
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(E.CSV_COLUMNS) and len(rows) == 8
    assert {r["psnr"] for r in rows if r["key"] == "same"} == {"inf"}
    data = json.loads(paths["json"].read_text())
    assert data["config"]["jpeg_quality"] == 90 and len(data["runs"]) == 2
    assert data["runs"][0]["images"][0]["run"] == "run A (1)"

    page = report.write_report(ev, out).read_text()
    assert html.escape(odd.removesuffix(".png")) in page and "<b>&" not in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) == 4 * (2 + 2 * 2)  # per photo: original, map, and (change, protected) per run
    for s in srcs:
        assert not s.startswith(("/", "file:", "http")) and (out / s).is_file()
    assert page.count("<svg") == 1 and "<polyline" in page  # two runs: accuracy against PSNR
    assert "file://" not in page and "<script" not in page


def test_results_csv_has_a_row_for_every_original_also_without_an_output(tmp_path, model):
    """As results.json ("unmatched_originals", "ambiguous") and the report list them."""
    o, p = tmp_path / "orig", tmp_path / "prot"
    touch(o, "a.png", "sub/gone.png", "twice.png")
    touch(p, "a.png", "twice.png", "twice.jpg")
    ev = E.evaluate(o, [p], model=model, lpips=False)
    with open(E.write_results(ev, tmp_path / "ev")["csv"]) as f:
        rows = {r["key"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == ["a", "sub/gone", "twice"]
    assert rows["a"]["error"] == "" and rows["a"]["score_protected_jpeg"] != ""
    gone = rows["sub/gone"]
    assert gone["original"] == str(o / "sub" / "gone.png") and gone["protected"] == ""
    assert gone["error"] == "no protected file (counted as rated high)" and gone["score_protected_jpeg"] == ""
    assert "2 protected files match" in rows["twice"]["error"] and "twice.jpg" in rows["twice"]["protected"]
    assert ev.runs[0].summary["outputs_missing_or_unusable"] == 2  # the rows agree with the summary


def test_svg_plot():
    svg = report.svg_plot(
        [(30.0, 80.0, "α=40"), (25.0, 20.0, "α=10"), (float("inf"), 50.0, "x")], x_label="PSNR", y_label="acc"
    )
    assert svg.startswith("<svg") and svg.endswith("</svg>") and svg.count("<circle") == 2
    cx = [float(v) for v in re.findall(r'<circle cx="([\d.]+)"', svg)]
    cy = [float(v) for v in re.findall(r'cy="([\d.]+)"', svg)]
    assert cx[0] > cx[1] and cy[0] < cy[1]  # larger x to the right, larger y higher up
    assert "no data" in report.svg_plot([], x_label="a", y_label="b")
    assert "&lt;" in report.svg_plot([(1, 2, "<")], x_label="x", y_label="y")


def test_change_panel_shows_a_change_of_one_or_two_levels_beside_the_map(tmp_path, model):
    """Issue 25: the difference panel was flat grey for changes of 1-2 levels. The heat map shows
    them white (2 levels), grey (1 level) and black (none), states its scale, and sits right after
    the sensitivity map. (The map's colours are `hasmap_jax.sensitivity.render.colorize`, tested there.)"""
    o, p = tmp_path / "orig", tmp_path / "prot"
    original = save_photo(o / "a.png", seed=3)
    h, w = original.shape[:2]
    away = np.where(original > 127, -1, 1)  # each change points away from the clipped end
    changed = original.astype(np.int16)
    changed[: h // 2, : w // 2] += 2 * away[: h // 2, : w // 2]
    changed[h // 2 :, : w // 2, 1] += away[h // 2 :, : w // 2, 1]  # one level, green only: max over channels
    p.mkdir()
    Image.fromarray(changed.astype(np.uint8)).save(p / "a.png")
    ev = E.evaluate(o, [p], model=model, lpips=False, jpeg_quality=None)
    page = report.write_report(ev, tmp_path / "ev").read_text()

    panel = np.asarray(Image.open(tmp_path / "ev" / "report_files" / "0000-r0-change.png").convert("L"))
    assert (panel[: h // 2, : w // 2] == 255).all() and (panel[h // 2 :, : w // 2] == 128).all()
    assert (panel[:, w // 2 :] == 0).all()
    assert html.escape(report.change_caption(2)) in page and "white = 2 levels of 255" in page
    srcs = [s.rsplit("-", 1)[-1] for s in re.findall(r'src="([^"]+)"', page)]
    assert srcs == ["original.png", "sensitivity.png", "change.png", "protected.png"]


def test_change_scale_is_a_high_percentile_of_the_changed_pixels():
    few_large = np.zeros((100, 100), np.float32)
    few_large[:50] = 3.0  # the change
    few_large[0, :10] = 200.0  # 10 of 5000 changed pixels: clipped, they do not set the scale
    assert report.change_scale([few_large]) == 3
    assert report.change_scale([np.zeros((4, 4)), np.full((4, 4), 0.5)]) == 1  # at least 1 level
    assert report.change_scale([few_large, 2 * few_large]) == 6  # one scale for all runs of a photo
    assert report.change_scale([]) == 1
    assert report.change_caption(1) == "white = 1 level of 255 or more, black = unchanged"


@pytest.fixture
def toy_loader(monkeypatch, model):
    import hasmap_jax.weights.loading

    monkeypatch.setattr(hasmap_jax.weights.loading, "load_quality_model", lambda name="default": model)


def test_cli_exit_codes(tmp_path, toy_loader, capsys):
    o, p, _ = _folders(tmp_path)
    out = tmp_path / "ev"
    assert cli_main(["evaluate", str(o), str(p), "-o", str(out), "--no-lpips", "-q"]) == 0
    text = capsys.readouterr().out
    assert "accuracy 66.7 % after JPEG-90 (originals 100.0 %)" in text and (out / "report.html").is_file()
    save_photo(o / "missing.png", seed=11)
    assert cli_main(["evaluate", str(o), str(p), "-o", str(out), "--no-lpips", "-q", "--no-report"]) == 1
    captured = capsys.readouterr()
    assert "no protected file" in captured.err
    # The original without a protected output counts as not protected: 3 of 4 rated high, not 2 of 3.
    assert "accuracy 75.0 % after JPEG-90" in captured.out
    assert "1 without a usable protected output (counted as rated high)" in captured.out
    summary = json.loads((out / "results.json").read_text())["runs"][0]["summary"]
    assert summary["outputs_missing_or_unusable"] == 1 and summary["accuracy"] == 0.75
    assert cli_main(["evaluate", str(o), str(tmp_path / "nope"), "-o", str(out)]) == 2
    assert cli_main(["evaluate", str(o), str(p), "-o", str(p)]) == 2


ATTACKS = "jpeg50,resize0.5,resize0.75+jpeg75,blur1,crop0.9,flip,webp80"


def test_robustness_after_real_operations(tmp_path, model):
    """Each operation is Pillow's, done here by hand; the shares count photos still rated high."""
    import io

    from PIL import ImageFilter

    o, p, xs = _folders(tmp_path)
    ev = E.evaluate(o, [p], model=model, lpips=False, attacks=ATTACKS)
    names = ATTACKS.split(",")
    assert ev.attacks == names and ev.config["attacks"] == names
    h, w = model.input_size

    def jpeg(im, q, fmt="JPEG"):
        buf = io.BytesIO()
        im.save(buf, format=fmt, quality=q)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    bic = Image.Resampling.BICUBIC
    by_hand = {
        "jpeg50": lambda im: jpeg(im, 50),
        "resize0.5": lambda im: im.resize((w // 2, h // 2), bic),
        "resize0.75+jpeg75": lambda im: jpeg(im.resize((round(w * 0.75), round(h * 0.75)), bic), 75),
        "blur1": lambda im: im.filter(ImageFilter.GaussianBlur(1)),
        "crop0.9": lambda im: im.crop(
            (
                (w - round(0.9 * w)) // 2,
                (h - round(0.9 * h)) // 2,
                (w - round(0.9 * w)) // 2 + round(0.9 * w),
                (h - round(0.9 * h)) // 2 + round(0.9 * h),
            )
        ).resize((w, h), bic),
        "flip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "webp80": lambda im: jpeg(im, 80, "WEBP"),
    }

    def score(a):
        view = fit_view_np(np.asarray(a)[None] / 255.0, (h, w))  # a downscaled photo: shown at the model's size
        return float(model.apply(jnp.asarray(view))[0])

    rows = {r["key"]: r for r in ev.runs[0].rows}
    for key, x in xs.items():
        with Image.open(p / f"{key}.png") as im:
            y = im.convert("RGB")
        for name in names:
            expected = score(by_hand[name](y))
            assert rows[key][f"score_protected_after_{name}"] == pytest.approx(expected, abs=1e-3), (key, name)
            assert rows[key][f"high_after_{name}"] == (expected > 50)
            original = score(by_hand[name](Image.fromarray(x)))
            assert rows[key][f"score_original_after_{name}"] == pytest.approx(original, abs=1e-3)
    table = ev.runs[0].summary["robustness"]
    for name in names:
        high = np.mean([rows[k][f"high_after_{name}"] for k in xs])
        assert table[name]["high"] == pytest.approx(high) and table[name]["low"] == pytest.approx(1 - high)
        assert table[name]["originals_high"] == pytest.approx(
            np.mean([rows[k][f"score_original_after_{name}"] > 50 for k in xs])
        )
    assert table["flip"]["high"] < 1 and table["jpeg50"]["originals_high"] == 1.0  # "dark" stays low

    out = tmp_path / "ev"
    paths = E.write_results(ev, out)
    with open(paths["csv"]) as f:
        header = next(csv.reader(f))
    assert header[: len(E.CSV_COLUMNS)] == list(E.CSV_COLUMNS)
    assert header[len(E.CSV_COLUMNS) :] == [c for n in names for c in attack_columns(n)]
    data = json.loads(paths["json"].read_text())
    assert data["config"]["attacks"] == names and set(data["runs"][0]["summary"]["robustness"]) == set(names)
    page = report.write_report(ev, out).read_text()
    assert "<h2>Robustness</h2>" in page and all(f"<code>{html.escape(n)}</code>" in page for n in names)


def test_robustness_counts_missing_outputs_as_high(tmp_path, model):
    o, p, _ = _folders(tmp_path)
    save_photo(o / "missing.png", seed=11)
    ev = E.evaluate(o, [p], model=model, lpips=False, jpeg_quality=None, attacks="flip")
    rows = ev.runs[0].rows
    still_high = sum(r["high_after_flip"] for r in rows)
    assert ev.runs[0].summary["robustness"]["flip"]["high"] == pytest.approx((still_high + 1) / 4)
    with pytest.raises(ValueError, match="unknown operation 'sharpen'"):
        E.evaluate(o, [p], model=model, lpips=False, attacks="flip,sharpen")


def test_cli_attacks_table(tmp_path, toy_loader, capsys):
    o, p, _ = _folders(tmp_path)
    out = tmp_path / "ev"
    args = ["evaluate", str(o), str(p), "-o", str(out), "--no-lpips", "-q", "--no-report"]
    assert cli_main([*args, "--attacks", "jpeg50,resize0.5+jpeg75,flip"]) == 0
    text = capsys.readouterr().out
    assert "robustness: share of photos rated high after each operation" in text
    lines = {ln.split()[0]: ln for ln in text.splitlines() if ln.startswith(("jpeg50", "resize0.5+jpeg75", "flip"))}
    assert set(lines) == {"jpeg50", "resize0.5+jpeg75", "flip"}
    summary = json.loads((out / "results.json").read_text())["runs"][0]["summary"]["robustness"]
    for name, line in lines.items():
        s = summary[name]
        assert f"{100 * s['high']:.1f} %" in line and f"{100 * s['low']:.1f} %" in line
        assert line.split()[1] == f"{100 * s['originals_high']:.1f}"
    with pytest.raises(SystemExit) as e:
        cli_main([*args, "--attacks", "jpeg50,jpg70"])
    assert e.value.code == 2 and "unknown operation 'jpg70'" in capsys.readouterr().err


def test_robustness_table_keeps_long_run_names_whole():
    """A run's name heads its columns whole, however long, and the cells stay under it."""
    from types import SimpleNamespace

    from hasmap_jax.cli.evaluate import robustness_table

    rob = {"flip": {"originals_high": 1.0, "high": 1 / 6, "low": 5 / 6}}
    runs = [SimpleNamespace(name=n, summary={"robustness": rob}) for n in ("a", "web-alpha1-floor0.5-kappa10")]
    lines = robustness_table(SimpleNamespace(attacks=["flip"], runs=runs)).splitlines()
    assert lines[1].endswith("web-alpha1-floor0.5-kappa10")
    assert len(lines[1]) == len(lines[2]) == len(lines[3])  # the cells end under the name
    assert lines[3].split() == ["flip", "100.0", "%", "16.7", "%", "83.3", "%", "16.7", "%", "83.3", "%"]
