"""An HTML report of an evaluation: photos side by side with their scores, and accuracy-distortion plots.

`write_report` writes `report.html` and a `report_files/` folder of PNG images next to it: the folder
is self-contained (no script, no network, no absolute paths), so it can be zipped or moved. Images are
files rather than base64 so that the page stays small and each panel can be opened at full size.

Per photo: the original, its sensitivity map (the default JND map; bright = a change is most
visible), beside it per run a heat map of where the photo changed (`change_map`: black = unchanged,
white = the photo's scale, stated in the caption; one scale per photo across runs so runs compare),
then per run the protected photo. A protection that follows the map puts its change where the map is
dark. Photos larger than `max_preview` pixels on a side are shown as a centre crop at 100 % (the
perturbation is pixel-level: a downscaled preview would hide it).

With several runs (e.g. an alpha sweep) the page starts with accuracy against distortion (mean
PSNR, mean LPIPS when measured) as inline SVG, drawn here without a plotting library. With
robustness operations (`evaluate(attacks=...)`) a table gives, per operation (JPEG, resizing, blur,
crop, flip, ...), the share of photos still rated high and rated low per run, and the originals'.
"""

from __future__ import annotations

import datetime
import html
import math
import os
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hasmap_jax.files import ImageReadError, atomic_output, composite_on_white, read_image, write_image
from hasmap_jax.models.jnd import default_sensitivity
from hasmap_jax.sensitivity.render import colorize, to_uint8

_CSS = """
body{font:15px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1400px;
 padding:0 16px;color:#1d1d1f;background:#fafafa}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;margin:28px 0 8px;border-bottom:1px solid #ddd}
h3{font-size:1.05em;margin:18px 0 6px;word-break:break-all}
table{border-collapse:collapse;background:#fff}td,th{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f0f0f0}td:first-child,th:first-child{text-align:left}
.meta{color:#555}.photo{background:#fff;border:1px solid #e2e2e2;border-radius:8px;padding:10px 14px;margin:14px 0}
.row{display:flex;flex-wrap:wrap;gap:10px}figure{margin:0;width:280px}figure img{width:100%;display:block;
 border:1px solid #ccc;image-rendering:auto}figcaption{font-size:.82em;color:#333;margin-top:3px}
.low{color:#0a7a2f;font-weight:600}.high{color:#b3261e;font-weight:600}.err{color:#b3261e}
.plots{display:flex;flex-wrap:wrap;gap:18px}.note{font-size:.85em;color:#666}
"""


def change_map(original: np.ndarray, protected: np.ndarray) -> np.ndarray:
    """|protected - original| in 8-bit levels, the largest over R, G and B: (H, W) float32 from two
    (H, W, 3) uint8 photos."""
    return np.abs(protected.astype(np.float32) - original.astype(np.float32)).max(axis=-1)


#: The percentile of a photo's changed pixels that `change_scale` shows as white: a few extreme
#: pixels do not dim the rest of the heat map.
CHANGE_PERCENTILE = 99.0


def change_scale(changes: Sequence[np.ndarray]) -> int:
    """Levels of 255 shown as white in a photo's heat maps: the `CHANGE_PERCENTILE`th percentile of
    its changed pixels (those not 0) over `changes` (`change_map`s, e.g. one per run), rounded up;
    at least 1. Changes of 1-2 levels thus show white, not the near-black of a fixed scale."""
    changed = np.concatenate([c[c > 0] for c in changes]) if changes else np.zeros(0)
    return max(1, math.ceil(np.percentile(changed, CHANGE_PERCENTILE))) if changed.size else 1


def change_image(change: np.ndarray, scale: int) -> np.ndarray:
    """The heat map of a `change_map`: (H, W, 3) uint8 grey, 0 = unchanged, 255 = `scale` levels or more."""
    grey = np.round(255.0 * np.clip(change / scale, 0.0, 1.0)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def change_caption(scale: int) -> str:
    """The heat map's scale, as the report writes it under each panel."""
    return f"white = {scale} level{'s' if scale != 1 else ''} of 255 or more, black = unchanged"


def _nice_step(span: float, target: int = 5) -> float:
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    for m in (1, 2, 2.5, 5, 10):
        if m * mag >= raw:
            return m * mag
    return 10 * mag


def _fmt(v: float, step: float) -> str:
    """`v` with as many decimals as the tick step needs (0.0025 -> 4)."""
    decimals = next((d for d in range(10) if abs(round(step, d) - step) <= 1e-9 * step), 10)
    return f"{v:.{decimals}f}"


def svg_plot(
    points: Sequence[tuple[float, float, str]],
    *,
    x_label: str,
    y_label: str,
    y_range: tuple[float, float] | None = (0.0, 100.0),
    baseline: float | None = None,
    baseline_label: str = "",
    title: str = "",
    width: int = 520,
    height: int = 340,
) -> str:
    """An inline SVG scatter plot with a connecting line (sorted by x), axes, ticks and point labels.

    Args:
      points: (x, y, label); points with a non-finite coordinate are left out.
      y_range: fixed y limits (accuracy in %), or None to fit the data.
      baseline: a dashed horizontal reference line (e.g. the originals' accuracy).
    """
    pts = [(x, y, lab) for x, y, lab in points if x is not None and y is not None and math.isfinite(x + y)]
    ml, mr, mt, mb = 58, 16, 30 if title else 14, 46
    pw, ph = width - ml - mr, height - mt - mb
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="{html.escape(title or y_label)}" font-family="system-ui,sans-serif" font-size="12">',
        f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>',
    ]
    if title:
        parts.append(f'<text x="{width / 2}" y="18" text-anchor="middle" font-weight="600">{html.escape(title)}</text>')
    if not pts:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">no data</text></svg>')
        return "".join(parts)
    xs = [p[0] for p in pts]
    x0, x1 = min(xs), max(xs)
    if x1 - x0 < 1e-9:
        x0, x1 = x0 - 1, x1 + 1
    pad = 0.08 * (x1 - x0)
    x0, x1 = x0 - pad, x1 + pad
    if y_range is None:
        ys = [p[1] for p in pts] + ([baseline] if baseline is not None else [])
        y0, y1 = min(ys), max(ys)
        if y1 - y0 < 1e-9:
            y0, y1 = y0 - 1, y1 + 1
        y0, y1 = y0 - 0.08 * (y1 - y0), y1 + 0.08 * (y1 - y0)
    else:
        y0, y1 = y_range

    def sx(x):
        return ml + (x - x0) / (x1 - x0) * pw

    def sy(y):
        return mt + ph - (y - y0) / (y1 - y0) * ph

    parts.append(f'<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
    for axis, (lo, hi) in (("x", (x0, x1)), ("y", (y0, y1))):
        step = _nice_step(hi - lo)
        v = math.ceil(lo / step) * step
        while v <= hi + 1e-9:
            label = html.escape(_fmt(v, step))
            if axis == "x":
                X = sx(v)
                parts.append(f'<line x1="{X:.1f}" y1="{mt}" x2="{X:.1f}" y2="{mt + ph}" stroke="#eee"/>')
                parts.append(f'<text x="{X:.1f}" y="{mt + ph + 16}" text-anchor="middle">{label}</text>')
            else:
                Y = sy(v)
                parts.append(f'<line x1="{ml}" y1="{Y:.1f}" x2="{ml + pw}" y2="{Y:.1f}" stroke="#eee"/>')
                parts.append(f'<text x="{ml - 6}" y="{Y + 4:.1f}" text-anchor="end">{label}</text>')
            v += step
    parts.append(
        f'<text x="{ml + pw / 2}" y="{height - 8}" text-anchor="middle">{html.escape(x_label)}</text>'
        f'<text transform="translate(14 {mt + ph / 2}) rotate(-90)" text-anchor="middle">{html.escape(y_label)}</text>'
    )
    if baseline is not None and y0 <= baseline <= y1:
        Y = sy(baseline)
        parts.append(
            f'<line x1="{ml}" y1="{Y:.1f}" x2="{ml + pw}" y2="{Y:.1f}" stroke="#888" stroke-dasharray="5 4"/>'
            f'<text x="{ml + pw - 4}" y="{Y - 5:.1f}" text-anchor="end" fill="#666">'
            f"{html.escape(baseline_label)}</text>"
        )
    line = sorted(pts)
    if len(line) > 1:
        d = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y, _ in line)
        parts.append(f'<polyline points="{d}" fill="none" stroke="#3b6fd4" stroke-width="1.5"/>')
    for x, y, lab in pts:
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4.5" fill="#3b6fd4"><title>{html.escape(lab)}: '
            f"{html.escape(f'{x:.4g}')}, {html.escape(f'{y:.4g}')}</title></circle>"
            + (  # labels of points near the right edge go to their left, to stay inside
                f'<text x="{sx(x) - 7:.1f}" y="{sy(y) - 7:.1f}" text-anchor="end" fill="#333">{html.escape(lab)}</text>'
                if sx(x) > ml + 0.6 * pw
                else f'<text x="{sx(x) + 7:.1f}" y="{sy(y) - 7:.1f}" fill="#333">{html.escape(lab)}</text>'
            )
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------


def _crop(a: np.ndarray, max_side: int) -> tuple[np.ndarray, bool]:
    h, w = a.shape[:2]
    if max(h, w) <= max_side:
        return a, False
    ch, cw = min(h, max_side), min(w, max_side)
    top, left = (h - ch) // 2, (w - cw) // 2
    return a[top : top + ch, left : left + cw], True


def _save_png(a: np.ndarray, path: Path) -> None:
    write_image(path, np.ascontiguousarray(a), format="png")


def _rgb(path: str) -> np.ndarray | None:
    try:
        img = read_image(path, min_side=1, max_pixels=10**9)
    except ImageReadError:
        return None
    return composite_on_white(img.rgb, img.alpha) if img.alpha is not None else img.rgb


def _num(v: Any, fmt: str = ".2f") -> str:
    if v is None or v == "":
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return format(v, fmt)


def _pct(v: Any) -> str:
    return "–" if v is None else f"{100 * v:.1f} %"


def _run_label(run) -> str:
    alpha = (run.settings or {}).get("alpha")
    return f"{run.name} (α={alpha:g})" if isinstance(alpha, int | float) else run.name


def write_report(evaluation, out: str | os.PathLike, *, max_preview: int = 768, title: str = "") -> Path:
    """Writes `out/report.html` and `out/report_files/` for an `hasmap_jax.evaluation.Evaluation`.

    Args:
      evaluation: what `evaluate` returned.
      out: the report folder (created if needed; files of an earlier report there are replaced).
      max_preview: photos with a longer side are shown as a centre crop at 100 % of this size.
      title: the page title (default: "HASMap evaluation").

    Returns:
      The path of `report.html`.
    """
    out = Path(out)
    files = out / "report_files"
    files.mkdir(parents=True, exist_ok=True)
    cfg = evaluation.config
    threshold = cfg.get("threshold", 50.0)
    jq = cfg.get("jpeg_quality")
    after = f"after JPEG-{jq}" if jq is not None else "as stored"
    title = title or "HASMap evaluation"
    body: list[str] = [
        f"<h1>{html.escape(title)}</h1>",
        f'<p class="meta">Originals: <code>{html.escape(str(evaluation.originals))}</code> · model '
        f"{html.escape(str(cfg.get('model')))} · “high quality” ⇔ score &gt; {threshold:g} · protocol: "
        f"{html.escape(str(cfg.get('jpeg_encoder', '')))} at quality {html.escape(str(jq))} before scoring · "
        f"{html.escape(str(cfg.get('time', '')))}</p>",
        "<p>Accuracy is the share of photos the model still rates as high quality "
        f"{html.escape(after)} (MediaEval 2020 Pixel Privacy protocol): <b>lower means better protected</b>. "
        "PSNR and SSIM: higher means closer to the original; LPIPS, L2, L∞ and weighted L2 (‖S·d‖, S the "
        "sensitivity map): lower means closer.</p>",
        "<h2>Runs</h2>",
        _runs_table(evaluation),
    ]
    if evaluation.attacks:
        body.append(_robustness_table(evaluation))
    runs = evaluation.runs
    if len(runs) >= 2:
        body.append(_plots(evaluation, after))
    for r in runs:
        problems = []
        if r.match.unmatched_originals:
            problems.append(f"{len(r.match.unmatched_originals)} original(s) without a protected file")
        if r.match.unmatched_protected:
            problems.append(f"{len(r.match.unmatched_protected)} protected file(s) without an original")
        if r.match.ambiguous:
            problems.append(f"{len(r.match.ambiguous)} original(s) with several protected candidates")
        if problems:
            names = [*r.match.unmatched_originals, *r.match.unmatched_protected]
            listed = ", ".join(html.escape(str(p)) for p in names[:20]) + (" …" if len(names) > 20 else "")
            body.append(f'<p class="err">{html.escape(r.name)}: {"; ".join(problems)}. {listed}</p>')

    body.append("<h2>Photos</h2>")
    body.append(
        f'<p class="note">Sensitivity map: bright = a change is most visible there. Change: '
        "|protected − original| per pixel, the largest of R, G and B, from black (unchanged) to white (the "
        f"photo's scale in the caption: the {CHANGE_PERCENTILE:g}th percentile of its changed pixels over all "
        "runs, larger changes clipped); a protection that follows the map changes the photo where the map is "
        f"dark. Photos larger than {max_preview} px are shown as a centre crop at 100 %. Click a panel to "
        "open it at full size.</p>"
    )
    keys = sorted({row["key"] for r in runs for row in r.rows})
    rows_by = {(r.name, row["key"]): row for r in runs for row in r.rows}
    sens = default_sensitivity()
    for n, key in enumerate(keys):
        first = next(rows_by[(r.name, key)] for r in runs if (r.name, key) in rows_by)
        original = _rgb(first["original"])
        body.append(f'<section class="photo"><h3>{html.escape(key)}</h3><div class="row">')
        if original is None:
            body.append(f'<p class="err">cannot read {html.escape(first["original"])}</p></div></section>')
            continue
        shown, cropped = _crop(original, max_preview)
        crop_note = " (centre crop)" if cropped else ""
        name = f"{n:04d}-original.png"
        _save_png(shown, files / name)
        s = f"score {_num(first['score_original'])}"
        if first.get("score_original_jpeg") is not None:
            s += f", {html.escape(after)} {_num(first['score_original_jpeg'])}"
        h, w = original.shape[:2]
        body.append(_figure(name, f"original{crop_note} · {w}×{h} · {s}"))
        smap = _crop(sens.map(original[None])[0], max_preview)[0]
        name = f"{n:04d}-sensitivity.png"
        _save_png(to_uint8(colorize(smap)), files / name)
        body.append(_figure(name, "sensitivity map (default JND)"))
        pairs = []
        for j, r in enumerate(runs):
            row = rows_by.get((r.name, key))
            prot = _rgb(row["protected"]) if row is not None else None
            pairs.append((j, r, row, prot))
        # The change panels come first, beside the map they should follow; the photos after them.
        changes = {
            j: change_map(original, prot)
            for j, _, row, prot in pairs
            if prot is not None and prot.shape == original.shape and not row.get("error")
        }
        scale = change_scale(list(changes.values()))
        photos = []
        for j, r, row, prot in pairs:
            label = html.escape(_run_label(r))
            if row is None:
                body.append(f'<figure><figcaption class="err">{label}: no protected file</figcaption></figure>')
                continue
            if prot is None:
                body.append(
                    f'<figure><figcaption class="err">{label}: cannot read the protected file</figcaption></figure>'
                )
                continue
            if row.get("error"):
                body.append(f'<figure><figcaption class="err">{html.escape(row["error"])}</figcaption></figure>')
            elif j in changes:
                name = f"{n:04d}-r{j}-change.png"
                _save_png(_crop(change_image(changes[j], scale), max_preview)[0], files / name)
                unchanged = " (unchanged)" if not changes[j].any() else ""
                cap = (
                    f"<b>{label}</b> · change{unchanged}: {html.escape(change_caption(scale))} · "
                    f"PSNR {_num(row['psnr'])} dB · SSIM {_num(row['ssim'], '.4f')} · "
                    f"LPIPS {_num(row['lpips'], '.4f')} · L∞ {_num(_levels(row['linf']), '.0f')}/255 · "
                    f"weighted L2 {_num(row['weighted_l2'], '.3f')}"
                )
                body.append(_figure(name, cap, escape=False))
            name = f"{n:04d}-r{j}-protected.png"
            _save_png(_crop(prot, max_preview)[0], files / name)
            verdict = (
                '<span class="high">still high</span>'
                if row["high_after_jpeg"]
                else '<span class="low">rated low</span>'
            )
            cap = (
                f"<b>{label}</b> · score {_num(row['score_protected'])}, {html.escape(after)} "
                f"{_num(row['score_protected_jpeg'])} → {verdict}"
            )
            photos.append(_figure(name, cap, escape=False))
        body += photos
        body.append("</div></section>")

    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + f'\n<p class="note">Written by hasmap evaluate, {datetime.date.today().isoformat()}.</p></body></html>\n'
    )
    path = out / "report.html"
    with atomic_output(path, "w") as f:
        f.write(page)
    return path


def _levels(linf: Any) -> float | None:
    return None if linf is None else 255.0 * linf


def _figure(name: str, caption: str, *, escape: bool = True) -> str:
    href = "report_files/" + urllib.parse.quote(name)
    cap = html.escape(caption) if escape else caption
    return (
        f'<figure><a href="{href}"><img src="{href}" alt="" loading="lazy"></a><figcaption>{cap}</figcaption></figure>'
    )


def _runs_table(evaluation) -> str:
    head = (
        "<tr><th>run</th><th>α</th><th>photos</th><th>accuracy ↓</th><th>accuracy as stored</th>"
        "<th>originals' accuracy</th><th>PSNR dB ↑</th><th>SSIM ↑</th><th>LPIPS ↓</th><th>L∞ /255</th>"
        "<th>weighted L2 ↓</th></tr>"
    )
    rows = []
    for r in evaluation.runs:
        s, st = r.summary, r.settings or {}
        alpha = st.get("alpha")
        errors = f" (+{s['errors']} errors)" if s.get("errors") else ""
        if s.get("outputs_missing_or_unusable"):
            errors += f"; {s['outputs_missing_or_unusable']} without a usable output, counted as rated high"
        rows.append(
            "<tr>"
            f"<td>{html.escape(r.name)}</td><td>{_num(alpha, 'g') if alpha is not None else '–'}</td>"
            f"<td>{s.get('images', 0)}{errors}</td>"
            f"<td><b>{_pct(s.get('accuracy'))}</b></td><td>{_pct(s.get('accuracy_without_jpeg'))}</td>"
            f"<td>{_pct(s.get('accuracy_originals'))}</td><td>{_num(s.get('mean_psnr'))}</td>"
            f"<td>{_num(s.get('mean_ssim'), '.4f')}</td><td>{_num(s.get('mean_lpips'), '.4f')}</td>"
            f"<td>{_num(_levels(s.get('mean_linf')), '.1f')}</td><td>{_num(s.get('mean_weighted_l2'), '.3f')}</td>"
            "</tr>"
        )
    note = (
        '<p class="note">Means over photos; PSNR of an unchanged photo is infinite and left out of the mean '
        "(counted in results.json as psnr_unchanged).</p>"
    )
    return f"<table>{head}{''.join(rows)}</table>{note}"


def _robustness_table(evaluation) -> str:
    """Per operation, the share of photos still rated high (and rated low) per run, and the originals'."""
    runs = evaluation.runs
    head = "<tr><th rowspan='2'>operation (Pillow)</th><th rowspan='2'>originals rated high</th>" + "".join(
        f"<th colspan='2'>{html.escape(_run_label(r))}</th>" for r in runs
    )
    head += "</tr><tr>" + "<th>still high ↓</th><th>rated low ↑</th>" * len(runs) + "</tr>"
    rows = []
    for name in evaluation.attacks:
        per = [r.summary.get("robustness", {}).get(name, {}) for r in runs]
        base = next((p.get("originals_high") for p in per if p.get("originals_high") is not None), None)
        cells = "".join(f"<td><b>{_pct(p.get('high'))}</b></td><td>{_pct(p.get('low'))}</td>" for p in per)
        rows.append(f"<tr><td><code>{html.escape(name)}</code></td><td>{_pct(base)}</td>{cells}</tr>")
    note = (
        '<p class="note">Each protected photo (and its original) put through the real operation with Pillow '
        "(jpegQ: JPEG at quality Q; resizeF: downscaled to F of each side, bicubic; blurS: Gaussian blur, "
        "sigma S; cropF: centre crop of F, resized back; flip: mirrored; webpQ: WebP; a+b: a, then b), then "
        "scored. Photos without a usable protected output count as still high.</p>"
    )
    return f"<h2>Robustness</h2><table>{head}{''.join(rows)}</table>{note}"


def _plots(evaluation, after: str) -> str:
    runs = evaluation.runs
    base = [r.summary.get("accuracy_originals") for r in runs if r.summary.get("accuracy_originals") is not None]
    baseline = 100 * float(np.mean(base)) if base else None

    def pts(metric):
        out = []
        for r in runs:
            x, y = r.summary.get(f"mean_{metric}"), r.summary.get("accuracy")
            if x is not None and y is not None:
                out.append((x, 100 * y, _run_label(r)))
        return out

    plots = [
        svg_plot(
            pts("psnr"),
            x_label="mean PSNR (dB) → closer to the original",
            y_label=f"accuracy {after} (%)",
            baseline=baseline,
            baseline_label="originals",
            title="Accuracy against PSNR",
        )
    ]
    if any(r.summary.get("mean_lpips") is not None for r in runs):
        plots.append(
            svg_plot(
                pts("lpips"),
                x_label="mean LPIPS → more visible",
                y_label=f"accuracy {after} (%)",
                baseline=baseline,
                baseline_label="originals",
                title="Accuracy against LPIPS",
            )
        )
    note = (
        '<p class="note">Each point is a run (mean over its photos). A run in which no photo changed has '
        "no finite PSNR and is only on the LPIPS plot. The dashed line is the originals' accuracy.</p>"
    )
    return "<h2>Accuracy against distortion</h2><div class='plots'>" + "".join(plots) + "</div>" + note
