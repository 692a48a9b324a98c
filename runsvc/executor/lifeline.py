"""Tasks die with their executor.

An attempt runs in a session of its own, so stopping it can end the whole process group;
but when the executor itself dies (SIGKILL, OOM, a crash) nobody ends that group, and the
attempt keeps running while the service, seeing the lease expire, starts it again
elsewhere: the same task twice at once. So the direct child of the executor is a small
supervisor (`SUPERVISOR`, run by this Python with `-I -S`, nothing imported but the
standard library) that holds the read end of a pipe whose write end only the executor
holds. The kernel closes that end when the executor dies, however it dies; the supervisor
sees end-of-file and ends its group: SIGTERM, then SIGKILL after the grace period.

While the executor lives the supervisor is invisible: it leads the session, starts the
task in it, survives the SIGTERM a stop sends the group (the task gets it and decides),
and exits as the task did (the same exit code, or the same signal), so results read
exactly as before.

When tasks run as another user (`runsvc.executor.taskuser`), the supervisor stays the
executor's user, so that it can always end the group, and switches to the task's user
(groups, group, user, in that order: each needs the privilege the next one drops) in the
child it forks, just before executing the task. The supervisor gets only the task's
environment, as the task does: it is the task's parent, whose /proc/<pid>/environ a task
may read.
"""

from __future__ import annotations

import os
import sys
from typing import Final

from runsvc.executor.taskuser import TaskUser

SUPERVISOR: Final = r"""
import os, signal, sys, threading, time

lifeline, grace, ids, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4:]
for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(number, lambda *_: None)  # handlers, unlike SIG_IGN, reset on exec

pid = os.fork()
if pid == 0:
    os.close(lifeline)
    try:
        if ids != "-":
            uid, gid, groups = ids.split(":")
            os.setgroups([int(group) for group in groups.split(",") if group])
            os.setgid(int(gid))
            os.setuid(int(uid))
        os.execvp(argv[0], argv)
    except OSError as error:
        os.write(2, f"cannot start {argv[0]}: {error}\n".encode())
        os._exit(127)

def orphaned():
    while os.read(lifeline, 1024):
        pass
    os.killpg(0, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    os.killpg(0, signal.SIGKILL)

threading.Thread(target=orphaned, daemon=True).start()
_, status = os.waitpid(pid, 0)
if os.WIFSIGNALED(status):
    number = os.WTERMSIG(status)
    signal.signal(number, signal.SIG_DFL)
    os.kill(os.getpid(), number)
    os._exit(128 + number)
os._exit(os.WEXITSTATUS(status))
"""


def supervised(
    argv: list[str], lifeline: int, grace_s: float, user: TaskUser | None = None
) -> list[str]:
    """The argv that runs `argv` under the supervisor, watching pipe end `lifeline`; as
    `user` when given."""
    ids = "-" if user is None else f"{user.uid}:{user.gid}:{','.join(map(str, user.groups))}"
    return [sys.executable, "-I", "-S", "-c", SUPERVISOR, str(lifeline), str(grace_s), ids, *argv]


def lifeline() -> tuple[int, int]:
    """A pipe (read end for the supervisor, write end kept by the executor). Both ends are
    close-on-exec: only the supervisor it is passed to gets the read end."""
    return os.pipe()
