"""Task output and artifacts: while an attempt runs its output lives in PostgreSQL (chunks
keyed by offset); once the attempt ends it moves to object storage at
`logs/<task id>/<attempt>.log`. Artifacts go straight to `artifacts/<task id>/<path>`.
Keys carry only the task id, never the run or the group."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import structlog

from runsvc.domain.errors import BadRequest
from runsvc.infra.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError

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
