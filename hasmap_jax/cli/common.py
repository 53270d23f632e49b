"""Argument types and exit statuses shared by the `hasmap` commands."""

from __future__ import annotations

import argparse

#: Exit statuses: everything done; some photos failed or were skipped; a usage error (nothing
#: written); interrupted (Ctrl-C).
EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: `hasmap protect` stopped by a full disk (`hasmap_jax.protect.runner.EXIT_DISK_FULL`), and stopped
#: by SIGTERM (128 + 15, as a shell reports a command the signal ended).
EXIT_DISK_FULL, EXIT_TERMINATED = 3, 143


def jpeg_quality(text: str) -> int:
    """A JPEG quality in 1..100."""
    q = int(text)
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"a JPEG quality in 1..100, got {q}")
    return q


def positive_int(text: str) -> int:
    """An integer of at least 1 ("1e3" accepted)."""
    v = int(float(text))
    if v < 1:
        raise argparse.ArgumentTypeError(f"a positive integer, got {text}")
    return v
