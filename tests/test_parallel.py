"""Sharding the attack over devices (8 fake CPU devices) and over processes (jax.distributed)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, *, devices: int, env_extra: dict | None = None, timeout: int = 300) -> dict:
    env = {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        **(env_extra or {}),
    }
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return result(out.stdout)


def result(stdout: str) -> dict:
    """The JSON a subprocess printed on its "RESULT" line (libraries print other lines too)."""
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1][len("RESULT ") :])


SHARDED = """
import json, jax, numpy as np
from conftest import random_images, toy_model
from hasmap_jax.attack import attack_batch
from hasmap_jax.runtime.parallel import data_mesh
assert jax.local_device_count() == 8
x = (random_images(5, 24, 32, seed=7) * 255).round().astype(np.uint8)  # 5 images: padded to 8
model = toy_model(24, 32, seed=1)
alphas = np.array([0.5, 1.0, 2.0, 4.0, 8.0], np.float32)
kw = dict(model=model, steps=40, search_steps=2, sensitivity="default")
sharded = attack_batch(x, alphas, **kw)  # default: all 8 local devices
single = attack_batch(x, alphas, mesh=data_mesh(jax.local_devices()[:1]), **kw)
print("RESULT", json.dumps({
    "same_images": bool((sharded.images == single.images).all()),
    "same_steps": bool((sharded.steps == single.steps).all()),
    "max_score_diff": float(np.abs(sharded.score_after - single.score_after).max()),
    "n": len(sharded), "success": sharded.success.tolist(),
}))
"""


@pytest.mark.subprocess
def test_sharded_over_8_devices_equals_single_device():
    r = _run(SHARDED, devices=8)
    assert r["n"] == 5
    assert r["same_images"] and r["same_steps"]
    assert r["max_score_diff"] < 1e-3
    assert any(r["success"])


WORKER = """
import json, os, sys, jax, numpy as np
pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
from hasmap_jax.runtime import distributed
distributed.initialize(f"localhost:{port}", num_processes=2, process_id=pid)
assert jax.process_count() == 2 and jax.local_device_count() == 2 and jax.device_count() == 4
from conftest import random_images, toy_model
from hasmap_jax.attack import attack_batch
x = (random_images(7, 24, 32, seed=8) * 255).round().astype(np.uint8)
mine = distributed.process_indices(len(x))
r = attack_batch(x[mine], 2.0, model=toy_model(24, 32, seed=1), steps=40)
total = distributed.global_sum(np.array([r.success.sum(), len(r)]))
np.savez(f"{out}/part{pid}.npz", indices=mine, images=r.images, success=r.success)
# To a file, not stdout: Gloo writes its own lines to the same stream, unbuffered, mid-line.
with open(f"{out}/report{pid}.json", "w") as f:
    json.dump({"pid": pid, "total": total.tolist(), "mine": mine.tolist()}, f)
"""


@pytest.mark.subprocess
def test_two_processes_share_the_work(tmp_path):
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(WORKER), str(i), str(port), str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    reports = [json.loads((tmp_path / f"report{i}.json").read_text()) for i in range(2)]
    # Each process took its own share; together they cover the data set once.
    shares = sorted(i for r in reports for i in r["mine"])
    assert shares == list(range(7)) and reports[0]["mine"] != reports[1]["mine"]
    # The cross-process sum agrees on both processes and with the parts they wrote.
    parts = [np.load(tmp_path / f"part{i}.npz") for i in range(2)]
    n_ok = sum(int(p["success"].sum()) for p in parts)
    assert reports[0]["total"] == reports[1]["total"] == [n_ok, 7]
    # And the results equal a single-process run on the whole batch.
    single = _run(
        """
            import json, os, numpy as np
            from conftest import random_images, toy_model
            from hasmap_jax.attack import attack_batch
            x = (random_images(7, 24, 32, seed=8) * 255).round().astype(np.uint8)
            r = attack_batch(x, 2.0, model=toy_model(24, 32, seed=1), steps=40)
            np.save(os.environ["OUT"] + "/single.npy", r.images)
            print("RESULT", json.dumps({"ok": True}))
            """,
        devices=1,
        env_extra={"OUT": str(tmp_path)},
    )
    assert single["ok"]
    whole = np.load(tmp_path / "single.npy")
    for p in parts:
        np.testing.assert_array_equal(p["images"], whole[p["indices"]])
