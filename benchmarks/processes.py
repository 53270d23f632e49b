"""`hasmap protect` as 1 process and as a job of N processes on this machine: wall time per run.

Runs the README's main job (`hasmap protect INPUT -o OUT`, the shipped default model and presets)
once as a single process and once as N processes started by hand on this machine
(`--distributed --coordinator 127.0.0.1:PORT --num-processes N --process-id I`), each into a fresh
output folder, with a fresh compilation cache each time, so both runs include start-up and
compilation as a user's first run would. Prints the wall time of each run (until every process has
exited), photos per minute, and the machine. On a machine with fewer cores than processes x the
threads XLA wants, the processes share the cores: this measures the job machinery's cost and the
overlap it buys, not a pod's scaling.

    python benchmarks/processes.py --processes 2 --steps 10
    python benchmarks/processes.py --inputs examples --processes 2 --steps 100 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe_machine, format_machine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def run_job(inputs: str, out: Path, processes: int, extra: list[str], env: dict[str, str]) -> float:
    cmd = [sys.executable, "-m", "hasmap_jax.cli", "protect", inputs, "-o", str(out), "-q", *extra]
    t0 = time.perf_counter()
    if processes == 1:
        procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        job = [*cmd, "--distributed", "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(processes)]
        procs = [
            subprocess.Popen(
                [*job, "--process-id", str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
            for i in range(processes)
        ]
    outs = [p.communicate() for p in procs]
    wall = time.perf_counter() - t0
    for p, (o, e) in zip(procs, outs, strict=True):
        if p.returncode not in (0, 1):
            raise SystemExit(f"run failed ({p.returncode}):\n{o}\n{e[-3000:]}")
    print(outs[0][0].strip())
    return wall


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inputs", default=str(ROOT / "examples"))
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--json")
    args = p.parse_args(argv)
    machine = describe_machine()
    print(format_machine(machine))
    n = len([f for f in Path(args.inputs).rglob("*") if f.suffix.lower() in (".png", ".jpg", ".jpeg")])
    extra = ["--steps", str(args.steps), "--batch-size", str(args.batch_size)]
    print(f"settings : {n} photo(s) from {args.inputs}, --steps {args.steps}, --batch-size {args.batch_size}, "
          f"default model and preset; fresh output folder and compilation cache per run")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in (1, args.processes):
            env = {**os.environ, "JAX_PLATFORMS": "cpu", "HASMAP_CACHE_DIR": f"{tmp}/cache{k}"}
            wall = run_job(args.inputs, Path(tmp) / f"out{k}", k, extra, env)
            rows.append({"processes": k, "wall_s": wall, "photos_per_min": 60 * n / wall})
            print(f"{k} process(es): {wall:.1f} s wall, {60 * n / wall:.2f} photos/min")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
