"""An attempt's process with real subprocesses: process groups ended as a whole, timeouts,
output decoded and shipped in order by byte offset, and artifact paths kept inside the
work directory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from runsvc.client import ApiError, ServerError
from runsvc.executor.process import ProcessResult, ProcessSpec, TaskProcess
from runsvc.executor.shipping import LogShipper, LogSpool, collect_artifacts, upload_artifacts
from runsvc.executor.taskuser import choose_task_user


class Output:
    """Collects a process's output and lets a test wait for a marker in it."""

    def __init__(self) -> None:
        self.data = bytearray()
        self._changed = asyncio.Condition()

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk
        asyncio.get_running_loop().create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def until(self, marker: bytes) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: marker in self.data), 10)


def live_members(pgid: int) -> list[int]:
    """Pids of the group's processes that are not zombies, read from /proc."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        state, _ppid, group = stat[stat.rfind(")") + 2 :].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(entry.name))
    return members


async def start(
    tmp_path: Path, script: str, output: Callable[[bytes], None], **limits: float
) -> TaskProcess:
    spec = ProcessSpec(
        argv=["/bin/sh", "-c", script],
        cwd=tmp_path,
        env={"PATH": os.defpath, "GREETING": "hello"},
        kill_grace_s=limits.pop("kill_grace_s", 2.0),
        **limits,
    )
    return await TaskProcess.start(spec, output)


async def run(tmp_path: Path, script: str, **limits: float) -> tuple[ProcessResult, bytes]:
    output = Output()
    process = await start(tmp_path, script, output, **limits)
    return await asyncio.wait_for(process.wait(), 20), bytes(output.data)


async def test_output_is_merged_in_order_in_the_work_dir(tmp_path: Path) -> None:
    """stdout and stderr arrive as one stream in the order written, from the work dir,
    with the given environment."""
    result, output = await run(
        tmp_path, 'echo one; echo two >&2; echo "$GREETING"; pwd; printf end'
    )
    assert result == ProcessResult(0, None)
    assert result.succeeded
    assert output.decode() == f"one\ntwo\nhello\n{tmp_path}\nend"


async def test_exit_code_fails_the_attempt(tmp_path: Path) -> None:
    """A nonzero exit is a failure that keeps its exit code."""
    result, _ = await run(tmp_path, "exit 3")
    assert result == ProcessResult(3, "exit code 3")
    assert not result.succeeded


async def test_stop_ends_the_whole_group(tmp_path: Path) -> None:
    """A stop ends the shell and its background job alike; nothing is left running."""
    output = Output()
    process = await start(tmp_path, "sleep 100 & echo started $!; sleep 100", output)
    await output.until(b"\n")
    assert len(live_members(process.pid)) >= 2
    process.stop("stop requested")
    result = await asyncio.wait_for(process.wait(), 10)
    assert result == ProcessResult(None, "stop requested")
    assert live_members(process.pid) == []


async def test_a_group_ignoring_sigterm_is_killed_after_the_grace(tmp_path: Path) -> None:
    """Processes that ignore SIGTERM get SIGKILL once the grace period is over."""
    output = Output()
    process = await start(
        tmp_path, "trap '' TERM; sleep 100 & echo started; sleep 100", output, kill_grace_s=0.3
    )
    await output.until(b"started")
    process.stop("stop requested")
    result = await asyncio.wait_for(process.wait(), 10)
    assert result.error == "stop requested"
    assert live_members(process.pid) == []


async def test_leftovers_are_ended_when_the_shell_exits(tmp_path: Path) -> None:
    """A background job that outlives its script is ended (and does not keep the output
    open); the attempt's result is the script's own."""
    output = Output()
    process = await start(tmp_path, "sleep 100 & echo started; exit 0", output)
    result = await asyncio.wait_for(process.wait(), 10)
    assert result == ProcessResult(0, None)
    assert live_members(process.pid) == []


async def test_timeout(tmp_path: Path) -> None:
    """A process running past `timeout_s` is ended and the attempt fails saying so."""
    result, _ = await run(tmp_path, "sleep 100", timeout_s=0.3)
    assert result == ProcessResult(None, "timed out after 0.3s")


async def test_progress_timeout(tmp_path: Path) -> None:
    """No output for `progress_timeout_s` ends the attempt."""
    result, output = await run(tmp_path, "echo working; sleep 100", progress_timeout_s=0.3)
    assert result == ProcessResult(None, "no output for 0.3s")
    assert output == b"working\n"


async def test_steady_output_keeps_progress_alive(tmp_path: Path) -> None:
    """Output more often than `progress_timeout_s` keeps the attempt going to its end,
    though it runs longer than that in all."""
    result, _ = await run(
        tmp_path, "for i in 1 2 3 4 5 6; do echo $i; sleep 0.1; done", progress_timeout_s=0.4
    )
    assert result == ProcessResult(0, None)


async def test_the_supervisor_has_the_tasks_environment_and_nothing_else(
    tmp_path: Path,
) -> None:
    """The task's parent is its supervisor, whose /proc/<pid>/environ the task may read:
    it holds exactly the task's environment, nothing of this process's."""
    output = Output()
    process = await start(tmp_path, "echo started; sleep 100", output)
    await output.until(b"started")
    supervisor = environment_of(process.pid)
    process.stop("done")
    await asyncio.wait_for(process.wait(), 10)
    assert supervisor == {"PATH": os.defpath, "GREETING": "hello"}


def environment_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(entry.split("=", 1) for entry in raw.split("\0") if entry)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches users")
async def test_a_task_user_runs_the_task_and_a_stop_still_ends_it(open_dir: Path) -> None:
    """With a task user, the task (and what it starts) runs as that user while the
    supervisor above it stays the executor's, and a stop ends the whole group."""
    nobody = choose_task_user("nobody", euid=0)
    assert nobody is not None
    nobody.give(open_dir)
    spec = ProcessSpec(
        argv=["/bin/sh", "-c", "id -u; id -G; sleep 100 & echo started; sleep 100"],
        cwd=open_dir,
        env={"PATH": os.defpath},
        kill_grace_s=2.0,
        user=nobody,
    )
    output = Output()
    process = await TaskProcess.start(spec, output)
    await output.until(b"started")
    uid, groups = bytes(output.data).decode().splitlines()[:2]
    assert int(uid) == nobody.uid
    assert sorted(int(group) for group in groups.split()) == sorted(nobody.groups)
    owners = {pid: process_uid(pid) for pid in live_members(process.pid)}
    assert owners.pop(process.pid) == os.geteuid()  # the supervisor
    assert set(owners.values()) == {nobody.uid}
    assert len(owners) >= 2
    process.stop("stop requested")
    result = await asyncio.wait_for(process.wait(), 10)
    assert result == ProcessResult(None, "stop requested")
    assert live_members(process.pid) == []


def process_uid(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])


async def test_a_program_that_does_not_exist(tmp_path: Path) -> None:
    """An argv naming no program fails to start with OSError."""
    spec = ProcessSpec(argv=[str(tmp_path / "missing")], cwd=tmp_path, env={})
    with pytest.raises(OSError, match="missing"):
        await TaskProcess.start(spec, Output())


async def test_log_is_shipped_in_order_with_byte_offsets(tmp_path: Path) -> None:
    """Output, decoded (invalid bytes as U+FFFD, characters never split), is shipped in
    chunks whose offsets are contiguous byte offsets of the stored log; a chunk that failed
    is sent again at the same offset."""
    spool = LogSpool(tmp_path / "output.log")
    sent: list[tuple[int, str]] = []
    failures = iter([True])

    async def send(offset: int, text: str, _deadline: float) -> None:
        if next(failures, False):
            raise ServerError(503, "unavailable", "try later")
        sent.append((offset, text))

    shipper = LogShipper(spool, send, chunk_bytes=7)
    script = r"printf 'h\303\251llo '; printf 'w\303\266rld \377 \342\202\254 end'"
    process = await start(tmp_path, script, spool.write)
    assert (await asyncio.wait_for(process.wait(), 10)).succeeded
    spool.finish_output()
    with pytest.raises(ServerError):
        await shipper.flush(0)
    await shipper.flush(0)
    spool.close()
    expected = "héllo wörld \ufffd € end"
    assert "".join(text for _, text in sent) == expected
    offset = 0
    for chunk_offset, text in sent:
        assert chunk_offset == offset
        assert 0 < len(text.encode()) <= 7
        offset += len(text.encode())
    assert offset == len(expected.encode()) == spool.size


async def test_shipping_stops_when_the_log_is_full(tmp_path: Path) -> None:
    """Once the server refuses more of the log (413: the attempt's log reached its limit),
    the rest is not sent again and again: flushing ends, now and later."""
    spool = LogSpool(tmp_path / "output.log")
    calls: list[int] = []

    async def send(offset: int, _text: str, _deadline: float) -> None:
        calls.append(offset)
        if offset >= 8:
            raise ApiError(413, "too_large", "the attempt's log reached its limit")

    shipper = LogShipper(spool, send, chunk_bytes=4)
    spool.write(b"0123456789abcdef")
    spool.finish_output()
    await shipper.flush(0)
    await shipper.flush(0)
    spool.close()
    assert calls == [0, 4, 8]
    assert shipper.full
    assert shipper.shipped == 8


def test_a_character_split_across_reads_stays_whole(tmp_path: Path) -> None:
    """A multi-byte character arriving in two reads is decoded once, not as two
    replacement characters; an incomplete one at the very end becomes U+FFFD."""
    spool = LogSpool(tmp_path / "output.log")
    euro = "€".encode()
    spool.write(b"a" + euro[:1])
    spool.write(euro[1:] + b"b" + euro[:2])
    spool.finish_output()
    assert spool.read(0, 100).decode() == "a€b\ufffd"
    spool.close()


def make_tree(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    outside = tmp_path / "outside"
    (work / "dist" / "sub").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_text("secret")
    (work / "report.txt").write_text("report")
    (work / "dist" / "a.txt").write_text("a")
    (work / "dist" / "sub" / "b.txt").write_text("b")
    (work / "dist" / "inner-link").symlink_to(work / "report.txt")
    (work / "dist" / "leak").symlink_to(outside / "secret")
    (work / "dist" / "outside-dir").symlink_to(outside)
    (work / "escape").symlink_to(outside)
    return work


def test_artifacts_stay_inside_the_work_dir(tmp_path: Path) -> None:
    """Files and directories (walked file by file, names relative to the work dir) are
    collected; absolute paths, `..`, symlinks that lead outside and missing paths are not,
    each with a reason."""
    work = make_tree(tmp_path)
    files, problems = collect_artifacts(
        work,
        ["report.txt", "dist", "/etc/passwd", "../outside/secret", "escape/secret", "missing"],
    )
    assert sorted((f.name, f.source.read_text()) for f in files) == [
        ("dist/a.txt", "a"),
        ("dist/inner-link", "report"),
        ("dist/sub/b.txt", "b"),
        ("report.txt", "report"),
    ]
    assert sorted(problems) == sorted(
        [
            "artifact 'dist/outside-dir' skipped: a symlink to a directory",
            "artifact 'dist/leak' refused: it resolves outside the work directory",
            "artifact '/etc/passwd' refused: not a relative path",
            "artifact '../outside/secret' refused: `..` leaves the work directory",
            "artifact 'escape/secret' refused: it resolves outside the work directory",
            "artifact 'missing' not found",
        ]
    )


async def test_artifact_problems_go_to_the_log(tmp_path: Path) -> None:
    """Uploading notes every path it cannot upload in the attempt's log and goes on with
    the others."""
    work = make_tree(tmp_path)
    spool = LogSpool(tmp_path / "output.log")
    uploaded: dict[str, bytes] = {}

    async def upload(name: str, source: Path, sha256: str) -> None:
        uploaded[name] = await asyncio.to_thread(source.read_bytes)

    count = await upload_artifacts(work, ["missing", "report.txt", "/abs"], upload, spool)
    assert count == 1
    assert uploaded == {"report.txt": b"report"}
    log = spool.read(0, 10_000).decode()
    assert "[runsvc] artifact 'missing' not found\n" in log
    assert "[runsvc] artifact '/abs' refused: not a relative path\n" in log
    spool.close()


async def test_a_hard_link_to_a_file_outside_is_not_uploaded(tmp_path: Path) -> None:
    """A task that hard-links a file it should not ship (here one outside the work
    directory) into its artifacts gets it refused: a hard link is another name of the same
    file, and nothing in the work directory tells where the file came from."""
    work = make_tree(tmp_path)
    os.link(tmp_path / "outside" / "secret", work / "dist" / "hard-link")
    spool = LogSpool(tmp_path / "output.log")
    uploaded: dict[str, bytes] = {}

    async def upload(name: str, source: Path, sha256: str) -> None:
        uploaded[name] = await asyncio.to_thread(source.read_bytes)

    await upload_artifacts(work, ["dist"], upload, spool)
    assert "dist/hard-link" not in uploaded
    assert b"secret" not in b"".join(uploaded.values())
    assert (
        "[runsvc] artifact 'dist/hard-link' refused: a hard link" in spool.read(0, 10_000).decode()
    )
    spool.close()


async def test_a_file_swapped_for_a_symlink_during_the_upload_is_refused(tmp_path: Path) -> None:
    """Between collecting the artifacts and opening each one, a leftover process of the
    task replaces a file by a symlink to a secret (done here while the first artifact
    uploads, so the race is won every time): the swapped file is refused, never followed."""
    work = make_tree(tmp_path)
    (work / "second.txt").write_text("second")
    spool = LogSpool(tmp_path / "output.log")
    uploaded: dict[str, bytes] = {}

    async def upload(name: str, source: Path, sha256: str) -> None:
        uploaded[name] = await asyncio.to_thread(source.read_bytes)
        if name == "report.txt":
            (work / "second.txt").unlink()
            (work / "second.txt").symlink_to(tmp_path / "outside" / "secret")

    count = await upload_artifacts(work, ["report.txt", "second.txt"], upload, spool)
    assert count == 1
    assert uploaded == {"report.txt": b"report"}
    assert (
        "[runsvc] artifact 'second.txt' refused: not a plain file" in spool.read(0, 10_000).decode()
    )
    spool.close()
