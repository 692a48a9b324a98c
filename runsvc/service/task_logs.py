"""Task output and artifacts: while an attempt runs its output lives in PostgreSQL (chunks
keyed by offset); once the attempt ends it moves to object storage at
`logs/<task id>/<attempt>.log`. Artifacts go straight to `artifacts/<task id>/<path>`.
Keys carry only the task id, never the run or the group.

Every attempt of a task uploads under the same prefix: a retry's file replaces the
earlier attempt's at the same path, and a file only an earlier attempt uploaded stays.
So each artifact records, in its object metadata, the attempt that uploaded it and the
SHA-256 of its bytes (`artifact_metadata`); inputs take only the successful attempt's
(`attempt_artifacts`) and check the bytes they download."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import asyncpg
import structlog

from runsvc.domain.errors import BadRequest
from runsvc.infra.objectstore import ObjectInfo, ObjectNotFound, ObjectStore, ObjectStoreError
from runsvc.wire.executor import InputFile, wanted

log = structlog.get_logger("runsvc.logs")

LOG_CHANNEL = "runsvc_logs"
"""Notified with the task id whenever output of a running attempt is stored, so readers
following the log wake at once."""


async def drop_chunks(pool: asyncpg.Pool, task_ids: list[str]) -> None:
    """Forget the stored output of these tasks' attempts (retention deleted their logs)."""
    await pool.execute("DELETE FROM log_chunks WHERE task_id = ANY($1::text[])", task_ids)


async def append_chunk(
    connection: asyncpg.Connection, task_id: str, attempt: int, offset: int, data: bytes
) -> None:
    """Store output of a running attempt at byte `offset`; readers are woken on commit."""
    await connection.execute(
        'INSERT INTO log_chunks (task_id, attempt, "offset", data) VALUES ($1, $2, $3, $4)',
        task_id,
        attempt,
        offset,
        data,
    )
    await connection.execute("SELECT pg_notify($1, $2)", LOG_CHANNEL, task_id)


def log_key(task_id: str, attempt: int) -> str:
    return f"logs/{task_id}/{attempt}.log"


def artifact_prefix(task_id: str) -> str:
    return f"artifacts/{task_id}/"


ATTEMPT_METADATA = "attempt"
SHA256_METADATA = "sha256"
# Artifacts looked up at once when an input's files are listed (a HEAD each).
_HEADS_AT_ONCE = 16


def artifact_metadata(attempt: int, sha256: str | None) -> dict[str, str]:
    """What an artifact is stored with: the attempt that uploaded it and, when the
    executor sent one (older executors do not), the SHA-256 of its bytes."""
    metadata = {ATTEMPT_METADATA: str(attempt)}
    if sha256 is not None:
        metadata[SHA256_METADATA] = sha256
    return metadata


def uploaded_by(info: ObjectInfo, attempt: int) -> bool:
    """Whether the artifact is the given attempt's. One stored before attempts were
    recorded cannot tell, and is taken as it is."""
    recorded = info.metadata.get(ATTEMPT_METADATA)
    return recorded is None or recorded == str(attempt)


async def attempt_artifacts(
    objects: ObjectStore, task_id: str, attempt: int, paths: Sequence[str]
) -> list[InputFile]:
    """The artifacts of `attempt` of the task at or under `paths` (all when empty), in
    path order. Files left by an earlier attempt of the task are left out."""
    prefix = artifact_prefix(task_id)
    # Listed by the longest common prefix of what is asked: one listing, not one per path.
    keys = [
        item.key
        async for item in objects.list(prefix + _common(paths))
        if wanted(item.key[len(prefix) :], paths)
    ]
    limit = asyncio.Semaphore(_HEADS_AT_ONCE)

    async def look(key: str) -> ObjectInfo | None:
        async with limit:
            try:
                return await objects.head(key)
            except ObjectNotFound:  # deleted meanwhile (retention)
                return None

    infos = await asyncio.gather(*(look(key) for key in keys))
    return [
        InputFile(
            path=info.key[len(prefix) :],
            size=info.size,
            sha256=info.metadata.get(SHA256_METADATA),
        )
        for info in infos
        if info is not None and uploaded_by(info, attempt)
    ]


def _common(paths: Sequence[str]) -> str:
    """The longest text every one of `paths` starts with (`dist` for `dist` alone: it
    may be a file as well as a directory); keys may be listed by a partial segment."""
    if not paths:
        return ""
    first, last = min(paths), max(paths)
    length = 0
    while length < min(len(first), len(last)) and first[length] == last[length]:
        length += 1
    return first[:length]


def check_artifact_path(path: str) -> str:
    """A relative path with plain segments; anything that could escape is refused."""
    segments = path.split("/")
    if (
        not path
        or len(path) > 1024
        or path.startswith("/")
        or any(s in ("", ".", "..") for s in segments)
        or any(c in path for c in ("\\", "\x00"))
        or any(ord(c) < 32 for c in path)
    ):
        raise BadRequest(f"invalid artifact path {path!r}: use a relative path without '..'")
    return path


async def has_chunks(pool: asyncpg.Pool | asyncpg.Connection, task_id: str, attempt: int) -> bool:
    return bool(
        await pool.fetchval(
            "SELECT EXISTS (SELECT 1 FROM log_chunks WHERE task_id = $1 AND attempt = $2)",
            task_id,
            attempt,
        )
    )


async def chunks_after(
    pool: asyncpg.Pool, task_id: str, attempt: int, offset: int
) -> list[tuple[int, bytes]]:
    rows = await pool.fetch(
        'SELECT "offset", data FROM log_chunks WHERE task_id = $1 AND attempt = $2 '
        'AND "offset" + length(data) > $3 ORDER BY "offset"',
        task_id,
        attempt,
        offset,
    )
    return [(int(r[0]), bytes(r[1])) for r in rows]


async def read_log(
    pool: asyncpg.Pool, objects: ObjectStore, task_id: str, attempt: int, offset: int = 0
) -> AsyncIterator[bytes]:
    """The attempt's output from `offset`: from the database while it is there, else from
    object storage (an attempt without output has an empty log)."""
    chunks = await chunks_after(pool, task_id, attempt, offset)
    if chunks:
        for start, data in chunks:
            yield data[max(0, offset - start) :]
        return
    try:
        if offset:
            yield await objects.get_range(log_key(task_id, attempt), offset)
        else:
            async for data in objects.get_stream(log_key(task_id, attempt)):
                yield data
    except ObjectNotFound:
        return


# A range is read a piece at a time, so a reader asking for a large part of a large log
# holds no more than a piece of it at once.
_RANGE_PIECE = 1024 * 1024


async def log_size(
    pool: asyncpg.Pool, objects: ObjectStore, task_id: str, attempt: int, *, live: bool
) -> int:
    """How many bytes of output the attempt has: in the database while it is `live` there
    (so far, if it still runs), else the stored object's size (0 when it wrote nothing)."""
    if live:
        size = await pool.fetchval(
            'SELECT max("offset" + length(data)) FROM log_chunks '
            "WHERE task_id = $1 AND attempt = $2",
            task_id,
            attempt,
        )
        if size is not None:
            return int(size)
    try:
        return (await objects.head(log_key(task_id, attempt))).size
    except ObjectNotFound:
        return 0


async def read_range(
    pool: asyncpg.Pool,
    objects: ObjectStore,
    task_id: str,
    attempt: int,
    *,
    start: int,
    end: int,
) -> AsyncIterator[bytes]:
    """Bytes `start` to `end` (exclusive) of the attempt's output, wherever they are: a
    piece moved to object storage while earlier pieces were read from the database is read
    from there."""
    for piece in range(start, end, _RANGE_PIECE):
        piece_end = min(end, piece + _RANGE_PIECE)
        rows = await pool.fetch(
            'SELECT "offset", data FROM log_chunks WHERE task_id = $1 AND attempt = $2 '
            'AND "offset" < $4 AND "offset" + length(data) > $3 ORDER BY "offset"',
            task_id,
            attempt,
            piece,
            piece_end,
        )
        if rows:
            for row in rows:
                offset, data = int(row[0]), bytes(row[1])
                yield data[max(0, piece - offset) : piece_end - offset]
            continue
        try:
            yield await objects.get_range(log_key(task_id, attempt), piece, piece_end)
        except ObjectNotFound:
            return


async def archive(pool: asyncpg.Pool, objects: ObjectStore, task_id: str, attempt: int) -> None:
    """Move an ended attempt's output to object storage, then drop it from the database.
    If the store is unreachable the output stays (and is served) where it is. An attempt
    without output has nothing to move (readers treat a missing log as empty).

    Completion and the timer loop may archive one attempt at once: archives of an attempt
    take turns (a transaction lock), and each looks again once it has its turn, so a later
    one finds the output moved and leaves the stored log alone instead of overwriting it
    with nothing."""
    if not await has_chunks(pool, task_id, attempt):
        return
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('archive:' || $1), $2)", task_id, attempt
        )
        if not await has_chunks(connection, task_id, attempt):
            return
        rows = connection.cursor(
            'SELECT data FROM log_chunks WHERE task_id = $1 AND attempt = $2 ORDER BY "offset"',
            task_id,
            attempt,
        )

        async def body() -> AsyncIterator[bytes]:
            async for row in rows:
                yield bytes(row[0])

        await objects.put_stream(log_key(task_id, attempt), body(), content_type="text/plain")
        await connection.execute(
            "DELETE FROM log_chunks WHERE task_id = $1 AND attempt = $2", task_id, attempt
        )


async def archive_pending(pool: asyncpg.Pool, objects: ObjectStore, limit: int = 50) -> int:
    """Archive ended attempts whose output is still in the database."""
    rows = await pool.fetch(
        """
        SELECT DISTINCT c.task_id, c.attempt FROM log_chunks c
        JOIN leases l ON l.task_id = c.task_id AND l.attempt = c.attempt
        WHERE l.state <> 'active' LIMIT $1
        """,
        limit,
    )
    done = 0
    for row in rows:
        try:
            await archive(pool, objects, row["task_id"], row["attempt"])
            done += 1
        except ObjectStoreError as exc:
            log.warning("log archive delayed", task_id=row["task_id"], error=str(exc))
            break
    return done
