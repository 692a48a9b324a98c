"""Getting an attempt's output and files to the server: the log in chunks by byte offset,
and the declared artifacts file by file.

Output is decoded as UTF-8 as it arrives (bytes that are not UTF-8 become U+FFFD, and a
character split across two reads is kept whole) and appended to a spool file in the
attempt's directory. The shipper sends the spool from the last acknowledged offset, so an
outage of the server costs disk, not memory, and nothing is lost or sent out of order;
a chunk repeated after a lost answer names the same offset and is stored once.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import os
import stat
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import structlog

from runsvc.client import ApiError, LeaseLost
from runsvc.executor.masking import Masker

log = structlog.get_logger("runsvc.executor")

LOG_CHUNK_BYTES = 64 * 1024
LOG_INTERVAL_S = 0.5


class LogSpool:
    """The attempt's log as stored: valid UTF-8, appended to a local file, readable by
    offset while it grows. `finish_output` once the process output ended; `close` to
    release the file."""

    def __init__(self, path: Path, masks: Sequence[str] = ()) -> None:
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # The attempt's secrets never reach the spool, so neither the disk nor the server
        # sees them: `***` in their place, also when one is cut between two reads.
        self._masker = Masker(masks)
        self._ends_line = True
        self.size = 0
        self.wake = asyncio.Event()
        """Set once the log grows to `wake_at` bytes: a full chunk is waiting, and the
        shipper need not wait for its next tick."""
        self.wake_at = LOG_CHUNK_BYTES

    def write(self, output: bytes) -> None:
        """Append raw process output."""
        self._append(self._masker.feed(self._decoder.decode(output)))

    def note(self, message: str) -> None:
        """Append a line from the executor itself (prefixed `[runsvc]`), on a line of its
        own even when the output so far ends mid-line."""
        self.finish_output()
        note = ("" if self._ends_line else "\n") + f"[runsvc] {message}\n"
        self._append(self._masker.mask(note))

    def finish_output(self) -> None:
        """The process output ended: an incomplete character at its end becomes U+FFFD,
        and what the masker held back is written."""
        self._append(self._masker.feed(self._decoder.decode(b"", final=True)))
        self._append(self._masker.flush())

    def read(self, offset: int, limit: int) -> bytes:
        """Up to `limit` (at least 4) bytes from `offset`, cut before a character that
        would not fit whole, so that every chunk is valid UTF-8 text on its own."""
        data = os.pread(self._fd, limit, offset)
        if offset + len(data) >= self.size:
            return data
        # Find where the last character starts (continuation bytes are 0b10xxxxxx; a
        # character has at most three) and drop it if it is not complete.
        start = len(data) - 1
        while start > 0 and len(data) - start < 4 and data[start] & 0xC0 == 0x80:
            start -= 1
        lead = data[start]
        length = 1 if lead < 0x80 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4
        return data if len(data) - start >= length else data[:start]

    def close(self) -> None:
        """Release the file (the attempt's directory is removed afterwards)."""
        with contextlib.suppress(OSError):
            os.close(self._fd)

    def _append(self, text: str) -> None:
        if not text:
            return
        data = text.encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)
        self._ends_line = text.endswith("\n")
        if self.size >= self.wake_at:
            self.wake.set()


LogSender = Callable[[int, str, float], Awaitable[None]]
"""Sends one chunk: (offset, text, deadline) -> acknowledged, or raises `ApiError`."""


class LogShipper:
    """Ships a spool in chunks: at least every `interval_s` while output comes, at once
    when a full chunk is waiting. `run` ships until cancelled; `flush` ships what is left."""

    def __init__(
        self,
        spool: LogSpool,
        send: LogSender,
        *,
        interval_s: float = LOG_INTERVAL_S,
        chunk_bytes: int = LOG_CHUNK_BYTES,
    ) -> None:
        if chunk_bytes < 4:
            raise ValueError("a log chunk must hold at least one character (4 bytes)")
        self.spool = spool
        self.spool.wake_at = chunk_bytes
        self.shipped = 0
        self.full = False
        self._send = send
        self._interval_s = interval_s
        self._chunk_bytes = chunk_bytes

    async def run(self) -> None:
        """Ship as output comes. A failed chunk is tried again on the next round (the server
        may be down for a while); only `LeaseLost` ends this."""
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: see eventlog.listener
                async with asyncio.timeout(self._interval_s):
                    await self.spool.wake.wait()
            self.spool.wake.clear()
            try:
                # Each round gives up after a few intervals so that it starts again from
                # what the spool holds by then.
                await self.flush(time.monotonic() + max(5.0, 4 * self._interval_s))
            except LeaseLost:
                raise
            except ApiError as exc:
                log.warning("log chunk not delivered yet", error=str(exc), offset=self.shipped)

    async def flush(self, deadline: float) -> None:
        """Ship everything the spool holds, retrying each chunk until `deadline`. Once the
        server refuses more (413: the attempt's log is full) the rest is not sent."""
        while self.shipped < self.spool.size and not self.full:
            data = self.spool.read(self.shipped, self._chunk_bytes)
            try:
                await self._send(self.shipped, data.decode(), deadline)
            except ApiError as exc:
                if exc.status != 413:
                    raise
                self.full = True
                log.warning("log limit reached; the rest is not sent", error=exc.message)
                return
            self.shipped += len(data)
        self.spool.wake_at = self.shipped + self._chunk_bytes


@dataclass(frozen=True)
class ArtifactFile:
    """One file to upload: its artifact path (relative, `/`-separated) and where it is."""

    name: str
    source: Path


def collect_artifacts(
    work_dir: Path, declared: Sequence[str]
) -> tuple[list[ArtifactFile], list[str]]:
    """The files the declared artifact paths name, and a message for each path (or file)
    that cannot be uploaded: missing, absolute, or escaping the work directory by `..` or a
    symlink. Directories are walked; symlinks to directories inside them are not followed.
    """
    root = work_dir.resolve()
    files: list[ArtifactFile] = []
    problems: list[str] = []
    for text in declared:
        declared_path = PurePosixPath(text)
        if declared_path.is_absolute():
            problems.append(f"artifact {text!r} refused: not a relative path")
            continue
        if ".." in declared_path.parts:
            problems.append(f"artifact {text!r} refused: `..` leaves the work directory")
            continue
        target = (root / declared_path).resolve()
        if not target.is_relative_to(root):
            problems.append(f"artifact {text!r} refused: it resolves outside the work directory")
        elif target.is_file():
            files.append(ArtifactFile(declared_path.as_posix(), target))
        elif target.is_dir():
            _collect_directory(root, declared_path, target, files, problems)
        elif os.path.lexists(root / declared_path):
            problems.append(f"artifact {text!r} skipped: not a regular file or directory")
        else:
            problems.append(f"artifact {text!r} not found")
    return files, problems


def _collect_directory(
    root: Path,
    declared: PurePosixPath,
    directory: Path,
    files: list[ArtifactFile],
    problems: list[str],
) -> None:
    for parent, subdirectories, names in os.walk(directory):
        here = Path(parent)
        for name in sorted(subdirectories):
            if (here / name).is_symlink():
                link = (declared / (here / name).relative_to(directory)).as_posix()
                problems.append(f"artifact {link!r} skipped: a symlink to a directory")
        subdirectories.sort()
        for name in sorted(names):
            path = here / name
            artifact = (declared / path.relative_to(directory)).as_posix()
            real = path.resolve()
            if not real.is_relative_to(root):
                problems.append(
                    f"artifact {artifact!r} refused: it resolves outside the work directory"
                )
            elif real.is_file():
                files.append(ArtifactFile(artifact, real))
            else:
                problems.append(f"artifact {artifact!r} skipped: not a regular file")


ArtifactUploader = Callable[[str, Path, str], Awaitable[None]]
"""Uploads one file: (artifact path, the file, the SHA-256 of its bytes)."""

_HASH_READ = 1 << 20


def sha256_of(fd: int) -> str:
    """The SHA-256 (hex) of the whole file open as `fd`, read by offset (the descriptor's
    own position is left alone), a chunk at a time."""
    digest = hashlib.sha256()
    offset = 0
    while chunk := os.pread(fd, _HASH_READ, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


class ArtifactRefused(Exception):
    """The file cannot be uploaded safely; the message says why."""


_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def open_beneath(root: Path, relative: PurePosixPath) -> int:
    """A read-only descriptor of the regular file `relative` under `root`, opened one path
    component at a time without following any symlink, so a name swapped for a symlink
    after the artifacts were collected (a task's leftover process racing the upload) is
    refused instead of followed. A file with more than one link is refused as well: a
    hard link can give a name inside the work directory to any file the task could not
    read through the upload otherwise. The checks are made on what was opened."""
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in relative.parts[:-1]:
            try:
                inner = os.open(part, _OPEN_FLAGS | os.O_DIRECTORY, dir_fd=directory)
            except OSError as exc:
                raise ArtifactRefused(
                    f"{part!r} is not a plain directory ({exc.strerror})"
                ) from exc
            os.close(directory)
            directory = inner
        try:
            fd = os.open(relative.parts[-1], _OPEN_FLAGS, dir_fd=directory)
        except OSError as exc:
            raise ArtifactRefused(f"not a plain file ({exc.strerror})") from exc
    finally:
        os.close(directory)
    status = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(status.st_mode):
        problem = "not a regular file"
    elif status.st_nlink > 1:
        problem = "a hard link (the same file has another name, maybe outside the work directory)"
    if problem is not None:
        os.close(fd)
        raise ArtifactRefused(problem)
    return fd


async def upload_artifacts(
    work_dir: Path, declared: Sequence[str], upload: ArtifactUploader, spool: LogSpool
) -> int:
    """Upload the declared artifacts one file at a time, noting in the attempt's log every
    path that is not uploaded (and why); returns how many were. Nothing here fails the
    attempt; only `LeaseLost` propagates."""
    if not declared:
        return 0
    files, problems = await asyncio.to_thread(collect_artifacts, work_dir, declared)
    for problem in problems:
        spool.note(problem)
    uploaded = 0
    root = await asyncio.to_thread(work_dir.resolve)
    for artifact in files:
        try:
            fd = await asyncio.to_thread(
                open_beneath, root, PurePosixPath(artifact.source.relative_to(root))
            )
        except ArtifactRefused as exc:
            spool.note(f"artifact {artifact.name!r} refused: {exc}")
            continue
        try:
            # Sent with the file: should it change while it is read (a leftover process of
            # the task), the server refuses the upload instead of storing a file whose
            # checksum does not hold.
            sha256 = await asyncio.to_thread(sha256_of, fd)
            # The descriptor's own name: every try of the upload reads the file that was
            # checked, whatever its path names by then.
            await upload(artifact.name, Path(f"/proc/self/fd/{fd}"), sha256)
        except LeaseLost:
            raise
        except ApiError as exc:
            spool.note(f"artifact {artifact.name!r} not uploaded: {exc.message}")
        except OSError as exc:
            spool.note(f"artifact {artifact.name!r} not uploaded: {exc.strerror or exc}")
        else:
            uploaded += 1
        finally:
            os.close(fd)
    return uploaded
