"""The package's layout rules: no module reaches into another's private names, and each job exists once."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hasmap_jax"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


def private_reaches(name: str, tree: ast.Module) -> list[str]:
    """`from hasmap_jax.x import _y`, and `m._y` where `m` names an imported hasmap_jax module."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hasmap_jax"):
            for a in node.names:
                if a.name.startswith("_") and node.module != name:
                    found.append(f"{name}: from {node.module} import {a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("hasmap_jax"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
        ):
            found.append(f"{name}: {node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_names():
    bad = [f for name, tree in _modules().items() for f in private_reaches(name, tree)]
    assert not bad, "\n".join(bad)


def test_the_private_name_check_catches_both_forms():
    tree = ast.parse("from hasmap_jax.files import _umask\nfrom hasmap_jax import files\nfiles._commit_new(1, 2)\n")
    assert private_reaches("hasmap_jax.other", tree) == [
        "hasmap_jax.other: from hasmap_jax.files import _umask",
        "hasmap_jax.other: files._commit_new",
    ]


def _defined(modules: dict[str, ast.Module], names: set[str]) -> dict[str, list[str]]:
    where: dict[str, list[str]] = {n: [] for n in names}
    for mod, tree in modules.items():
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in names:
                where[node.name].append(mod)
    return where


def test_each_shared_job_is_written_once():
    """The jobs the layout issue found written several times each have one definition."""
    jobs = {
        "sha256_file": "hasmap_jax.files",
        "atomic_output": "hasmap_jax.files",
        "atomic_directory": "hasmap_jax.files",
        "read_image": "hasmap_jax.files",
        "resolve_view_size": "hasmap_jax.scoring",
        "view_scores": "hasmap_jax.scoring",
        "score_images": "hasmap_jax.scoring",
        "distortion": "hasmap_jax.metrics",
        "distortion_metrics": "hasmap_jax.metrics",
        "lpips_distance": "hasmap_jax.metrics",
        "weighted_distortion": "hasmap_jax.metrics",
        "spearman": "hasmap_jax.metrics",
        "roc_auc": "hasmap_jax.metrics",
        "sensitivity_maps": "hasmap_jax.sensitivity.maps",
        "resolve_sensitivity": "hasmap_jax.sensitivity.maps",
        "default_quality_model": "hasmap_jax.weights.loading",
        "build_parser": "hasmap_jax.cli",
    }
    where = _defined(_modules(), set(jobs))
    wrong = {n: w for n, w in where.items() if w != [jobs[n]]}
    assert not wrong, wrong


def test_no_hand_written_progress_bars_or_rank_statistics():
    """Progress bars come from rich, ranks / Spearman / AUC from scipy.stats (through hasmap_jax.metrics)."""
    banned = {"ProgressBar", "_Progress", "_average_ranks", "_spearman", "_sha256", "_commit"}
    where = {n: w for n, w in _defined(_modules(), banned).items() if w}
    assert not where, where
