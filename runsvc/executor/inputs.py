"""An attempt's inputs: artifacts of earlier tasks, downloaded into its work directory at
the same relative paths before its command starts.

The server says in the claim which tasks each input comes from (a foreach task: each
item, in item order) and which paths it asks for; it lists each source's files of its
successful attempt, and streams each file through the executor protocol, authorized by
the attempt's lease. Every file goes to disk a chunk at a time, so memory does not grow
with its size, and is checked against the size and SHA-256 the server recorded when it
was uploaded. A path asked for that a source did not upload, a file that does not match
its checksum or that cannot be placed, fails the attempt (`InputError`), naming the path
and the task; the task's retry policy decides what follows.

The work directory is new and the task has not started, so nothing but this writes in
it; still every path is walked a component at a time without following symlinks, and the
paths themselves come from the server's checks (relative, no `..`).
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from runsvc.client import ApiError, ConnectionFailed, ExecutorClient, NotFoundError, ServerError
from runsvc.executor.shipping import LogSpool
from runsvc.executor.taskuser import TaskUser
from runsvc.wire.executor import InputFile, InputSource, TaskInput, wanted

_CHUNK = 1 << 20
_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


class InputError(Exception):
    """An input cannot be provided; the message (the attempt's error) says which and why."""


@dataclass
class Fetched:
    """What the inputs brought: files and bytes."""

    files: int = 0
    bytes: int = 0


async def fetch_inputs(
    client: ExecutorClient,
    lease: str,
    inputs: Sequence[TaskInput],
    work_dir: Path,
    spool: LogSpool,
    *,
    task_user: TaskUser | None = None,
) -> Fetched:
    """Download every input into `work_dir`; InputError when one cannot be. LeaseLost
    (the attempt is no longer this executor's) propagates."""
    fetched = Fetched()
    placed: dict[str, str] = {}
    for each in inputs:
        if not each.sources and each.paths:
            raise InputError(
                f"input {each.paths[0]!r} of task {each.task!r} is missing: "
                f"{each.task!r} has no items in this run to take it from"
            )
        for source in each.sources:
            if source.attempt is None:
                if each.paths:
                    raise InputError(
                        f"input {each.paths[0]!r} of task {source.task!r} is missing: "
                        f"{source.task!r} did not succeed, so it has no artifacts to give"
                    )
                spool.note(f"inputs: {source.task!r} did not succeed; nothing taken from it")
                continue
            files = await _listed(client, lease, source)
            for path in each.paths:
                if not any(wanted(file.path, [path]) for file in files):
                    raise InputError(_missing(path, source))
            for file in files:
                if file.path in placed:
                    spool.note(
                        f"inputs: {file.path!r} of {source.task!r} replaces the one of "
                        f"{placed[file.path]!r}"
                    )
                await _download(client, lease, source, file, work_dir, task_user=task_user)
                placed[file.path] = source.task
                fetched.files += 1
                fetched.bytes += file.size
    if inputs:
        tasks = ", ".join(repr(each.task) for each in inputs)
        count = "1 file" if fetched.files == 1 else f"{fetched.files} files"
        spool.note(f"inputs: {count} ({fetched.bytes} bytes) from {tasks}")
    return fetched


def _missing(path: str, source: InputSource) -> str:
    return (
        f"input {path!r} of task {source.task!r} is missing: {source.task!r} uploaded no "
        "such artifact when it succeeded"
    )


async def _listed(client: ExecutorClient, lease: str, source: InputSource) -> list[InputFile]:
    try:
        return (await client.input_files(lease, source.task_id)).files
    except (ConnectionFailed, ServerError) as exc:
        raise InputError(f"inputs of task {source.task!r} could not be listed: {exc}") from exc
    except ApiError as exc:
        if exc.status == 409:
            raise
        raise InputError(f"inputs of task {source.task!r} refused: {exc.message}") from exc


async def _download(
    client: ExecutorClient,
    lease: str,
    source: InputSource,
    file: InputFile,
    work_dir: Path,
    *,
    task_user: TaskUser | None,
) -> None:
    """One file, tried again (from its start) after a dropped transfer or a server error."""
    failures = 0
    while True:
        fd = await asyncio.to_thread(_create, work_dir, file.path, source, task_user)
        try:
            await _stream_into(client, lease, source, file, fd)
            return
        except NotFoundError:
            # Listed a moment ago, gone now (deleted by retention?): missing all the same.
            raise InputError(_missing(file.path, source)) from None
        except (ConnectionFailed, ServerError) as exc:
            failures += 1
            if failures >= client.api.retry.attempts:
                raise InputError(
                    f"input {file.path!r} of task {source.task!r} could not be downloaded: {exc}"
                ) from exc
            await asyncio.sleep(client.api.retry.backoff(failures))
        except ApiError as exc:
            if exc.status == 409:
                raise
            raise InputError(
                f"input {file.path!r} of task {source.task!r} refused: {exc.message}"
            ) from exc
        finally:
            os.close(fd)


async def _stream_into(
    client: ExecutorClient, lease: str, source: InputSource, file: InputFile, fd: int
) -> None:
    digest = hashlib.sha256()
    written = 0
    async with client.download_input(lease, source.task_id, file.path) as download:
        expected = download.sha256 or file.sha256
        async for chunk in download.chunks(_CHUNK):
            await asyncio.to_thread(_write, fd, digest, chunk)
            written += len(chunk)
    where = f"input {file.path!r} of task {source.task!r}"
    if written != file.size:
        raise InputError(f"{where} has {written} bytes where {file.size} were uploaded")
    if expected is not None and digest.hexdigest() != expected:
        raise InputError(f"{where} does not match its checksum (sha256 {expected})")


def _write(fd: int, digest: hashlib._Hash, chunk: bytes) -> None:
    digest.update(chunk)
    view = memoryview(chunk)
    while view:
        view = view[os.write(fd, view) :]


def _create(work_dir: Path, path: str, source: InputSource, user: TaskUser | None) -> int:
    """The file `path` under `work_dir`, created (or emptied) for writing, its directories
    made as needed; every component is opened without following a symlink. Owned by the
    task's user when it has one of its own."""
    parts = path.split("/")
    where = f"input {path!r} of task {source.task!r}"
    if any(part in ("", ".", "..") for part in parts) or path.startswith("/"):
        raise InputError(f"{where} refused: not a plain relative path")
    directory = os.open(work_dir, _DIRECTORY_FLAGS)
    try:
        for part in parts[:-1]:
            try:
                os.mkdir(part, 0o755, dir_fd=directory)
                made = True
            except FileExistsError:
                made = False
            try:
                inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
            except OSError as exc:
                raise InputError(
                    f"{where} cannot be placed: {part!r} is not a directory ({exc.strerror})"
                ) from None
            os.close(directory)
            directory = inner
            if made and user is not None:
                os.fchown(directory, user.uid, user.gid)
        try:
            fd = os.open(parts[-1], _FILE_FLAGS, 0o644, dir_fd=directory)
        except OSError as exc:
            what = "a directory" if exc.errno == errno.EISDIR else exc.strerror
            raise InputError(f"{where} cannot be placed: {what}") from None
    finally:
        os.close(directory)
    if user is not None:
        os.fchown(fd, user.uid, user.gid)
    return fd
