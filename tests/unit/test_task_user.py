"""Who tasks run as, and what that user can reach, read from mode bits as the kernel
would decide."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from runsvc.executor.taskuser import TaskUser, TaskUserError, choose_task_user

NOBODY = pwd.getpwnam("nobody")
SOMEONE = TaskUser("someone", 40001, 40001, (40001, 40002), "/home/someone", "/bin/sh")


def test_root_runs_tasks_as_nobody_unless_told_otherwise() -> None:
    """Root's default is nobody; `''` and root's own name or number mean root itself."""
    chosen = choose_task_user(None, euid=0)
    assert chosen is not None
    assert (chosen.name, chosen.uid, chosen.gid) == ("nobody", NOBODY.pw_uid, NOBODY.pw_gid)
    assert NOBODY.pw_gid in chosen.groups
    assert chosen.identity() == {
        "USER": "nobody",
        "LOGNAME": "nobody",
        "HOME": NOBODY.pw_dir,
        "SHELL": NOBODY.pw_shell,
    }
    assert choose_task_user("", euid=0) is None
    assert choose_task_user("root", euid=0) is None
    assert choose_task_user("0", euid=0) is None
    assert choose_task_user(str(NOBODY.pw_uid), euid=0) == chosen


def test_others_run_tasks_as_themselves() -> None:
    """An executor that is not root cannot switch users: its own user is no switch,
    another is refused."""
    assert choose_task_user(None, euid=NOBODY.pw_uid) is None
    assert choose_task_user("nobody", euid=NOBODY.pw_uid) is None
    with pytest.raises(TaskUserError, match="only an executor running as root"):
        choose_task_user("root", euid=NOBODY.pw_uid)


def test_an_unknown_user_is_refused() -> None:
    with pytest.raises(TaskUserError, match="no user 'no-such-user-here'"):
        choose_task_user("no-such-user-here", euid=0)


def test_mode_bits_decide_as_the_kernel_does(tmp_path: Path) -> None:
    """The owner's bits for the owner even where the others' allow more, the group's for
    a member, the others' for the rest."""
    status = os.stat_result((0o100004, 0, 0, 1, SOMEONE.uid, 0, 0, 0, 0, 0))
    assert not SOMEONE._allows(status, 0o4)  # owner without read, others with it
    status = os.stat_result((0o100040, 0, 0, 1, 0, 40002, 0, 0, 0, 0))
    assert SOMEONE._allows(status, 0o4)  # through a supplementary group
    status = os.stat_result((0o100044, 0, 0, 1, 0, 50000, 0, 0, 0, 0))
    assert SOMEONE._allows(status, 0o4)
    assert not SOMEONE._allows(status, 0o1)


@pytest.mark.skipif(os.geteuid() != 0, reason="makes files owned by root")
def test_what_blocks_the_way(open_dir: Path) -> None:
    """A private directory on the way blocks; behind passable ones a file is readable by
    its mode."""
    private = open_dir / "private"
    private.mkdir(mode=0o700)
    passable = open_dir / "passable"
    passable.mkdir(mode=0o711)
    for directory in (private, passable):
        for name, mode in (("readable", 0o644), ("secret", 0o600)):
            (directory / name).write_text("x")
            (directory / name).chmod(mode)
    assert SOMEONE.blocking(private / "deeper") == private
    assert SOMEONE.blocking(passable) is None
    assert not SOMEONE.can_read(private / "readable")
    assert SOMEONE.can_read(passable / "readable")
    assert not SOMEONE.can_read(passable / "secret")
