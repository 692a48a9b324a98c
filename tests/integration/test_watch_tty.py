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
    EXPLAINED,
    WITHIN_S,
    Cli,
    cli,
    cli_cluster,
    gated,
    read_until,
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


async def test_watch_says_why_a_task_is_skipped_while_the_run_still_waits(
    cli: Cli, tmp_path: Path
) -> None:
    """A task below a failure is shown skipped, with the failure that decided it, while
    the run still waits for an approval elsewhere: not "waiting for flaky, gate" until
    someone approves."""
    config = tmp_path / "explained.yaml"
    config.write_text(EXPLAINED)
    run = await submitted(cli, str(config), "--group", "/cli/tty-skip", "--name", "skip")
    terminal = Terminal()
    await terminal.spawn(cli.environment(), "watch", run["id"])
    # The note is cut at the terminal's width: "(because flaky failed)" ends past it.
    screen = await terminal.until(lambda s: "(because flaky" in s and "waiting_approval" in s)
    assert row(screen, "after")[2] == "skipped"
    assert "flaky ended failed" in screen
    assert row(screen, "gate")[2] == "waiting_approval"
    assert (await cli("stop", run["id"])).code == 0
    assert await terminal.exit_code() == 1


class Relay:
    """A TCP relay to the server that a test can cut: every connection through it is
    aborted and nobody can connect (refused) until it is opened again, on the same port,
    as a network that drops and comes back."""

    def __init__(self, target: str) -> None:
        host, port = target.removeprefix("http://").split(":")
        self.target = (host, int(port))
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream = await asyncio.open_connection(*self.target)
        self.writers |= {writer, upstream}
        try:
            await asyncio.gather(self._pipe(reader, upstream), self._pipe(upstream_reader, writer))
        finally:
            self.writers -= {writer, upstream}

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # aborted by `cut`, or the other side went away
        finally:
            writer.transport.abort()


async def test_watch_says_it_is_reconnecting_while_the_stream_is_lost(
    cli: Cli, tmp_path: Path
) -> None:
    """The connection to the server drops while a run is watched (a relay between them is
    cut, then opened again): the terminal view says it is reconnecting, instead of a
    clock that ticks on as if all were well, and stops saying so once it is back, with no
    event yet; the line view says both on stderr. Both then follow the run to its end."""
    config = tmp_path / "gated.yaml"
    config.write_text(gated("/cli/tty-relay"))
    run = await submitted(cli, str(config), "--group", "/cli/tty-relay", "--name", "gated")
    relay = Relay(cli.cluster.url)
    await relay.open()
    try:
        terminal = Terminal()
        await terminal.spawn(cli.environment(RUNSVC_SERVER=relay.url), "watch", run["id"])
        lines = await cli.start("watch", run["id"], RUNSVC_SERVER=relay.url)
        await terminal.until(lambda s: "waiting_approval" in s)
        said: list[str] = []
        await read_until(lines.stdout, lambda line: "gate waiting_approval" in line, [])

        await relay.cut()
        screen = await terminal.until(lambda s: "reconnecting…" in s)
        assert "the run's event stream was lost" in screen.splitlines()[3]
        await read_until(lines.stderr, lambda line: "connection lost" in line, said)

        await relay.open()
        screen = await terminal.until(lambda s: "reconnecting" not in s)
        assert row(screen, "gate")[2] == "waiting_approval"
        await read_until(lines.stderr, lambda line: "reconnected" in line, said)

        assert (await cli("approve", run["id"], "gate")).code == 0
        await terminal.until(lambda s: "finished / success" in s)
        assert await terminal.exit_code() == 0
        async with asyncio.timeout(WITHIN_S):
            out, _ = await lines.communicate()
        assert lines.returncode == 0
        assert f"run {run['id']} finished (success)" in out.decode()
    finally:
        await relay.cut()
