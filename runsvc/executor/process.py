"""One attempt's process: started in its own session (so it and everything it spawns form
one process group), its stdout and stderr merged into one stream handed out as it comes,
and ended by signalling the whole group.

Ending a process means the group, not just the direct child: a shell script's background
jobs and a build tool's workers would otherwise survive a stop or a timeout and keep
burning the machine. So a stop sends SIGTERM to the group, waits a grace period for the
group to empty, then sends SIGKILL. When the direct child exits by itself, members it
left behind are ended the same way, as CI systems do at the end of a step. (A process
that starts its own session escapes the group; only a cgroup would catch it.) The group
also ends when the executor dies, through the supervisor of `runsvc.executor.lifeline`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self

from runsvc.executor.lifeline import lifeline, supervised
from runsvc.executor.outputs import OUTPUT_VARIABLE
from runsvc.executor.taskuser import TaskUser
from runsvc.wire.executor import WorkItem, compose_environment

# Variables of the executor's own environment that a task gets underneath its composed
# environment. Deliberately a short list: the executor's environment holds its API token
# (RUNSVC_TOKEN) and whatever else its operator set, none of which a task should see.
INHERITED_VARIABLES: Final = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
)
_GROUP_POLL_S = 0.05


def attempt_environment(
    item: WorkItem, inherited: Mapping[str, str], *, output_file: Path | None = None
) -> dict[str, str]:
    """The complete environment of an attempt: `INHERITED_VARIABLES` and the locale
    (`LC_*`) from `inherited`, overlaid by what the service composed for the task; then
    `RUNSVC_OUTPUT`, the file the attempt writes its outputs to, which always wins like
    the attempt's identity (the executor reads that file and no other)."""
    base = {
        name: value
        for name, value in inherited.items()
        if name in INHERITED_VARIABLES or name.startswith("LC_")
    }
    base.setdefault("PATH", os.defpath)
    composed = {**base, **compose_environment(item)}
    if output_file is not None:
        composed[OUTPUT_VARIABLE] = str(output_file)
    return composed


def attempt_argv(item: WorkItem) -> list[str]:
    """`run` through `/bin/sh -c`, or `command` as it is. ValueError when there is neither
    (or both): the service should never hand out such a task."""
    if item.run is not None and item.command is None:
        return ["/bin/sh", "-c", item.run]
    if item.command and item.run is None:
        return list(item.command)
    raise ValueError("a task needs exactly one of `run` and `command`")


def describe_seconds(seconds: float) -> str:
    """`2s`, `0.5s`: how a duration appears in an attempt's error."""
    return f"{seconds:g}s"


@dataclass(frozen=True)
class ProcessSpec:
    """What to start, as whom (None: this process's user) and the limits it runs under."""

    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    timeout_s: float | None = None
    progress_timeout_s: float | None = None
    kill_grace_s: float = 10.0
    user: TaskUser | None = None


@dataclass(frozen=True)
class ProcessResult:
    """How the process ended. `exit_code` is None when it did not exit by itself (a
    signal ended it); `error` is None only when it exited by itself with code 0, and says
    what went wrong otherwise."""

    exit_code: int | None
    error: str | None

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.exit_code == 0


OutputSink = Callable[[bytes], None]


class _Watch(asyncio.SubprocessProtocol):
    """Hands output on as it arrives and notes when the process exited and when its output
    ended: two separate moments, since a background job can hold the output open after
    its parent exited. (asyncio's own `Process.wait()` waits for both together, so it
    cannot tell a finished script from one whose leftovers still run.)"""

    def __init__(self, on_output: OutputSink) -> None:
        loop = asyncio.get_running_loop()
        self.on_output = on_output
        self.exited: asyncio.Future[None] = loop.create_future()
        self.output_ended: asyncio.Future[None] = loop.create_future()
        self.last_output = time.monotonic()

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        self.last_output = time.monotonic()
        self.on_output(data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if not self.output_ended.done():
            self.output_ended.set_result(None)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class TaskProcess:
    """A started process group, watched until it ends. Create with `start`, end early with
    `stop`, and `wait` for the result (which only arrives once the group is gone and the
    output has been read to its end)."""

    def __init__(
        self,
        transport: asyncio.SubprocessTransport,
        watch: _Watch,
        spec: ProcessSpec,
        lifeline_end: int,
    ) -> None:
        self._lifeline_end = lifeline_end
        self._transport = transport
        self._watch = watch
        self._spec = spec
        self._started = time.monotonic()
        self._stop_reason: str | None = None
        self._stop_requested = asyncio.Event()
        self._supervisor = asyncio.create_task(self._supervise())

    @classmethod
    async def start(cls, spec: ProcessSpec, on_output: OutputSink) -> Self:
        """Start the process; OSError when it cannot be (no such program, not executable).
        It runs under a supervisor that ends it if this process dies (`lifeline`)."""
        _check_program(spec.argv[0], spec.env.get("PATH", os.defpath))
        loop = asyncio.get_running_loop()
        read_end, write_end = lifeline()
        try:
            transport, watch = await loop.subprocess_exec(
                lambda: _Watch(on_output),
                *supervised(list(spec.argv), read_end, spec.kill_grace_s, spec.user),
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        return cls(transport, watch, spec, write_end)

    @property
    def pid(self) -> int:
        """The direct child's pid, which is also the process group's id."""
        return self._transport.get_pid()

    def stop(self, reason: str) -> None:
        """End the process group (SIGTERM, then SIGKILL after the grace period). The first
        reason given becomes the attempt's error; stopping an ended process does nothing."""
        if self._stop_reason is None:
            self._stop_reason = reason
            self._stop_requested.set()

    async def wait(self) -> ProcessResult:
        """The result, once the process group is gone and its output fully read."""
        return await asyncio.shield(self._supervisor)

    async def _supervise(self) -> ProcessResult:
        stopping = asyncio.create_task(self._stop_requested.wait())
        try:
            reason = await self._until_exit_or_limit(stopping)
            if reason is not None or group_alive(self.pid):
                await self._end_group()
            # The output ends once every member of the group has exited; a member that
            # escaped into its own session could hold it open forever, so this is bounded.
            with contextlib.suppress(TimeoutError):  # not wait_for: see eventlog.listener
                async with asyncio.timeout(self._spec.kill_grace_s):
                    await asyncio.shield(self._watch.output_ended)
        finally:
            stopping.cancel()
            if self._transport.get_returncode() is None:
                signal_group(self.pid, signal.SIGKILL)
            self._transport.close()
            os.close(self._lifeline_end)
        return self._result(self._transport.get_returncode(), reason)

    async def _until_exit_or_limit(self, stopping: asyncio.Future[Any]) -> str | None:
        """None when the process exited by itself, else why it must be ended."""
        spec = self._spec
        exited: asyncio.Future[Any] = self._watch.exited
        while True:
            now = time.monotonic()
            limits: list[tuple[float, str]] = []
            if spec.timeout_s is not None:
                message = f"timed out after {describe_seconds(spec.timeout_s)}"
                limits.append((self._started + spec.timeout_s, message))
            if spec.progress_timeout_s is not None:
                message = f"no output for {describe_seconds(spec.progress_timeout_s)}"
                limits.append((self._watch.last_output + spec.progress_timeout_s, message))
            for at, message in limits:
                if at <= now:
                    return message
            wake = min((at for at, _ in limits), default=None)
            await asyncio.wait(
                {exited, stopping},
                timeout=None if wake is None else wake - now,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exited.done():
                return None
            if stopping.done():
                return self._stop_reason

    async def _end_group(self) -> None:
        """SIGTERM to the group; SIGKILL to whatever is left after the grace period."""
        exited = self._watch.exited
        grace_ends = time.monotonic() + self._spec.kill_grace_s
        signal_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):  # not wait_for: see eventlog.listener
            async with asyncio.timeout(self._spec.kill_grace_s):
                await asyncio.shield(exited)
        await self._until_group_gone(grace_ends)
        signal_group(self.pid, signal.SIGKILL)
        await exited
        # SIGKILL is delivered at once, but a process ends only when the kernel has torn it
        # down (longer when it is in uninterruptible I/O); wait for that, within reason.
        await self._until_group_gone(time.monotonic() + self._spec.kill_grace_s)

    async def _until_group_gone(self, deadline: float) -> None:
        # Nothing notifies the end of processes that are not our children (there is no
        # event to wait for), so the rest of the group is polled, until `deadline` at most.
        while group_alive(self.pid) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(_GROUP_POLL_S)

    def _result(self, returncode: int | None, reason: str | None) -> ProcessResult:
        exit_code = returncode if returncode is not None and returncode >= 0 else None
        if reason is not None:
            return ProcessResult(exit_code, reason)
        if exit_code is None:
            signal_name = _signal_name(-returncode if returncode is not None else 0)
            return ProcessResult(None, f"killed by {signal_name}")
        return ProcessResult(exit_code, None if exit_code == 0 else f"exit code {exit_code}")


def _check_program(program: str, path: str) -> None:
    """Refuse what could not start before starting the supervisor, so a missing or
    non-executable program is an OSError of `start`, as with a direct exec."""
    if "/" in program:
        if not os.path.isfile(program):
            raise FileNotFoundError(errno.ENOENT, "no such program", program)
        if not os.access(program, os.X_OK):
            raise PermissionError(errno.EACCES, "not executable", program)
    elif shutil.which(program, path=path) is None:
        raise FileNotFoundError(errno.ENOENT, "no such program on PATH", program)


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send `sig` to the process group; a group that is already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group is still running. Zombies do not count: they hold
    nothing and only wait to be reaped by their parent (which, for orphans in a container
    whose init does not reap, may be never)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # the process ended while we looked
            continue
        # The command name (in parentheses) may contain spaces; fields follow the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
