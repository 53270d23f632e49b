"""Machine and software description that every benchmark prints before its numbers."""

from __future__ import annotations

import os
import platform
import resource
import sys
from typing import Any


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports `ru_maxrss` in KiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def describe_machine() -> dict[str, Any]:
    """Versions, backend, devices, CPU and memory of this process's machine, JSON-serialisable."""
    import flax
    import jax
    import jaxlib

    devices = jax.devices()
    dev = devices[0]
    try:
        stats = dev.memory_stats() or {}
    except Exception:  # Some backends raise instead of returning None.
        stats = {}
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(("XLA_", "JAX_", "TF_CPP", "CUDA_VISIBLE"))}
    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "backend": jax.default_backend(),
        "device_kind": dev.device_kind,
        "device_count": jax.device_count(),
        "local_device_count": jax.local_device_count(),
        "process_count": jax.process_count(),
        "device_memory_limit_bytes": stats.get("bytes_limit"),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores,
        "host_memory_bytes": _mem_total_bytes(),
        "os": f"{platform.system()} {platform.release()}",
        # Other work on the host skews CPU timings; the 1-minute load average at start shows it.
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "default_matmul_precision": str(getattr(jax.config, "jax_default_matmul_precision", "n/a")),
        "environment": env,
    }


def _gib(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.1f} GiB"


def format_machine(m: dict[str, Any]) -> str:
    """Human-readable lines for `describe_machine()`'s result."""
    load = m["load_average_1min"]
    lines = [
        f"software : python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, flax {m['flax']}",
        f"backend  : {m['backend']}, {m['device_count']} x {m['device_kind']}"
        f" ({m['process_count']} process(es)); device memory limit {_gib(m['device_memory_limit_bytes'])}",
        f"host     : {m['cpu_model']}, {m['cpu_cores']} cores ({m['cpu_cores_usable']} usable),"
        f" {_gib(m['host_memory_bytes'])} RAM, {m['os']}, load average {'n/a' if load is None else f'{load:.2f}'}",
        f"precision: jax_default_matmul_precision={m['default_matmul_precision']}",
    ]
    if m["environment"]:
        lines.append("env      : " + " ".join(f"{k}={v}" for k, v in m["environment"].items()))
    return "\n".join(lines)
