"""`hasmap protect` as a job of several processes: shares, manifest parts, resuming, the folder lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_protect import H, W, save_photo, settings, sized_toy

from hasmap_jax.protect import FolderLocked, Manifest, ProtectSettings, RunOptions, protect_paths
from hasmap_jax.protect.lock import LOCK_NAME, FolderLock
from hasmap_jax.protect.manifest import MANIFEST_NAME, manifest_files, part_name
from hasmap_jax.protect.runner import _batches, _deal
from hasmap_jax.runtime.distributed import Team

ROOT = Path(__file__).resolve().parent.parent


class ThreadTeam(Team):
    """A job of `count` processes played by threads of this process (collectives over a barrier)."""

    def __init__(self, index: int, count: int, shared: dict):
        super().__init__(index, count)
        self.shared = shared

    def allgather(self, values):
        values = np.asarray(values)
        box = self.shared.setdefault("box", [None] * self.count)
        self.shared["barrier"].wait()
        box[self.index] = values
        self.shared["barrier"].wait()
        out = np.stack(box)
        self.shared["barrier"].wait()
        return out

    def barrier(self, name: str) -> None:
        self.shared["barrier"].wait()


def run_as_threads(count: int, fn):
    """fn(team) on `count` threads, one team member each; returns their results in order."""
    shared = {"barrier": threading.Barrier(count, timeout=300)}
    results: list = [None] * count
    errors: list = []

    def body(i):
        try:
            results[i] = fn(ThreadTeam(i, count, shared))
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller)
            errors.append(e)
            shared["barrier"].abort()

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def mixed_folder(root: Path, n_small: int = 5, n_large: int = 3) -> None:
    for i in range(n_small):
        save_photo(root / f"s{i}.png", seed=i)
    for i in range(n_large):
        save_photo(root / "big" / f"l{i}.png", h=H + 8, w=W + 16, seed=100 + i)


def written(outdir: Path) -> dict[str, list[Path]]:
    """Output name -> the manifest files that record it as written ("ok")."""
    seen: dict[str, list[Path]] = {}
    for f in manifest_files(outdir):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if rec.get("type") == "file" and rec.get("status") == "ok":
                seen.setdefault(rec["output"], []).append(f)
    return seen


def pixels(outdir: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(outdir).as_posix(): np.asarray(Image.open(p)) for p in sorted(outdir.rglob("*.png"))}


# --------------------------------------------------------------------------------------------
# The deal


def test_batches_are_dealt_whole_and_balanced():
    sizes = {i: (32, 40) for i in range(10)} | {i: (40, 56) for i in range(10, 13)}
    batches = _batches(sizes, 4)
    assert [(s, len(idx), rows) for s, idx, rows in batches] == [
        ((32, 40), 4, 4),
        ((32, 40), 4, 4),
        ((32, 40), 2, 4),
        ((40, 56), 3, 3),
    ]
    _, owners = _deal(batches, 2)
    assert owners == [0, 1, 0, 1]  # photos per process: 6 and 7
    _, owners3 = _deal(batches, 3)
    assert owners3 == [0, 1, 2, 2]
    assert _deal(batches, 1)[1] == [0, 0, 0, 0]


# --------------------------------------------------------------------------------------------
# The manifest in parts


def test_manifest_parts_read_as_one_and_generations_order_sections(tmp_path):
    s1, s2 = settings().to_json(), settings(steps=3).to_json()
    a = Manifest(tmp_path / MANIFEST_NAME, write_to=tmp_path / part_name(0, 2))
    b = Manifest(tmp_path / MANIFEST_NAME, write_to=tmp_path / part_name(1, 2))
    a.start(s1, force=False)
    b.start(s1, force=False)
    a.append({"type": "file", "status": "ok", "output": "x.png", "time": "1"})
    b.append({"type": "file", "status": "ok", "output": "y.png", "time": "1"})
    merged = Manifest(tmp_path / MANIFEST_NAME)
    assert merged.settings == s1 and set(merged.files) == {"x.png", "y.png"} and merged.generation == 0
    # a single-process rerun with the same settings resumes from both parts and adds its own file
    merged.start(s1, force=False)
    assert (tmp_path / MANIFEST_NAME).is_file() and set(merged.files) == {"x.png", "y.png"}
    # forced new settings: a new generation; the parts' records no longer count for resuming
    forced = Manifest(tmp_path / MANIFEST_NAME, write_to=tmp_path / part_name(2, 3))
    forced.start(s2, force=True)
    again = Manifest(tmp_path / MANIFEST_NAME)
    assert again.generation == 1 and again.settings == s2 and again.files == {}
    assert again.owned == {"x.png", "y.png"}  # still this tool's outputs to replace


def test_legacy_manifest_sections_count_up(tmp_path):
    p = tmp_path / MANIFEST_NAME
    s1, s2 = settings().to_json(), settings(steps=3).to_json()
    lines = [
        {"type": "settings", "version": 1, "settings": s1},
        {"type": "file", "status": "ok", "output": "a.png"},
        {"type": "settings", "version": 1, "settings": s2},
        {"type": "file", "status": "ok", "output": "b.png"},
    ]
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    m = Manifest(p)
    assert m.generation == 1 and m.settings == s2 and set(m.files) == {"b.png"} and m.owned == {"a.png", "b.png"}


# --------------------------------------------------------------------------------------------
# The folder lock


def test_lock_refuses_a_second_run_and_names_the_holder(tmp_path):
    with FolderLock(tmp_path):
        with pytest.raises(FolderLocked, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            FolderLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_NAME).exists()
    with FolderLock(tmp_path):  # free again
        pass


def test_a_stale_lock_is_taken_over(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    rec = {"host": socket.gethostname(), "pid": int(dead.stdout), "started": "then", "token": "old", "processes": 1}
    (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    with FolderLock(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_NAME).read_text())["token"] == lock.token
    # another host's lock: stale only when its heartbeat is old
    rec.update(host="elsewhere", pid=1)
    (tmp_path / LOCK_NAME).write_text(json.dumps(rec))
    with pytest.raises(FolderLocked, match="elsewhere"):
        FolderLock(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(tmp_path / LOCK_NAME, (old, old))
    with FolderLock(tmp_path):
        pass


def test_processes_of_one_job_share_the_lock(tmp_path):
    lead = FolderLock(tmp_path, token="job1", processes=2).acquire()
    FolderLock(tmp_path, token="job1", processes=2).join()
    with pytest.raises(FolderLocked):
        FolderLock(tmp_path, token="job2").join()
    lead.release()


# --------------------------------------------------------------------------------------------
# Jobs played by threads (the collectives of `Team`, without jax.distributed)


def test_two_member_job_equals_a_single_run_and_records_each_photo_once(tmp_path):
    src = tmp_path / "in"
    mixed_folder(src)
    save_photo(src / "tiny.png", h=8, w=8)  # skipped: too small
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    model = sized_toy()
    single = protect_paths([src], tmp_path / "one", settings=settings(), model=model, run=RunOptions(batch_size=2))
    summaries = run_as_threads(
        2,
        lambda team: protect_paths(
            [src], tmp_path / "two", settings=settings(), model=model, run=RunOptions(batch_size=2, team=team)
        ),
    )
    rec = written(tmp_path / "two")
    assert sorted(rec) == sorted(written(tmp_path / "one")) and len(rec) == 8
    assert all(len(v) == 1 for v in rec.values()), rec
    assert {f.name for v in rec.values() for f in v} == {part_name(0, 2), part_name(1, 2)}  # both worked
    one, two = pixels(tmp_path / "one"), pixels(tmp_path / "two")
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    for s in summaries:  # every member reports the job's totals and status
        assert s.job_totals == single.totals() | {"interrupted": 0}
        assert s.exit_code == single.exit_code == 1  # the broken and the tiny file
    assert not (tmp_path / "two" / LOCK_NAME).exists()


def test_rerun_with_another_process_count_redoes_nothing(tmp_path):
    src = tmp_path / "in"
    mixed_folder(src, n_small=4, n_large=2)
    model = sized_toy()
    out = tmp_path / "out"
    run_as_threads(
        2,
        lambda team: protect_paths(
            [src], out, settings=settings(), model=model, run=RunOptions(batch_size=2, team=team)
        ),
    )
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    save_photo(src / "new.png", seed=77)
    res = run_as_threads(
        3,
        lambda team: protect_paths(
            [src], out, settings=settings(), model=model, run=RunOptions(batch_size=2, team=team)
        ),
    )
    t = res[0].job_totals
    assert t["done"] == 6 and t["ok"] == 1 and t["inputs"] == 7
    assert all(p.stat().st_mtime_ns == m for p, m in before.items())  # finished photos untouched
    assert len(written(out)) == 7 and all(len(v) == 1 for v in written(out).values())
    single = protect_paths([src], out, settings=settings(), model=model, run=RunOptions(batch_size=2))
    assert single.count("done") == 7
    with pytest.raises(Exception, match="other settings"):
        run_as_threads(
            2,
            lambda team: protect_paths([src], out, settings=settings(steps=1), model=model, run=RunOptions(team=team)),
        )


# --------------------------------------------------------------------------------------------
# Two real processes (jax.distributed, 2 fake CPU devices each), started by hand


JOB = """
import sys
sys.path.insert(0, {tests!r})
import hasmap_jax.weights.loading


def toy(name="default"):
    from test_protect import sized_toy  # imported late: its conftest touches JAX, after the job is joined

    return sized_toy()


hasmap_jax.weights.loading.load_quality_model = toy
from hasmap_jax.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _hasmap(args, env, **kw):
    return subprocess.Popen(
        [sys.executable, "-c", JOB.format(tests=str(ROOT / "tests")), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


@pytest.mark.subprocess
def test_two_processes_started_by_hand_protect_a_folder(tmp_path):
    src = tmp_path / "in"
    mixed_folder(src)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
        "HASMAP_CACHE_DIR": str(tmp_path / "cache"),
    }
    common = ["protect", str(src), "--steps", "5", "--batch-size", "2", "-q"]
    ref = _hasmap([*common, "-o", str(tmp_path / "one")], env)
    out_ref = ref.communicate(timeout=600)
    assert ref.returncode == 0, out_ref[1][-3000:]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    job = [*common, "-o", str(tmp_path / "two"), "--distributed", "--coordinator", f"127.0.0.1:{port}"]
    procs = [_hasmap([*job, "--num-processes", "2", "--process-id", str(i)], env) for i in range(2)]
    # A separate run into the folder while the job holds it is refused, naming the holder.
    deadline = time.monotonic() + 300
    while not (tmp_path / "two" / LOCK_NAME).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    intruder = _hasmap([*common, "-o", str(tmp_path / "two")], env)
    _, intruder_err = intruder.communicate(timeout=600)
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert intruder.returncode == 2 and "in use by another hasmap protect run" in intruder_err, intruder_err
    assert "pid" in intruder_err and "job of 2 processes" in intruder_err
    assert "8 input(s): 8 protected now" in outs[0][0] and "(2 processes)" in outs[0][0]
    assert "input(s)" not in outs[1][0]  # process 1 prints no summary of its own (Gloo prints its own lines)
    rec = written(tmp_path / "two")
    assert len(rec) == 8 and all(len(v) == 1 for v in rec.values())
    one, two = pixels(tmp_path / "one"), pixels(tmp_path / "two")
    assert one.keys() == two.keys() and all(np.array_equal(one[k], two[k]) for k in one)
    assert not (tmp_path / "two" / LOCK_NAME).exists()
    # `hasmap evaluate` reads the split manifest as a single one (its settings, its outputs)
    from hasmap_jax.evaluation import manifest_settings

    assert manifest_settings(tmp_path / "two")["steps"] == 5


def test_files_from_keeps_relative_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_photo(tmp_path / "a" / "b" / "p.png")
    save_photo(tmp_path / "q.png", seed=3)
    (tmp_path / "list.txt").write_text("a/b/p.png\n\n" + str(tmp_path / "q.png") + "\n")
    listed = ["a/b/p.png", str(tmp_path / "q.png")]
    s = protect_paths([], tmp_path / "out", settings=settings(), model=sized_toy(), listed=listed)
    assert s.count("ok") == 2
    assert (tmp_path / "out" / "a" / "b" / "p.png").is_file() and (tmp_path / "out" / "q.png").is_file()
    assert ProtectSettings  # the settings type is the public one


def test_one_member_interrupted_then_a_rerun_with_three_redoes_nothing_finished(tmp_path):
    src = tmp_path / "in"
    mixed_folder(src)
    model = sized_toy()
    out = tmp_path / "out"

    def member(team):
        def stop_after_first(r):
            if team.index == 1 and r.status == "ok":
                raise KeyboardInterrupt

        return protect_paths(
            [src],
            out,
            settings=settings(),
            model=model,
            on_result=stop_after_first,
            run=RunOptions(batch_size=2, team=team),
        )

    with pytest.raises((KeyboardInterrupt, threading.BrokenBarrierError)):
        run_as_threads(2, member)
    finished = written(out)
    assert 0 < len(finished) < 8 and all(len(v) == 1 for v in finished.values())
    mtimes = {name: (out / name).stat().st_mtime_ns for name in finished}
    (out / LOCK_NAME).unlink(missing_ok=True)  # a killed job's lock; this process's pid is alive, so not stale
    res = run_as_threads(
        3,
        lambda team: protect_paths(
            [src], out, settings=settings(), model=model, run=RunOptions(batch_size=2, team=team)
        ),
    )
    t = res[0].job_totals
    assert t["done"] == len(finished) and t["ok"] == 8 - len(finished) and t["failed"] == 0
    assert all((out / name).stat().st_mtime_ns == m for name, m in mtimes.items())
    assert len(written(out)) == 8 and all(len(v) == 1 for v in written(out).values())


def test_cli_files_from_and_job_options(tmp_path, monkeypatch, capsys):
    import hasmap_jax.weights.loading as loading
    from hasmap_jax.cli import main

    monkeypatch.setattr(loading, "load_quality_model", lambda name="default": sized_toy())
    monkeypatch.chdir(tmp_path)
    save_photo(tmp_path / "a" / "p.png")
    (tmp_path / "list.txt").write_text("a/p.png\n")
    assert main(["protect", "--files-from", "list.txt", "-o", "out", "--steps", "3", "-q"]) == 0
    assert (tmp_path / "out" / "a" / "p.png").is_file()
    assert main(["protect", "-o", "out2"]) == 2 and "no inputs" in capsys.readouterr().err
    assert main(["protect", "a", "-o", "o", "--coordinator", "h:1"]) == 2
    assert "go with --distributed" in capsys.readouterr().err
    assert main(["protect", "a", "-o", "o", "--distributed", "--num-processes", "2"]) == 2
    assert "or none" in capsys.readouterr().err
