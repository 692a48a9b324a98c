"""Keeping the executor's memory to itself."""

from __future__ import annotations

import sys

_PR_SET_DUMPABLE = 4


def make_undumpable() -> bool:
    """Mark this process non-dumpable (Linux); False where that is not possible.

    The executor holds its token in memory for as long as it runs, and without this any
    process of the same user (its own tasks, when they run as the executor's user) could
    read it: through /proc/<pid>/mem or ptrace, or /proc/<pid>/environ and the other
    /proc files of the process. The kernel gives those files of a non-dumpable process to
    root and refuses ptrace to anyone without CAP_SYS_PTRACE.

    Children inherit the flag through fork but lose it at exec, so attempts (a supervisor
    and the task, each started by an exec) are dumpable again: their debuggers, profilers
    and own /proc files work as usual. Core dumps of the executor are off as a result.
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
