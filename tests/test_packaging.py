"""The package as users install it: every package listed, the default model inside the wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def test_every_package_of_the_tree_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hasmap_jax").rglob("__init__.py")}
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


@pytest.mark.subprocess
def test_wheel_protects_a_photo_from_another_folder_with_the_default_model(tmp_path):
    """A built wheel (not the checkout) carries weights/default: `hasmap protect` works with it."""
    dist, site, work = tmp_path / "dist", tmp_path / "site", tmp_path / "elsewhere"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(dist)], check=True)
    (wheel,) = dist.glob("hasmap_jax-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    work.mkdir()
    photo = (np.random.RandomState(0).rand(64, 80, 3) * 255).astype(np.uint8)
    Image.fromarray(photo).save(work / "photo.png")
    # Only the installed copy and the test environment's dependencies are importable: not the checkout.
    env = {k: v for k, v in os.environ.items() if k not in ("HASMAP_WEIGHTS", "PYTHONPATH")}
    env["PYTHONPATH"] = str(site)
    probe = "import hasmap_jax, hasmap_jax.weights.loading as L; print(hasmap_jax.__file__); print(L.weights_dir())"
    p = subprocess.run([sys.executable, "-c", probe], cwd=work, env=env, capture_output=True, text=True, check=True)
    module, weights = p.stdout.split()
    assert Path(module).is_relative_to(site) and Path(weights).is_relative_to(site), p.stdout
    cmd = [sys.executable, "-m", "hasmap_jax.cli", "protect", "photo.png", "-o", "out", "--steps", "2", "-q"]
    p = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert (work / "out" / "photo.png").is_file(), p.stdout + p.stderr
