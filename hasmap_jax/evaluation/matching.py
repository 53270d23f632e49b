"""Pairing protected photos with their originals.

A protected file belongs to the original with the same relative path and stem, after removing the
output suffix. The suffix is read from the protected folder's `hasmap-manifest.jsonl` when there is
one, else given, else inferred (the most common "extra tail" of protected stems over original stems,
"" when names are equal). A file that matches nothing, or several, is listed as unmatched.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hasmap_jax.files import find_images, real_path
from hasmap_jax.protect.manifest import MANIFEST_NAME, Manifest, manifest_files, recorded_outputs


@dataclasses.dataclass(frozen=True)
class Match:
    """Originals paired with protected files.

    Attributes:
      pairs: (key, original, protected), key = the original's relative path without extension.
      unmatched_originals / unmatched_protected: files left without a partner.
      ambiguous: keys with several protected candidates (e.g. photo.png and photo.jpg).
      suffix: the output suffix used for matching.
    """

    pairs: list[tuple[str, Path, Path]]
    unmatched_originals: list[Path]
    unmatched_protected: list[Path]
    ambiguous: dict[str, list[Path]]
    suffix: str


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def manifest_settings(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The settings of the latest section of `folder`'s manifest (every `hasmap-manifest*.jsonl`
    part of it, as a multi-process run writes them), or None."""
    if not manifest_files(folder):
        return None
    try:
        return Manifest(Path(folder) / MANIFEST_NAME).settings
    except (ValueError, KeyError, OSError):
        return None


def infer_suffix(original_keys: Sequence[str], protected_keys: Sequence[str]) -> str:
    """The most common tail that protected keys add to original keys ("" when they are equal)."""
    originals = set(original_keys)
    votes: collections.Counter[str] = collections.Counter()
    for p in protected_keys:
        if p in originals:
            votes[""] += 1
            continue
        head, _, stem = p.rpartition("/")
        prefix = f"{head}/" if head else ""
        for k in range(1, len(stem)):
            if prefix + stem[:k] in originals:
                votes[stem[k:]] += 1
    return votes.most_common(1)[0][0] if votes else ""


def match_files(
    originals: str | os.PathLike,
    protected: str | os.PathLike,
    *,
    suffix: str | None = None,
    exclude: Sequence[str | os.PathLike] = (),
) -> Match:
    """Pairs the photos of two folders by relative path and stem, suffix-aware (module docstring).

    Args:
      originals, protected: folders (walked recursively; hidden files and `exclude` left out).
      suffix: the protected files' stem suffix; None: from the manifest, else inferred.
      exclude: folders not to walk (e.g. the evaluation output).
    """
    originals, protected = Path(originals), Path(protected)
    ex = tuple(Path(e) for e in exclude)

    # Outputs written next to their inputs (same folder, with a suffix) are not originals, and
    # originals are not protected files.
    outputs = recorded_outputs(protected)
    orig_files = [f for f in find_images(originals, exclude=ex + (protected,)) if real_path(f) not in outputs]
    orig_set = {real_path(f) for f in orig_files}
    prot_files = [f for f in find_images(protected, exclude=ex + (originals,)) if real_path(f) not in orig_set]
    orig = {}
    for f in orig_files:  # two originals with one stem (a.jpg, a.png): the first one wins
        orig.setdefault(_key(f, originals), f)
    if suffix is None:
        settings = manifest_settings(protected)
        if settings is not None and "suffix" in settings:
            suffix = settings["suffix"]
        else:
            suffix = infer_suffix(list(orig), [_key(f, protected) for f in prot_files])
    candidates: dict[str, list[Path]] = collections.defaultdict(list)
    stray: list[Path] = []
    for f in prot_files:
        k = _key(f, protected)
        if suffix:
            if not k.endswith(suffix):
                stray.append(f)
                continue
            k = k[: -len(suffix)]
        candidates[k].append(f)
    pairs, ambiguous = [], {}
    for k, f in orig.items():
        c = candidates.pop(k, [])
        if len(c) == 1:
            pairs.append((k, f, c[0]))
        elif len(c) > 1:
            ambiguous[k] = c
    # What is left may still pair by stem alone when the folder layouts differ (one flat, one nested).
    left_orig = {k: f for k, f in orig.items() if k not in {p[0] for p in pairs} and k not in ambiguous}
    by_stem_o = collections.defaultdict(list)
    for k in left_orig:
        by_stem_o[k.rpartition("/")[2]].append(k)
    by_stem_p = collections.defaultdict(list)
    for k, c in candidates.items():
        if len(c) == 1:
            by_stem_p[k.rpartition("/")[2]].append(k)
    for stem, ks in by_stem_o.items():
        ps = by_stem_p.get(stem, [])
        if len(ks) == 1 and len(ps) == 1:
            pairs.append((ks[0], left_orig.pop(ks[0]), candidates.pop(ps[0])[0]))
    unmatched_p = stray + [f for c in candidates.values() for f in c]
    pairs.sort(key=lambda p: p[0])
    return Match(pairs, sorted(left_orig.values()), sorted(unmatched_p), ambiguous, suffix)
