"""Index dumps in a real SeaweedFS: round trip with tail replay, corrupt dumps refused in
favour of the previous one, pruning, and an object store outage during a snapshot."""

from __future__ import annotations

import asyncpg
import pytest

from eventlog.store import EventStore
from projections import snapshot
from projections.index import IndexProjection
from projections.runner import ProjectionRunner
from runsvc.infra.objectstore import ObjectStore, ObjectStoreUnavailable
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.service.snapshotter import Snapshotter
from tests.workload import generate


async def index_rows(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await pool.fetch("SELECT * FROM runs_index ORDER BY run_id")]


async def caught_up_runner(store: EventStore) -> ProjectionRunner:
    runner = ProjectionRunner(store, IndexProjection())
    await runner.start()
    await runner.catch_up()
    return runner


async def test_round_trip_restores_then_replays_the_tail(
    store: EventStore, object_store: ObjectStore
) -> None:
    """Dump, write more, wipe the index, restore the dump and replay only the tail: the
    index equals the original, and the dump records its position and checksum."""
    await generate(store, 150, seed=21)
    runner = await caught_up_runner(store)
    info = await snapshot.create_dump(store.pool, object_store, batch_rows=40)
    assert info.rows == 150
    assert info.position == runner.position
    assert len(info.sha256) == 64
    assert (await snapshot.latest_pointer(object_store)) == info

    await generate(store, 30, seed=22, prefix="late")
    await runner.catch_up()
    original = await index_rows(store.pool)

    await store.pool.execute("TRUNCATE runs_index")
    await store.pool.execute("UPDATE projection_checkpoints SET position = 0 WHERE name = 'index'")
    restored = await snapshot.restore_newest(store.pool, object_store)
    assert restored is not None
    assert restored[1] == info.position
    tail = await caught_up_runner(store)
    assert tail.events_applied < 30 * 4 + 1  # only the tail was replayed
    assert await index_rows(store.pool) == original


async def test_a_truncated_dump_is_refused_and_the_previous_one_used(
    store: EventStore, object_store: ObjectStore
) -> None:
    """A dump cut short fails its checksum: restoring it changes nothing, and restoring
    the newest falls back to the dump before it."""
    await generate(store, 60, seed=23)
    await caught_up_runner(store)
    older = await snapshot.create_dump(store.pool, object_store)
    before = await index_rows(store.pool)
    newer = await snapshot.create_dump(store.pool, object_store)
    whole = await object_store.get(newer.key)
    await object_store.put(newer.key, whole[: len(whole) // 2])

    with pytest.raises(snapshot.CorruptDump):
        await snapshot.restore_dump(store.pool, object_store, newer.key)
    assert await index_rows(store.pool) == before  # nothing changed

    await store.pool.execute("TRUNCATE runs_index")
    restored = await snapshot.restore_newest(store.pool, object_store)
    assert restored is not None
    assert restored[0].key == older.key
    assert await index_rows(store.pool) == before


async def test_only_the_newest_dumps_are_kept(store: EventStore, object_store: ObjectStore) -> None:
    """Publishing prunes to `keep` dumps, newest first."""
    await generate(store, 10, seed=24)
    runner = await caught_up_runner(store)
    keys = []
    for round_ in range(4):
        await generate(store, 2, seed=30 + round_, prefix=f"r{round_}-")
        await runner.catch_up()
        keys.append((await snapshot.create_dump(store.pool, object_store, keep=2)).key)
    listed = [d.key for d in await snapshot.list_dumps(object_store)]
    assert listed == list(reversed(keys[-2:]))


async def test_object_store_down_during_a_snapshot_then_back(
    store: EventStore, object_store: ObjectStore, seaweed: EmbeddedSeaweed
) -> None:
    """With SeaweedFS stopped a dump fails (and is counted, not raised out of the loop's
    reach); once it is back the next dump succeeds with every run in it."""
    await generate(store, 40, seed=25)
    await caught_up_runner(store)
    snapshotter = Snapshotter(store.pool, object_store, interval_s=600, keep=5)
    await seaweed.astop()
    try:
        with pytest.raises(ObjectStoreUnavailable):
            await snapshotter.create()
    finally:
        await seaweed.astart()
    info = await snapshotter.create()
    assert info.rows == 40
    assert snapshotter.failures == 0
    assert snapshotter.age_s is not None
