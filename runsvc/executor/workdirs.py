"""Attempt directories under an executor's work root, and the ones dead executors left.

Each attempt directory holds a `.owner` file that its executor keeps open with an
exclusive `flock` while the attempt lasts. The kernel drops that lock when the process
dies however it dies (SIGKILL included), so a directory whose lock can be taken belongs to
nobody: its executor is gone and (tasks die with their executor) so are its processes.
Executors sharing a work root therefore never remove each other's live directories, and a
pid recorded in a file, which the kernel may hand to another process, is never trusted.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

_OWNER = ".owner"


class AttemptDirectory:
    """An attempt's directory, locked as this process's until `release()`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # A task (possibly another user's) passes through to its work directory inside,
        # but may not list the owner file and the log spool beside it.
        path.mkdir(parents=True, mode=0o711)
        self._fd: int | None = os.open(path / _OWNER, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def release(self, *, remove: bool) -> None:
        """Give the directory up, removing it first when `remove` (while still locked, so
        that a sweep never sees it half removed and unowned)."""
        if self._fd is None:
            return
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            # Kept for inspection: without an owner file no sweep takes it.
            (self.path / _OWNER).unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def sweep_abandoned(root: Path) -> list[Path]:
    """Remove the attempt directories under `root` whose owner is gone; return them.
    Directories without an owner file (kept on purpose with `keep_work_dirs`, or not
    ours) are left alone."""
    removed = []
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        owner = path / _OWNER
        if not owner.is_file():
            continue
        try:
            fd = os.open(owner, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue  # removed meanwhile by its owner
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live executor's attempt
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
    return removed
