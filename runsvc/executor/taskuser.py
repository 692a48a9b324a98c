"""The unprivileged user an executor running as root runs its tasks as.

A task running as root can read every file (the service's admin token, the executor's
token file and configuration) and every process's memory; running as the executor's
user, root or not, it can read that user's files. So an executor running as root runs its
tasks as another user (`nobody` unless configured): it gives each attempt's work
directory to that user, keeps its own files from it, and the attempt's supervisor
switches to it just before it executes the task. An executor that is not root runs tasks
as itself: it cannot switch users.

The checks of what that user can reach read the mode bits of the files and directories;
access control lists are not looked at.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

DEFAULT_FOR_ROOT = "nobody"
WORK_ROOT_MODE = 0o711  # the task user may pass through, not list


class TaskUserError(Exception):
    """A task user that cannot be used; the message says why."""


@dataclass(frozen=True)
class TaskUser:
    """A user (and its groups) that tasks run as."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: str
    shell: str

    def identity(self) -> dict[str, str]:
        """The variables that say who a process runs as, for this user."""
        return {"USER": self.name, "LOGNAME": self.name, "HOME": self.home, "SHELL": self.shell}

    def give(self, directory: Path) -> None:
        """Make `directory` this user's own, and no one else's (other than root)."""
        os.chown(directory, self.uid, self.gid)
        directory.chmod(0o700)

    def give_file(self, path: Path) -> None:
        """Make the file at `path` this user's own, readable and writable by them alone."""
        os.chown(path, self.uid, self.gid)
        path.chmod(0o600)

    def can_read(self, path: Path) -> bool:
        """Whether this user may read the file at `path`."""
        path = path.resolve()
        return self.blocking(path.parent) is None and self._allows(path.stat(), stat.S_IROTH)

    def blocking(self, directory: Path) -> Path | None:
        """The first directory this user may not pass on the way into `directory`
        (`directory` included), or None."""
        directory = directory.resolve()
        for step in [*reversed(directory.parents), directory]:
            if not self._allows(step.stat(), stat.S_IXOTH):
                return step
        return None

    def _allows(self, status: os.stat_result, permission: int) -> bool:
        # As the kernel decides: the owner's bits for the owner (even when the others'
        # would allow more), then the group's for a member, then the others'.
        if status.st_uid == self.uid:
            return bool(status.st_mode & (permission << 6))
        if status.st_gid in self.groups:
            return bool(status.st_mode & (permission << 3))
        return bool(status.st_mode & permission)


def choose_task_user(setting: str | None, *, euid: int | None = None) -> TaskUser | None:
    """The user tasks run as, from `--task-user` (None: not given). None means the
    executor's own user: when it is not root, when `setting` is empty, or when it names
    the executor's user. TaskUserError for an unknown user, or another user when the
    executor is not root."""
    euid = os.geteuid() if euid is None else euid
    if setting is None:
        setting = DEFAULT_FOR_ROOT if euid == 0 else ""
    if not setting:
        return None
    try:
        entry = pwd.getpwuid(int(setting)) if setting.isdigit() else pwd.getpwnam(setting)
    except (KeyError, ValueError):
        raise TaskUserError(f"no user {setting!r} to run tasks as (--task-user)") from None
    if entry.pw_uid == euid:
        return None
    if euid != 0:
        raise TaskUserError(
            f"only an executor running as root can run tasks as another user ({setting}); "
            "leave --task-user out to run them as yourself"
        )
    groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return TaskUser(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        groups=groups,
        home=entry.pw_dir,
        shell=entry.pw_shell,
    )


def open_work_root(user: TaskUser, root: Path) -> None:
    """Let `user` pass through the executor's work root to its attempts' directories (but
    not list it). TaskUserError when a directory above it keeps `user` out."""
    root.chmod(WORK_ROOT_MODE)
    blocked = user.blocking(root)
    if blocked is not None:
        raise TaskUserError(
            f"tasks run as {user.name}, who may not enter {blocked}; choose a --work-dir "
            "they can reach (e.g. under /var/lib) or another --task-user"
        )
