"""Task output: moving from the database to object storage (archived once, whole), and
read by byte range from either."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec

from eventlog.postgres import create_pool
from runsvc.http.keys import LEASES, OBJECTS
from runsvc.infra.objectstore import ObjectStore
from runsvc.service.task_logs import append_chunk, archive, log_key
from runsvc.wire.executor import Completion
from tests.fixtures.service import Service
from tests.integration.test_runs_api import caught_up, create


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


LINES = b"".join(f"line {i:04d}\n".encode() for i in range(1000))  # 10 bytes a line


async def _running_task_with_output(service: Service) -> tuple[str, str]:
    """A task whose attempt is running and has written LINES: (task id, lease)."""
    await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    await caught_up(service)
    claim = await service.app[LEASES].claim("executor-1", {}, wait_s=0)
    assert claim is not None
    for offset in range(0, len(LINES), 3000):  # chunks that do not end at a line
        response = await service.client.put(
            f"/api/v1/executor/leases/{claim.lease}/logs",
            data=LINES[offset : offset + 3000],
            headers={**service.auth("executor"), "X-Log-Offset": str(offset)},
        )
        assert response.status == 204
    return claim.task.task_id, claim.lease


async def _ranges_are_served(service: Service, task_id: str, source: str) -> None:
    async def get(range_: str) -> tuple[int, str | None, bytes]:
        response = await service.client.get(
            f"/api/v1/tasks/{task_id}/logs",
            headers={**service.auth("reader"), "Range": range_},
        )
        if response.status < 400:
            assert response.headers["X-Log-Source"] == source
        return response.status, response.headers.get("Content-Range"), await response.read()

    size = len(LINES)
    assert await get("bytes=-25") == (206, f"bytes 9975-9999/{size}", LINES[-25:])
    assert await get("bytes=2990-3009") == (206, f"bytes 2990-3009/{size}", LINES[2990:3010])
    assert await get("bytes=9990-") == (206, f"bytes 9990-9999/{size}", LINES[-10:])
    # Past the end is cut at the end; a suffix longer than the log is the whole log.
    assert await get("bytes=5000-99999") == (206, f"bytes 5000-9999/{size}", LINES[5000:])
    assert await get("bytes=-99999") == (206, f"bytes 0-9999/{size}", LINES)
    for unsatisfiable in ("bytes=10000-", "bytes=20-10", "bytes=-0", "bytes=0-1,5-6", "bytes=x"):
        status, content_range, body = await get(unsatisfiable)
        assert (status, content_range) == (416, f"bytes */{size}"), unsatisfiable
        assert msgspec.json.decode(body)["code"] == "range_not_satisfiable"
    # Another unit is ignored, as HTTP allows: the whole log.
    assert await get("lines=1-2") == (200, None, LINES)


async def test_a_log_is_read_by_byte_range_from_the_database_and_from_object_storage(
    service: Service,
) -> None:
    """A reader can fetch the end of a log, and any earlier range, without the rest:
    while the attempt's output is in the database and after it moved to object storage."""
    task_id, lease = await _running_task_with_output(service)
    await _ranges_are_served(service, task_id, "database")

    await service.app[LEASES].complete(lease, Completion(status="success", exit_code=0))
    await archive(service.app[LEASES].pool, service.app[OBJECTS], task_id, 1)
    await _ranges_are_served(service, task_id, "object-storage")


async def test_a_log_is_read_on_from_an_offset_and_an_empty_log_ignores_a_range(
    service: Service,
) -> None:
    """`offset` reads (and follows) from a byte on, as a reader that fetched the end of a
    running attempt's log does; Range with follow is refused; an empty log is an empty 200
    whatever range is asked."""
    task_id, lease = await _running_task_with_output(service)
    reader = service.auth("reader")
    path = f"/api/v1/tasks/{task_id}/logs"
    follower = asyncio.create_task(
        service.client.get(path, params={"follow": "true", "offset": "9990"}, headers=reader)
    )
    await service.client.put(
        f"/api/v1/executor/leases/{lease}/logs",
        data=b"the end\n",
        headers={**service.auth("executor"), "X-Log-Offset": str(len(LINES))},
    )
    await service.app[LEASES].complete(lease, Completion(status="success", exit_code=0))
    followed = await asyncio.wait_for(follower, 30)
    assert await followed.read() == b"line 0999\nthe end\n"

    refused = await service.client.get(
        path, params={"follow": "true"}, headers={**reader, "Range": "bytes=-10"}
    )
    assert refused.status == 400

    await create(service, config={"tasks": [{"name": "quiet", "run": "true"}]})
    await caught_up(service)
    quiet = await service.app[LEASES].claim("executor-1", {}, wait_s=0)
    assert quiet is not None
    await service.app[LEASES].complete(quiet.lease, Completion(status="success", exit_code=0))
    empty = await service.client.get(
        f"/api/v1/tasks/{quiet.task.task_id}/logs", headers={**reader, "Range": "bytes=-10"}
    )
    assert (empty.status, await empty.read()) == (200, b"")
