"""The run index projection: incremental equals rebuilt, crash safety, concurrent
runners, prefix queries and keyset pagination."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import asyncpg

from eventlog.postgres import create_pool
from eventlog.records import RecordedEvent
from eventlog.store import EventStore
from projections.index import IndexProjection
from projections.index_queries import count_runs, list_runs
from projections.rebuild import RebuildProgress, rebuild
from projections.runner import ProjectionRunner
from tests.workload import GROUPS, generate

ROOT = Path(__file__).resolve().parents[2]


async def index_rows(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await pool.fetch("SELECT * FROM runs_index ORDER BY run_id")]


async def started_runner(
    store: EventStore,
    batch_size: int = 2000,
    on_applied: Callable[[Sequence[RecordedEvent] | None], None] | None = None,
) -> ProjectionRunner:
    runner = ProjectionRunner(
        store, IndexProjection(), batch_size=batch_size, on_applied=on_applied
    )
    await runner.start()
    return runner


async def test_incremental_index_equals_rebuild(store: EventStore, database_dsn: str) -> None:
    """Folding the log in small live batches while it is written gives exactly the rows a
    rebuild from scratch gives; the rebuild reports progress."""
    runner = await started_runner(store, batch_size=7)
    following = asyncio.create_task(runner.run())
    await generate(store, 300, seed=3)
    await runner.catch_up()
    following.cancel()
    incremental = await index_rows(store.pool)
    assert len(incremental) == 300

    reports: list[RebuildProgress] = []
    final = await rebuild(
        store,
        database_dsn,
        IndexProjection(),
        page_size=50,
        progress=reports.append,
        progress_every=0,
    )
    assert final.position == await store.head()
    assert reports
    assert reports[-1].position == final.position
    assert await index_rows(store.pool) == incremental
    assert runner.lag == 0


async def test_two_runners_apply_each_batch_once(store: EventStore, database_dsn: str) -> None:
    """Two processes' runners on one projection (two stores, two pools): the table ends
    equal to a rebuild and no event was applied twice; each runner reports exactly the
    events it applied to whoever listens (the run view cache)."""
    other_pool = await create_pool(database_dsn, max_size=4)
    other_store = EventStore(other_pool, dsn=database_dsn)
    await other_store.start()
    try:
        await generate(store, 200, seed=5)
        told: list[list[Sequence[RecordedEvent] | None]] = [[], []]
        first = await started_runner(store, batch_size=13, on_applied=told[0].append)
        second = await started_runner(other_store, batch_size=17, on_applied=told[1].append)
        await asyncio.gather(first.catch_up(), second.catch_up())
        applied = first.events_applied + second.events_applied
        for runner, heard in zip((first, second), told, strict=True):
            assert sum(len(batch) for batch in heard if batch is not None) == (
                runner.events_applied
            )
        rows = await index_rows(store.pool)
    finally:
        await other_store.close()
        await other_pool.close()
    total = await store.pool.fetchval(
        "SELECT count(*) FROM events WHERE type IN "
        "('run_created', 'run_phase_changed', 'run_result_changed')"
    )
    assert applied == total
    await rebuild(store, database_dsn, IndexProjection())
    assert await index_rows(store.pool) == rows


async def test_killed_runner_resumes_to_the_rebuilt_state(
    store: EventStore, database_dsn: str
) -> None:
    """A runner process SIGKILLed mid-catch-up and restarted ends equal to a rebuild:
    batches and checkpoints commit together, so nothing is repeated or lost."""
    await generate(store, 400, seed=9)
    command = ["-m", "tests.integration.projection_worker", database_dsn, "index", "5"]
    worker = await asyncio.create_subprocess_exec(
        sys.executable, *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    assert worker.stdout is not None
    for _ in range(20):
        assert (await worker.stdout.readline()).startswith(b"batch")
    worker.kill()
    await worker.wait()
    checkpoint = await store.pool.fetchval(
        "SELECT position FROM projection_checkpoints WHERE name = 'index'"
    )
    assert 0 < checkpoint < await store.head()

    restarted = await asyncio.create_subprocess_exec(
        sys.executable, *command, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await asyncio.wait_for(restarted.communicate(), 120)
    assert restarted.returncode == 0
    assert output.decode().strip().endswith("caught up")
    resumed = await index_rows(store.pool)
    await rebuild(store, database_dsn, IndexProjection())
    assert await index_rows(store.pool) == resumed


async def test_group_prefix_matches_the_path_and_below_only(store: EventStore) -> None:
    """`/org/a` matches `/org/a` and everything below it, never the sibling `/org/ab`."""
    await generate(store, 120, seed=11)
    runner = await started_runner(store)
    await runner.catch_up()
    page = await list_runs(store.pool, group="/org/a", limit=1000)
    groups = {entry.group for entry in page.runs}
    assert groups == {"/org/a", "/org/a/main", "/org/a/main/nightly"}
    expected = await store.pool.fetchval(
        "SELECT count(*) FROM runs_index "
        "WHERE group_path IN ('/org/a', '/org/a/main', '/org/a/main/nightly')"
    )
    assert len(page.runs) == expected
    nested = await list_runs(store.pool, group="/org/a/main/", limit=1000)
    assert {e.group for e in nested.runs} == {"/org/a/main", "/org/a/main/nightly"}
    counts = await count_runs(store.pool, group="/org/a")
    assert sum(c.runs for c in counts) == expected
    finished = await list_runs(store.pool, group="/", phase="finished", result="failed", limit=1000)
    assert finished.runs
    assert all(e.phase == "finished" and e.result == "failed" for e in finished.runs)
    assert set(GROUPS) >= {e.group for e in finished.runs}


async def test_pagination_returns_every_run_once_while_runs_are_created(
    store: EventStore,
) -> None:
    """Keyset pages, newest first, with new runs created between pages: every run that
    existed when paging began shows up exactly once."""
    await generate(store, 150, seed=13, prefix="old")
    runner = await started_runner(store)
    await runner.catch_up()
    existing = {r[0] for r in await store.pool.fetch("SELECT run_id FROM runs_index")}
    seen: list[str] = []
    cursor = None
    batch = 0
    while True:
        page = await list_runs(store.pool, limit=20, cursor=cursor)
        seen += [entry.id for entry in page.runs]
        assert [e.created_at for e in page.runs] == sorted(
            (e.created_at for e in page.runs), reverse=True
        )
        await generate(store, 3, seed=100 + batch, prefix=f"new{batch}-")
        await runner.catch_up()
        batch += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen))
    assert existing <= set(seen)
    assert all(run_id.startswith("old") or run_id.startswith("new") for run_id in seen)
