"""The package's layout rules: layers imported downwards only, no module reaches into another's private
names, and each job exists once."""

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


# --------------------------------------------------------------------------------------------
# Layers

#: The package's layers, lowest first: the one statement of the architecture. A module imports its
#: own package and the layers below it; packages of one layer are peers and import neither each
#: other nor anything above. `hasmap_jax` itself (its `__init__.py`, the public API) is the top.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("arrays", "files", "runtime"),  # foundations: array checks, photo files, devices and processes
    ("transforms",),  # differentiable image operations and their Pillow references
    ("scoring",),  # a model's scores of photos through its view (any model with `apply`)
    ("models",),  # networks, the JND map, models with their weights, variable trees, BatchNorm folding
    ("metrics",),  # distortions (weighted L2 with the JND map) and rank statistics
    ("weights",),  # conversion from reference formats, checkpoints, loading
    ("sensitivity",),  # maps from what a user names, their pictures, the (photo, map) pairs
    ("attack",),  # attack_batch
    ("protect",),  # folders of photos: settings, manifest, lock, memory budget, runner
    ("evaluation", "training"),  # `hasmap evaluate`; training the shipped models
    ("cli",),  # the `hasmap` command
    ("hasmap_jax",),  # the public API
)


def package_of(module: str) -> str:
    """`hasmap_jax.models.koncept` -> "models", `hasmap_jax.files` -> "files", `hasmap_jax` -> "hasmap_jax"."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def imported_modules(name: str, tree: ast.Module, *, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, module) of every hasmap_jax import in `tree`, those inside functions and under
    `TYPE_CHECKING` included: `from hasmap_jax import files` imports `hasmap_jax.files`, and
    relative imports are resolved against `name` (a package's `__init__` when `is_package`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "hasmap_jax"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = name.split(".") if is_package else name.split(".")[:-1]
                base = ".".join(here[: len(here) - node.level + 1] + ([base] if base else []))
            if base == "hasmap_jax":  # a module (`import files`) or a name of the public API (see `_imports`)
                found += [(node.lineno, f"hasmap_jax.{a.name}") for a in node.names]
            elif base.startswith("hasmap_jax."):
                found.append((node.lineno, base))
    return sorted(found)  # in line order (ast.walk visits a function's body after the module's)


def _layer_index() -> dict[str, int]:
    return {package: i for i, layer in enumerate(LAYERS) for package in layer}


def _imports(modules: dict[str, ast.Module]) -> list[tuple[str, int, str, str, str]]:
    """(module, line, imported module, its package, the imported package) across packages."""
    packages = {package_of(m) for m in modules} | {p for layer in LAYERS for p in layer}
    out = []
    for name, tree in modules.items():
        is_package = any(m.startswith(name + ".") for m in modules)
        for line, target in imported_modules(name, tree, is_package=is_package):
            to = package_of(target)
            if to not in packages:  # `from hasmap_jax import load_quality_model`: the public API itself
                to = "hasmap_jax"
            if to != package_of(name):
                out.append((name, line, target, package_of(name), to))
    return out


def layer_violations(modules: dict[str, ast.Module]) -> list[str]:
    """Each import of a higher layer or of a peer, and each package without a layer in `LAYERS`."""
    layer = _layer_index()
    bad = [f"{p}: a package with no layer in LAYERS" for p in sorted({package_of(m) for m in modules} - set(layer))]
    for name, line, target, src, dst in _imports(modules):
        if src not in layer or dst not in layer:
            continue
        if layer[dst] > layer[src]:
            bad.append(f"{name}:{line} imports {target}: {dst} is above {src} in LAYERS")
        elif layer[dst] == layer[src]:
            bad.append(f"{name}:{line} imports {target}: {dst} and {src} are peers in LAYERS")
    return bad


def package_cycles(modules: dict[str, ast.Module]) -> list[list[str]]:
    """The groups of packages that import each other in a cycle (strongly connected components of
    the package import graph with more than one member), each sorted, whatever `LAYERS` says."""
    graph: dict[str, set[str]] = {}
    for _, _, _, src, dst in _imports(modules):
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    reach = {p: _reachable(graph, p) for p in graph}
    groups = {frozenset(q for q in reach[p] if p in reach[q]) | {p} for p in graph}
    return sorted(sorted(g) for g in groups if len(g) > 1)


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for q in graph[todo.pop()]:
            if q not in seen:
                seen.add(q)
                todo.append(q)
    return seen


def test_imports_follow_the_layer_order():
    bad = layer_violations(_modules())
    assert not bad, "\n".join(bad)


def test_every_package_has_exactly_one_layer():
    declared = [p for layer in LAYERS for p in layer]
    assert len(declared) == len(set(declared)), declared
    assert set(declared) == {package_of(m) for m in _modules()}


def test_no_import_cycles_between_packages():
    assert package_cycles(_modules()) == []


def _fake(**sources: str) -> dict[str, ast.Module]:
    return {name.replace("__", "."): ast.parse(src) for name, src in sources.items()}


def test_the_layer_check_reports_upward_and_peer_imports_wherever_written():
    modules = _fake(
        hasmap_jax__models__fake=(
            "from hasmap_jax.files import read_image\n"  # downwards: fine
            "def f():\n"
            "    from hasmap_jax.attack import attack_batch\n"  # upwards, hidden in a function
            "import hasmap_jax.weights.loading\n"  # upwards, plain import
            "from hasmap_jax import cli\n"  # upwards, as a name of the package
            "from . import koncept\n"  # its own package: fine
        ),
        hasmap_jax__training__fake="from hasmap_jax.evaluation import protocol\n",  # a peer
        hasmap_jax__gadgets__fake="from hasmap_jax.files import read_image\n",  # no layer
        hasmap_jax__cli__fake="from hasmap_jax import load_quality_model\n",  # the public API: above cli
    )
    assert layer_violations(modules) == [
        "gadgets: a package with no layer in LAYERS",
        "hasmap_jax.models.fake:3 imports hasmap_jax.attack: attack is above models in LAYERS",
        "hasmap_jax.models.fake:4 imports hasmap_jax.weights.loading: weights is above models in LAYERS",
        "hasmap_jax.models.fake:5 imports hasmap_jax.cli: cli is above models in LAYERS",
        "hasmap_jax.training.fake:1 imports hasmap_jax.evaluation: evaluation and training are peers in LAYERS",
        "hasmap_jax.cli.fake:1 imports hasmap_jax.load_quality_model: hasmap_jax is above cli in LAYERS",
    ]


def test_the_cycle_check_finds_a_cycle_between_packages():
    modules = _fake(
        hasmap_jax__models__a="from hasmap_jax.weights import loading\n",
        hasmap_jax__weights__b="def f():\n    from hasmap_jax.sensitivity import maps\n",
        hasmap_jax__sensitivity__c="import hasmap_jax.models.koncept\n",
        hasmap_jax__metrics="from hasmap_jax.models import jnd\n",  # into the cycle, not part of it
    )
    assert package_cycles(modules) == [["models", "sensitivity", "weights"]]


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
