"""JAX's persistent compilation cache for the command line: a second run compiles nothing it has
compiled before (same program, same jax/jaxlib, same backend)."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def default_dir() -> Path:
    """$HASMAP_CACHE_DIR, else $XDG_CACHE_HOME/hasmap_jax/xla, else ~/.cache/hasmap_jax/xla."""
    if os.environ.get("HASMAP_CACHE_DIR"):
        return Path(os.environ["HASMAP_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hasmap_jax" / "xla"


def enable(path: str | os.PathLike | None = None) -> Path | None:
    """Turns the cache on at `path` (default: `default_dir()`); returns it, or None where the
    folder cannot be made (the run then compiles as usual)."""
    path = Path(path) if path is not None else default_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Every program is worth keeping: the attack's steps compile in seconds but run for hours in sum.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def add_argument(parser) -> None:
    """`--no-compile-cache` on a command-line parser."""
    parser.add_argument(
        "--no-compile-cache",
        action="store_true",
        help=f"do not keep compiled programs across runs (default: kept in {default_dir()}, or $HASMAP_CACHE_DIR)",
    )


def from_args(args) -> Path | None:
    """Enables the cache unless the parsed arguments say --no-compile-cache."""
    return None if getattr(args, "no_compile_cache", False) else enable()
