"""Embedded servers never outlive their owner.

The embedded PostgreSQL and SeaweedFS run in sessions of their own, so that closing the
owner's terminal (SIGHUP) or signalling its process group (a terminal's Ctrl-C, systemd's
stop) reaches the owner alone, which then shuts down in order: stop taking work, drain,
close its pools, and only then stop the servers. But an owner that dies without shutting
down (SIGKILL, the OOM killer, a crash) would leave them running for ever, holding the
data directory and its ports.

So whoever starts a server also starts its warden: a small process (this Python with
`-I -S`, nothing imported but the standard library) in a session of its own, deaf to
SIGHUP, SIGINT and SIGTERM, holding the read end of a pipe whose write end only the owner
holds. The kernel closes that end when the owner dies, however it dies; the warden sees
end-of-file and stops the server with a signal (SIGKILL if it does not end in time). An
owner that stops its server itself first tells the warden to stand down, so a warden
cannot stop a server a later owner started on the same data directory.

Each server also records its owner (pid and start time, which together name one process
for ever) beside its data, so a later start can tell a server whose owner still runs (to
attach to and leave alone) from one whose owner is gone (to adopt: owned, and stopped,
from then on).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

STAND_DOWN: Final = b"stand down\n"

WARDEN: Final = r"""
import json, os, signal, sys, time

for number in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
    signal.signal(number, signal.SIG_IGN)
pid, started, number, grace = json.loads(sys.argv[1])
heard = b""
while True:
    chunk = os.read(0, 1024)
    if not chunk:
        break
    heard += chunk
if heard.endswith(b"stand down\n"):
    sys.exit(0)

def same_process():
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[19] == started
    except (OSError, IndexError):
        return False

if same_process():
    os.kill(pid, number)
    deadline = time.monotonic() + grace
    while same_process() and time.monotonic() < deadline:
        time.sleep(0.05)
    if same_process():
        os.kill(pid, signal.SIGKILL)
"""


class Warden:
    """The owner's side of a warden: `stand_down()` once the server is stopped."""

    def __init__(self, write_end: int, process: subprocess.Popen[bytes]) -> None:
        self._write_end: int | None = write_end
        self.process = process

    def stand_down(self) -> None:
        """The owner stopped the server itself: the warden leaves without touching it."""
        if self._write_end is None:
            return
        try:
            os.write(self._write_end, STAND_DOWN)
        finally:
            os.close(self._write_end)
            self._write_end = None
        self.process.wait(timeout=30)


def watch_over(pid: int, *, stop_signal: int = signal.SIGTERM, grace_s: float = 10.0) -> Warden:
    """Start a warden that, when this process dies, sends `stop_signal` to process `pid`
    (the server) and SIGKILL if it still runs `grace_s` later. A signal, rather than the
    server's own stop command: that may need to reach the data directory as the server's
    user, and a directory above it may have closed since (pytest makes its temporary
    root private again whenever a session starts)."""
    spec = [pid, start_time(pid), int(stop_signal), grace_s]
    read_end, write_end = os.pipe()  # not inheritable: the servers must not hold it
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WARDEN, json.dumps(spec)],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    return Warden(write_end, process)


def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None when there is none:
    with the pid, it names one process however pids are reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def record_owner(path: Path) -> None:
    """Write this process as the owner of the server whose record is `path`."""
    owner = {"pid": os.getpid(), "started": start_time(os.getpid())}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(owner))
    temporary.replace(path)


def owner_alive(path: Path) -> bool:
    """Whether the owner recorded at `path` still runs (False without a record)."""
    try:
        owner = json.loads(path.read_text())
        pid, started = int(owner["pid"]), owner["started"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return started is not None and start_time(pid) == started
