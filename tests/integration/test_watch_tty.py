"""`runsvc watch` on a terminal: the process runs in a pseudo-terminal, its output goes
through a terminal emulator (pyte), and the screen a person would see is checked while a
run advances, gated by an approval (or a stop) given from the test."""

from __future__ import annotations

import asyncio
import fcntl
import os
import pty
import struct
import sys
import termios
from collections.abc import Callable
from pathlib import Path

import pyte

from tests.fixtures.processes import ROOT, Cluster
from tests.integration.test_cli import (  # the module's server, shared with test_cli
    WITHIN_S,
    Cli,
    cli,
    cli_cluster,
    gated,
    submitted,
)

__all__ = ["cli", "cli_cluster"]  # fixtures, used by name

ROWS, COLUMNS = 30, 110


class Terminal:
    """A process on a pseudo-terminal of ROWS x COLUMNS and the screen it draws."""

    def __init__(self) -> None:
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        self.changed = asyncio.Event()
        self.closed = asyncio.Event()
        self.master = -1
        self.process: asyncio.subprocess.Process | None = None

    async def spawn(self, environment: dict[str, str], *args: str) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLUMNS, 0, 0))
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runsvc",
            *args,
            cwd=ROOT,
            env={**environment, "TERM": "xterm"},
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
        )
        os.close(slave)  # the child's copies remain; the master reads EIO once they close
        asyncio.get_running_loop().add_reader(self.master, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.master, 65536)
        except OSError:
            data = b""
        if not data:
            asyncio.get_running_loop().remove_reader(self.master)
            os.close(self.master)
            self.closed.set()
        else:
            self.stream.feed(data)
        self.changed.set()

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display).rstrip()

    async def until(self, shown: Callable[[str], bool]) -> str:
        """The screen, once `shown(screen)` holds; fails with the screen if it never does."""
        try:
            async with asyncio.timeout(WITHIN_S):
                while not shown(self.text()):
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"never shown; the screen:\n{self.text()}") from None
        return self.text()

    async def exit_code(self) -> int:
        assert self.process is not None
        async with asyncio.timeout(WITHIN_S):
            code = await self.process.wait()
            await self.closed.wait()  # everything it wrote has reached the screen
        return code


def row(screen: str, task: str) -> list[str]:
    """The cells of `task`'s row in the task table."""
    for line in screen.splitlines():
        cells = line.split()
        if len(cells) > 2 and cells[1] == task:
            return cells
    raise AssertionError(f"no row for {task}:\n{screen}")


async def test_watch_redraws_as_the_run_advances_and_exits_0_on_success(
    cli: Cli, cli_cluster: Cluster, tmp_path: Path
) -> None:
    """The view shows each task by wave with its status and attempt, the progress and
    the approval it waits for; approving it from another terminal redraws the same
    screen to the end, and watch exits 0 with the run's success."""
    config = tmp_path / "gated.yaml"
    config.write_text(gated("/cli/tty"))
    run = await submitted(cli, str(config), "--group", "/cli/tty", "--name", "gated")
    terminal = Terminal()
    await terminal.spawn(cli.environment(), "watch", run["id"])

    screen = await terminal.until(lambda s: "waiting_approval" in s and "1/3 tasks" in s)
    lines = screen.splitlines()
    assert lines[0] == f"run {run['id']}  /cli/tty gated #1"
    assert lines[1].startswith("running / unknown   [##########....")
    assert lines[2].split() == ["waves", "0:", "1/1", "1:", "0/1", "2:", "0/1"]
    assert row(screen, "first")[:4] == ["0", "first", "success", "1"]
    assert row(screen, "gate")[:4] == ["1", "gate", "waiting_approval", "0"]
    assert row(screen, "after")[:4] == ["2", "after", "notstarted", "0"]
    assert f"approve with: runsvc approve {run['id']} gate" in screen
    assert screen.count("TASK") == 1  # redrawn in place, not appended

    approved = await cli("approve", run["id"], "gate")
    assert approved.code == 0
    screen = await terminal.until(lambda s: "finished / success" in s)
    assert "3/3 tasks" in screen
    assert row(screen, "gate")[:4] == ["1", "gate", "success", "1"]
    assert row(screen, "after")[:4] == ["2", "after", "success", "1"]
    assert "approve with" not in screen
    assert screen.count("TASK") == 1
    assert await terminal.exit_code() == 0
    assert f"run {run['id']} finished: success" in terminal.text()


async def test_watch_exits_1_when_the_run_is_stopped(cli: Cli, tmp_path: Path) -> None:
    """A run stopped while watched: the screen ends with the run stopped and the tasks
    that never ran, and watch exits 1."""
    config = tmp_path / "gated.yaml"
    config.write_text(gated("/cli/tty-stop"))
    run = await submitted(cli, str(config), "--group", "/cli/tty-stop", "--name", "gated")
    terminal = Terminal()
    await terminal.spawn(cli.environment(), "watch", run["id"])
    await terminal.until(lambda s: "waiting_approval" in s)

    assert (await cli("stop", run["id"])).code == 0
    screen = await terminal.until(lambda s: "finished / stopped" in s)
    assert row(screen, "first")[2] == "success"
    assert row(screen, "gate")[2] != "waiting_approval"
    assert await terminal.exit_code() == 1
    assert f"run {run['id']} finished: stopped" in terminal.text()
