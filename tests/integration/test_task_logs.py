"""Task output moving from the database to object storage: archived once, whole."""

from __future__ import annotations

import asyncio

import asyncpg

from eventlog.postgres import create_pool
from runsvc.infra.objectstore import ObjectStore
from runsvc.service.task_logs import append_chunk, archive, log_key


async def test_racing_archives_of_one_attempt_keep_the_whole_log(
    database_dsn: str, object_store: ObjectStore
) -> None:
    """Completion and the timer loop may archive the same attempt at once. However the
    archives interleave, the stored log is the whole output, never an empty object written
    by an archive that found the chunks already moved.

    A pool of two connections makes the interleaving certain: every archive sees the chunks
    before any of them moves them, and the later ones start after the first has."""
    pool = await create_pool(database_dsn, min_size=1, max_size=2)
    try:
        await _race_archives(pool, object_store)
    finally:
        await pool.close()


async def _race_archives(pool: asyncpg.Pool, object_store: ObjectStore) -> None:
    for attempt in range(1, 11):
        chunks = [f"line {i} of attempt {attempt}\n".encode() for i in range(5)]
        offset = 0
        async with pool.acquire() as connection:
            for chunk in chunks:
                await append_chunk(connection, "racy-task", attempt, offset, chunk)
                offset += len(chunk)

        await asyncio.gather(*(archive(pool, object_store, "racy-task", attempt) for _ in range(8)))

        stored = await object_store.get(log_key("racy-task", attempt))
        assert stored == b"".join(chunks), f"attempt {attempt}"
        left = await pool.fetchval(
            "SELECT count(*) FROM log_chunks WHERE task_id = 'racy-task' AND attempt = $1",
            attempt,
        )
        assert left == 0
