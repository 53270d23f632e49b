"""The progress bar of `hasmap protect` and `hasmap evaluate`: rich.progress on standard error.

The bar shows the photos done out of the total, the library's note (e.g. "batch 2/5, step 40/100"),
the time elapsed and an estimate of the time left. It is drawn only on a terminal and not with -q;
`message` lines are printed either way (above the bar while it is drawn).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class PhotoProgress:
    """The `progress(done, total, note)` callback of `protect_paths` / `evaluate`, drawn by rich."""

    def __init__(self, progress: Progress, label: str):
        self.progress = progress
        self.task = progress.add_task(label, total=None, note="")

    def __call__(self, done: float, total: int, note: str = "") -> None:
        """`done` may be fractional: a batch in progress moves the bar by its steps."""
        self.progress.update(self.task, completed=done, total=total, note=note)

    def message(self, text: str) -> None:
        """Prints a line on standard error (above the bar while it is drawn)."""
        self.progress.console.print(text, markup=False, highlight=False, emoji=False, soft_wrap=True)


@contextlib.contextmanager
def photo_progress(label: str, *, quiet: bool = False) -> Iterator[PhotoProgress]:
    """A progress bar labelled `label` on standard error, for the duration of the `with` block."""
    console = Console(stderr=True)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[note]}", markup=False),
    )
    with Progress(*columns, console=console, disable=quiet or not console.is_terminal) as progress:
        yield PhotoProgress(progress, label)
