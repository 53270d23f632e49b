"""How much memory protecting photos takes, and how many photos of a size one batch may hold.

The peak resident memory of `hasmap protect` (default model and settings, CPU) is close to a
straight line in the pixels of the batch being attacked (benchmarks/protect_memory.py; raw output
in benchmarks/results/cpu_protect_memory.txt):

    peak = PROCESS_BYTES + PIXEL_BYTES * (pixels of the photos in the batch)

`PROCESS_BYTES` is the process itself (the runtime, the model, compiling); `PIXEL_BYTES` is what
each pixel of a photo in the batch costs (the attack's float32 copies of the photo, the
perturbation, Adam's moments, the sensitivity map, the JPEG round trip's planes, the metrics).
The runner fills a batch only as far as a memory budget allows (`photos_per_batch`): the default
budget is `DEFAULT_FRACTION` of the memory this process can have when the run starts (what it
holds plus what the machine has available, within a cgroup limit), or `hasmap protect --memory`.
A photo that does not fit the budget alone runs alone; one whose estimate is above all the memory
the process can have (`limits`) fails with a message before it is attacked, rather than running
the machine out of memory.

The figures are measured on the CPU, for the default `--robust jpeg90` and for `--robust web`, which
draws several views per step and costs about twice as much per pixel. On an accelerator the same
figures are applied to the device's memory as well (not measured there).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax

# The figures below are read off benchmarks/results/cpu_protect_memory.txt (and
# cpu_protect_four_39mp.txt: two 39 MP photos per batch), chosen so that every estimate is at or
# above the peak measured there, alone and two per batch, not on the fitted line.

#: The process at its peak without a photo's share (runtime, model, compiled programs), in bytes,
#: default settings (`--robust jpeg90`).
PROCESS_BYTES = int(0.9 * 2**30)
#: Peak bytes per pixel of a photo in the batch, default settings.
PIXEL_BYTES = 210
#: The same two for `--robust web`.
PROCESS_BYTES_WEB = int(1.3 * 2**30)
PIXEL_BYTES_WEB = 450
#: The share of the memory available at the start that a run's batches may fill by default.
DEFAULT_FRACTION = 0.8

_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def figures(robust: str = "jpeg90") -> tuple[int, int]:
    """(process bytes, bytes per pixel in the batch) for an `--robust` choice ("off" needs less than
    "jpeg90" and is given its figures)."""
    return (PROCESS_BYTES_WEB, PIXEL_BYTES_WEB) if robust == "web" else (PROCESS_BYTES, PIXEL_BYTES)


def batch_bytes(size: tuple[int, int], photos: int, *, robust: str = "jpeg90") -> int:
    """The estimated peak of a process attacking `photos` photos of `size` (height, width) at once."""
    process, per_pixel = figures(robust)
    return process + photos * size[0] * size[1] * per_pixel


def photos_per_batch(size: tuple[int, int], budget: int, *, robust: str = "jpeg90") -> int:
    """How many photos of `size` (height, width) one batch may hold within `budget` bytes (0 when
    not even one fits)."""
    process, per_pixel = figures(robust)
    return max(0, (budget - process) // max(1, size[0] * size[1] * per_pixel))


def parse_size(text: str) -> int:
    """Bytes from "8G", "8GB", "8GiB", "512M", "1.5g" or a plain byte count (units are powers of 1024).

    Raises:
      ValueError: not a size.
    """
    m = re.fullmatch(r"(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])(?:i?b)?|b)?", text.strip().lower())
    if not m:
        raise ValueError(f"not a memory size: {text!r} (e.g. 8G, 512M, 1.5G)")
    value = float(m.group(1)) * _UNITS[m.group(2) or ""]
    if value < 1:
        raise ValueError(f"a memory size must be positive, got {text!r}")
    return int(value)


def format_size(n: int) -> str:
    """`n` bytes for people: "6.6 GB" (GiB, written GB as most people read it)."""
    return f"{n / 2**30:.1f} GB"


def _meminfo(key: str) -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_room() -> int | None:
    """What the cgroup (v2) this process runs in still allows, or None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        return max(0, int(limit) - used)
    except (OSError, ValueError):
        return None


def resident_bytes() -> int:
    """This process's resident memory now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def available_bytes() -> int | None:
    """Memory the machine can still give this process: MemAvailable (else the physical memory),
    within the cgroup limit; None where neither can be read."""
    free = _meminfo("MemAvailable")
    if free is None:
        try:
            free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            free = None
    room = _cgroup_room()
    if room is not None:
        free = room if free is None else min(free, room)
    return free


def _device_bytes() -> int | None:
    """The accelerator's memory (the first device's `bytes_limit`), or None on the CPU."""
    dev = jax.local_devices()[0]
    if dev.platform == "cpu":
        return None
    try:
        return (dev.memory_stats() or {}).get("bytes_limit")
    except Exception:  # some backends raise instead of returning None
        return None


def limits(memory: int | None = None) -> tuple[int | None, int | None]:
    """(budget, ceiling) in bytes for this process's batches: batches are filled up to `budget`,
    and a photo whose estimate alone is above `ceiling` is not attacked. None: unknown (no limit).

    Args:
      memory: the budget (`--memory`); None: `DEFAULT_FRACTION` of what this process can have now
        (what it holds plus what is available). The ceiling is the larger of the budget and all
        the process can have; on an accelerator both are also kept within the device's memory.
    """
    free = available_bytes()
    whole = None if free is None else resident_bytes() + free
    if memory is not None:
        budget, ceiling = memory, (memory if whole is None else max(memory, whole))
    else:
        budget, ceiling = (None, None) if whole is None else (int(DEFAULT_FRACTION * whole), whole)
    device = _device_bytes()
    if device is not None:
        budget = device if budget is None else min(budget, device)
        ceiling = device if ceiling is None else min(ceiling, device)
    return budget, ceiling
