"""Held-out evaluation of a quality model: clean photos rated high, degraded ones low, per kind and severity.

`evaluate` scores a module on degraded views of held-out photos (`hasmap_jax.training.data.evaluation_samples`),
`format_report` prints the result as a table, and `evaluate_checkpoint` / `record_evaluation` run it
on a checkpoint and write it into its model card (`hasmap train-quality --evaluate`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hasmap_jax.files import atomic_output
from hasmap_jax.metrics import spearman
from hasmap_jax.models.koncept import KonCept512
from hasmap_jax.training import data as qd
from hasmap_jax.training import photos as photo_manifest
from hasmap_jax.weights import checkpoint
from hasmap_jax.weights.loading import load_quality_model


def evaluate(
    module: KonCept512,
    variables: dict[str, Any],
    images: Sequence[np.ndarray],
    *,
    seed: int = 1234,
    views: int = 3,
    batch_size: int = 16,
    threshold: float = 50.0,
    groups: Sequence[str] | None = None,
    categories: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Scores held-out photos clean and degraded (`quality_data.evaluation_samples`).

    Accuracy counts a clean view correct when its score is > `threshold` and a degraded view
    correct when it is <= `threshold`; degraded views count for the headline only at clearly
    visible effective severities (>= `quality_data.CLEAR_SEVERITY`; see
    `quality_data.effective_severity`), milder ones are reported alone, by nominal level.

    "issue_clear" counts the degradations the default model's specification calls clearly
    degraded (`quality_data.is_clearly_degraded`: blur sigma >= 3, noise std >= 25/255, JPEG quality
    <= 10), per kind and together. `groups` (one label per image, e.g. its package) and `categories`
    (one label per image, e.g. `Photo.category`: "calm" or "general") add the same figures per label
    (`_subset_summary`: clean rated high, clearly degraded rated low, rank correlations, score range).

    Returns:
      a JSON-able report: per kind and severity the mean score and share rated low, accuracies
      ("clean", "degraded_clear", "overall", "balanced", "issue_clear"), MAE and Spearman
      correlation to targets, the score range, "per_group" when `groups` is given and
      "per_category" when `categories` is given.
    """
    for name, labels in (("groups", groups), ("categories", categories)):
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{name} has {len(labels)} labels for {len(images)} images")
    # Scored as they are made, in batches that run on across photos, keeping only the scores and
    # labels: the images of 55 photos (6600 at 384x512) would take 16 GB at once.
    apply = jax.jit(lambda v, x: module.apply(v, x)[0])
    samples: list[qd.Sample] = []
    owner: list[int] = []
    pending: list[np.ndarray] = []
    scored: list[np.ndarray] = []

    def flush():
        scored.append(np.asarray(apply(variables, jnp.asarray(np.stack(pending)))))
        pending.clear()

    for i, image in enumerate(images):
        for sample in qd.evaluation_samples(np.random.default_rng([seed, i]), image, views=views):
            pending.append(sample.image)
            samples.append(dataclasses.replace(sample, image=None))
            owner.append(i)
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    scores = np.concatenate(scored)
    kinds = np.asarray([s.kind for s in samples])
    sev = np.asarray([s.severity for s in samples])
    nominal = np.asarray([s.nominal for s in samples])
    targets = np.asarray([s.target for s in samples])
    high = scores > threshold

    def share(mask, values):
        return float(np.mean(values[mask])) if mask.any() else float("nan")

    per_kind: dict[str, Any] = {}
    for kind in ("clean", "clean-jpeg90"):
        m = kinds == kind
        per_kind[kind] = {"n": int(m.sum()), "mean_score": share(m, scores), "share_high": share(m, high)}
    for kind in qd.KINDS:
        levels = {}
        for s in qd.LEVELS:
            m = (kinds == kind) & np.isclose(nominal, s)
            levels[f"{s:.1f}"] = {"mean_score": share(m, scores), "share_low": share(m, ~high)}
        clear = (kinds == kind) & (sev >= qd.CLEAR_SEVERITY - 1e-9)
        per_kind[kind] = {"n_clear": int(clear.sum()), "share_low_clear": share(clear, ~high), "levels": levels}
    per_kind_rank = severity_rank_correlations(scores, kinds, nominal)
    for kind in qd.KINDS:
        per_kind[kind]["severity_rank"] = per_kind_rank[kind]
    clean = kinds == "clean"
    degraded_clear = np.isin(kinds, qd.KINDS) & (sev >= qd.CLEAR_SEVERITY - 1e-9)
    acc_clean = share(clean, high)
    acc_degraded = share(degraded_clear, ~high)
    counted = clean | degraded_clear
    correct = np.where(clean, high, ~high)
    issue = np.asarray([qd.is_clearly_degraded(k, s) for k, s in zip(kinds, nominal, strict=True)], bool)
    base = np.asarray([k.removeprefix(qd.CLEAR_PREFIX) for k in kinds])
    issue_clear = {}
    for kind in qd.CLEAR_PARAMETERS:
        m = issue & (base == kind)
        issue_clear[kind] = {"n": int(m.sum()), "share_low": share(m, ~high)}
    issue_clear["all"] = {"n": int(issue.sum()), "share_low": share(issue, ~high)}
    owner = np.asarray(owner)

    def per_label(labels: Sequence[str]) -> dict[str, Any]:
        out = {}
        for g in dict.fromkeys(labels):
            mine = np.flatnonzero(np.asarray(labels) == g)
            out[g] = {"photos": len(mine), **_subset_summary(np.isin(owner, mine), scores, kinds, nominal, high, issue)}
        return out

    return {
        "photos": len(images),
        "views_per_photo": views,
        "images_scored": len(samples),
        "threshold": threshold,
        "accuracy": {
            "clean": acc_clean,
            "clean_jpeg90": per_kind["clean-jpeg90"]["share_high"],
            "degraded_clear": acc_degraded,
            "overall": float(np.mean(correct[counted])),
            "balanced": (acc_clean + acc_degraded) / 2,
            "issue_clear": issue_clear["all"]["share_low"],
        },
        "issue_clear": issue_clear,
        "mae": float(np.mean(np.abs(scores - targets))),
        "score_range": [float(scores.min()), float(scores.max())],
        "spearman": spearman(scores, targets),
        "per_kind": per_kind,
        **({"per_group": per_label(groups)} if groups is not None else {}),
        **({"per_category": per_label(categories)} if categories is not None else {}),
    }


#: The kinds whose rank correlation and "clearly degraded" share the per-label summaries report.
SUMMARY_KINDS = tuple(qd.CLEAR_PARAMETERS)


def _subset_summary(m, scores, kinds, nominal, high, issue) -> dict[str, Any]:
    """The headline figures of the evaluation images selected by `m` (whole photos): clean views
    rated high, the specification's clearly degraded ones rated low (together and per kind), the
    per-view severity-score rank correlations of `SUMMARY_KINDS` and the score range."""

    def share(mask, values):
        return float(np.mean(values[mask])) if mask.any() else float("nan")

    base = np.asarray([k.removeprefix(qd.CLEAR_PREFIX) for k in kinds])
    rank = severity_rank_correlations(scores[m], kinds[m], nominal[m])
    return {
        "clean": share(m & (kinds == "clean"), high),
        "clean_jpeg90": share(m & (kinds == "clean-jpeg90"), high),
        "issue_clear": share(m & issue, ~high),
        "issue_clear_per_kind": {k: share(m & issue & (base == k), ~high) for k in qd.CLEAR_PARAMETERS},
        "severity_rank": {
            k: {"mean": rank[k]["mean"], "share_at_goal": rank[k]["share_at_goal"]} for k in SUMMARY_KINDS
        },
        "score_range": [float(scores[m].min()), float(scores[m].max())] if m.any() else [float("nan")] * 2,
    }


#: The per-view severity-score rank correlation a good model reaches (issue: default quality model).
RANK_GOAL = -0.9


def severity_rank_correlations(scores, kinds, nominal) -> dict[str, dict[str, float]]:
    """Per degradation kind, how consistently the score falls as the degradation grows.

    `scores`, `kinds` and `nominal` (applied severity) are the evaluation images in the order
    `quality_data.evaluation_samples` lays them out: each view starts with its "clean" image. Per
    view and kind, Spearman's correlation between severity (0 for the clean image, then each level)
    and score: -1 when every stronger degradation scores lower.

    Returns:
      per kind: "mean" (over views), "worst" (the highest), "share_at_goal" (share of views with a
      correlation <= `RANK_GOAL`), "views".
    """
    kinds = np.asarray(kinds)
    view = np.cumsum(kinds == "clean") - 1
    if view.min(initial=0) < 0:
        raise ValueError("the evaluation images must start with a clean view")
    out = {}
    for kind in qd.KINDS:
        rhos = []
        for v in range(int(view.max(initial=-1)) + 1):
            m = (view == v) & (kinds == kind)
            if not m.any():
                continue
            clean = (view == v) & (kinds == "clean")
            sev = np.concatenate([np.zeros(int(clean.sum())), np.asarray(nominal)[m]])
            sc = np.concatenate([np.asarray(scores)[clean], np.asarray(scores)[m]])
            rhos.append(spearman(sev, sc))
        r = np.asarray(rhos, np.float64)
        ok = r[np.isfinite(r)]
        out[kind] = {
            "mean": float(ok.mean()) if ok.size else float("nan"),
            "worst": float(ok.max()) if ok.size else float("nan"),
            "share_at_goal": float(np.mean(r <= RANK_GOAL)) if r.size else float("nan"),
            "views": int(r.size),
        }
    return out


def _range(report: dict[str, Any]) -> str:
    lo_hi = report.get("score_range")  # absent from reports written before it was added
    return f"; scores {lo_hi[0]:.1f} .. {lo_hi[1]:.1f}" if lo_hi else ""


def format_report(report: dict[str, Any]) -> str:
    """The held-out evaluation as a text table."""
    acc = report["accuracy"]
    lines = [
        f"held-out: {report['photos']} photos x {report['views_per_photo']} views, {report['images_scored']} images; "
        f"high <=> score > {report['threshold']:g}",
        f"{'kind':<13}{'correct':>9}   mean score (share rated low) at nominal severity "
        + " ".join(f"{s:>12.1f}" for s in qd.LEVELS),
    ]
    for kind in ("clean", "clean-jpeg90"):
        k = report["per_kind"][kind]
        lines.append(f"{kind:<13}{k['share_high']:>8.1%}   mean score {k['mean_score']:.1f} (rated high)")
    for kind in qd.KINDS:
        k = report["per_kind"][kind]
        cells = " ".join(f"{v['mean_score']:>5.1f} ({v['share_low']:>4.0%})" for v in k["levels"].values())
        lines.append(f"{kind:<13}{k['share_low_clear']:>8.1%}   {' ' * 51}{cells}")
    lines += [
        f"correct: clean {acc['clean']:.1%}, clean after JPEG 90 {acc['clean_jpeg90']:.1%}, "
        f"clearly degraded (severity >= {qd.CLEAR_SEVERITY}) {acc['degraded_clear']:.1%}",
        f"overall {acc['overall']:.1%} (clean + clearly degraded), balanced {acc['balanced']:.1%}; "
        f"MAE to target {report['mae']:.1f}, Spearman {report['spearman']:.3f}" + _range(report),
    ]
    ranks = {k: report["per_kind"][k].get("severity_rank") for k in qd.KINDS}
    if all(ranks.values()):
        lines.append(
            f"severity-score rank correlation per view (mean / worst / share <= {RANK_GOAL}): "
            + ", ".join(f"{k} {r['mean']:.2f} / {r['worst']:.2f} / {r['share_at_goal']:.0%}" for k, r in ranks.items())
        )
    issue = report.get("issue_clear")  # absent from reports written before it was added
    if issue:
        lines.append(
            "rated low at the specification's 'clearly degraded' (blur sigma >= 3, noise std >= 25/255, "
            f"JPEG quality <= 10): {issue['all']['share_low']:.1%} of {issue['all']['n']} ("
            + ", ".join(f"{k} {v['share_low']:.1%}" for k, v in issue.items() if k != "all")
            + ")"
        )
    for title, key in (("per category", "per_category"), ("per package", "per_group")):
        if report.get(key):
            lines.append(f"{title}:")
            lines += [f"  {g}: {_summary_line(r)}" for g, r in report[key].items()]
    return "\n".join(lines)


def _summary_line(r: dict[str, Any]) -> str:
    """One label's figures (`_subset_summary`); reports written before issue 26 lack the rank part."""
    text = f"{r['photos']} photos, clean rated high {r['clean']:.1%}, clearly degraded rated low {r['issue_clear']:.1%}"
    per_kind = r.get("issue_clear_per_kind")
    if per_kind:
        text += " (" + ", ".join(f"{k} {v:.0%}" for k, v in per_kind.items()) + ")"
    rank = r.get("severity_rank")
    if rank:
        text += ", rank " + " / ".join(f"{k} {v['mean']:.2f}" for k, v in rank.items())
    return text + f", scores {r['score_range'][0]:.1f} .. {r['score_range'][1]:.1f}"


def evaluate_checkpoint(
    source: str | os.PathLike,
    photo_roots: Sequence[str] = (),
    *,
    views: int = 3,
    split: str = "heldout",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """The evaluation (`evaluate`) of a quality checkpoint on the photos of `split` ("heldout": held-out
    photos of the training's packages; "unseen": packages it never read); print it with `format_report`."""
    if split not in ("heldout", "unseen"):
        raise ValueError(f"evaluate on 'heldout' or 'unseen' photos, not {split!r}")
    model = load_quality_model(source)
    photos = qd.prepared_photos(split, photo_roots, log)
    listed = photo_manifest.photos(split)
    report = evaluate(
        model.module,
        model.variables,
        photos,
        views=views,
        groups=[p.package for p in listed],
        categories=[p.category for p in listed],
    )
    return {**report, "split": split}


def record_evaluation(source: str | os.PathLike, report: dict[str, Any], *, command: str = "") -> Path:
    """Writes `report` (from `evaluate_checkpoint`) into the checkpoint's model card as
    "<split>_evaluation" (e.g. "unseen_evaluation"), with the command that made it; the card is
    replaced in one step (`hasmap_jax.files.atomic_output`), the weights are not touched.

    Returns:
      The card's path.
    """
    card_path = Path(source).expanduser() / checkpoint.CARD_NAME
    card = checkpoint.read_card(card_path.parent)
    card[f"{report.get('split', 'heldout')}_evaluation"] = {**report, "command": command}
    with atomic_output(card_path, "w", replace=True) as f:
        f.write(json.dumps(card, indent=2) + "\n")
    return card_path
