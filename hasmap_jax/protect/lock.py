"""One output folder, one job: `OUTDIR/.hasmap-lock` names the run that holds the folder.

A run takes the lock before it writes anything and gives it back when it ends. A second run into
the same folder is refused with a message naming the holder (host, pid, start time), unless it is
part of the same `--distributed` job (the lock carries the job's token, which every process of the
job knows). A lock left by a run that was killed is stale and is taken over:

- on the same host, when its pid is no longer running;
- on any host, when its heartbeat is older than `STALE_AFTER_S` (the holder rewrites the lock
  every `HEARTBEAT_S` seconds while it runs).

The lock file is created with `O_CREAT | O_EXCL`, so two runs starting at once cannot both take it;
a stale lock is replaced the same way after it is removed.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from hasmap_jax.protect.settings import UsageError

LOCK_NAME = ".hasmap-lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0


class FolderLocked(UsageError):
    """Another run holds the output folder (nothing was written)."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_lock(path: Path) -> dict[str, Any] | None:
    """The holder's record, or None when there is no lock (an unreadable lock reads as {})."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError:
        return {}
    return rec if isinstance(rec, dict) else {}


def is_stale(rec: dict[str, Any], *, mtime: float, now: float | None = None) -> bool:
    """Whether a lock record belongs to a run that is gone (see the module docstring)."""
    now = time.time() if now is None else now
    if not rec:  # unreadable: a writer killed mid-write, or garbage; only age can tell
        return now - mtime > STALE_AFTER_S
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
        return not _pid_alive(rec["pid"])
    return now - mtime > STALE_AFTER_S


def describe(rec: dict[str, Any]) -> str:
    if not rec:
        return "an unreadable lock"
    job = f", job of {rec['processes']} processes" if rec.get("processes", 1) > 1 else ""
    return f"pid {rec.get('pid')} on {rec.get('host')} (started {rec.get('started')}{job})"


class FolderLock:
    """Holds `OUTDIR/.hasmap-lock` for one run (or one distributed job); a context manager.

    Args:
      outdir: the output folder (created if needed).
      token: the job's token: processes of one `--distributed` job pass the same token, and a lock
        with that token is theirs; a single run leaves it None (a fresh token is made).
      processes: how many processes share the lock (recorded for the message).

    Process 0 of a job takes the lock (`acquire`); the others check that it holds their token (`join`).
    """

    def __init__(self, outdir: str | os.PathLike, *, token: str | None = None, processes: int = 1):
        self.path = Path(outdir) / LOCK_NAME
        self.token = token or os.urandom(8).hex()
        self.processes = processes
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.record = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "token": self.token,
            "processes": processes,
        }

    def acquire(self) -> FolderLock:
        """Takes the lock, replacing a stale one; raises `FolderLocked` naming a live holder, and
        `OSError` where the folder cannot be written (nothing is left behind then)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                rec = read_lock(self.path)
                if rec is None:
                    continue  # released meanwhile: try again
                if rec.get("token") == self.token:
                    return self  # ours (a process of the same job took it)
                try:
                    mtime = self.path.stat().st_mtime
                except FileNotFoundError:
                    continue
                if not is_stale(rec, mtime=mtime):
                    raise FolderLocked(
                        f"{self.path.parent} is in use by another hasmap protect run: {describe(rec)}. "
                        f"Wait for it to finish, use another output folder, or, if that run is gone, "
                        f"remove {self.path}"
                    ) from None
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()  # stale: taken over
                continue
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self.record, f)
            except BaseException:
                # A lock that could not be written (a full disk) must not stay behind: an empty lock
                # file blocks the folder until it is old enough to count as stale.
                with contextlib.suppress(OSError):
                    self.path.unlink()
                raise
            self._beat = threading.Thread(target=self._heartbeat, daemon=True, name="hasmap-lock")
            self._beat.start()
            return self
        raise FolderLocked(f"{self.path}: could not take the lock (it keeps changing); try again")

    def join(self) -> FolderLock:
        """For the other processes of a job: checks that the lock holds this job's token."""
        rec = read_lock(self.path)
        if rec is None or rec.get("token") != self.token:
            holder = "nobody" if rec is None else describe(rec)
            raise FolderLocked(f"{self.path.parent}: the job's lock is not in place (held by {holder})")
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def release(self) -> None:
        """Gives the lock back (only a lock that is still ours is removed)."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
            self._beat = None
            rec = read_lock(self.path)
            if rec is not None and rec.get("token") == self.token and rec.get("pid") == os.getpid():
                with contextlib.suppress(OSError):  # gone already, or the folder turned read-only
                    self.path.unlink()

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
