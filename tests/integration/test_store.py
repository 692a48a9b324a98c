"""The event store against a real PostgreSQL: appends, reads, conflicts, bad input,
idempotent retries, unknown event types and the hash chain."""

from __future__ import annotations

import asyncio
import functools
from datetime import UTC, datetime

import asyncpg
import pytest

from eventlog.errors import (
    EmptyAppend,
    EventIdReused,
    PayloadTooLarge,
    StreamNotFound,
    VersionConflict,
)
from eventlog.filter import EventFilter
from eventlog.records import Metadata, new_event_id
from eventlog.store import NO_STREAM, EventStore
from runsvc.domain.events import SYSTEM, TaskStatusChanged, UnknownEvent

T0 = datetime(2026, 1, 1, tzinfo=UTC)
META = Metadata(actor=SYSTEM, recorded_at=T0, request_id="req-1")


def status(task: str = "build", attempt: int = 1) -> TaskStatusChanged:
    return TaskStatusChanged(task=task, status="running", attempt=attempt, at=T0)


async def count_rows(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM events"))


async def test_append_and_read_back(store: EventStore) -> None:
    """Events come back from the stream and the global log as they were appended, with
    versions from 1 and strictly increasing positions."""
    first = await store.append("run-a", [status("x"), status("y")], NO_STREAM, meta=META)
    second = await store.append("run-b", [status("z")], NO_STREAM, meta=META, scope="/org/p")
    third = await store.append("run-a", [status("w")], 2, meta=META)
    assert first[1] == first[0] + 1
    assert first[-1] < second[0] < third[0]

    stream = await store.read_stream("run-a")
    assert [e.version for e in stream] == [1, 2, 3]
    assert [e.event for e in stream] == [status("x"), status("y"), status("w")]
    assert [e.position for e in stream] == [*first, *third]
    assert stream[0].meta == META

    page = await store.read_all(after=0, limit=10)
    assert [e.position for e in page.events] == sorted([*first, *second, *third])
    assert page.next_after == third[0]
    assert page.events[2].scope == "/org/p"
    assert await store.stream_version("run-a") == 3
    assert await store.stream_version("run-none") == 0
    assert await store.head() == third[0]
    assert [e.version for e in await store.read_stream("run-a", from_version=2)] == [2, 3]


async def test_racing_appends_at_one_version_have_one_winner(store: EventStore) -> None:
    """N callers appending at the same expected version: exactly one wins each version,
    the others get a conflict, and the stream has no holes."""
    winners = await asyncio.gather(
        *(store.append("run-r", [status(f"t{i}")], NO_STREAM, meta=META) for i in range(20)),
        return_exceptions=True,
    )
    assert sum(not isinstance(w, BaseException) for w in winners) == 1
    assert all(isinstance(w, VersionConflict) for w in winners if isinstance(w, BaseException))

    async def writer(name: str) -> int:
        written = 0
        while written < 10:
            version = await store.stream_version("run-r")
            try:
                await store.append("run-r", [status(name, written)], version, meta=META)
            except VersionConflict:
                continue
            written += 1
        return written

    counts = await asyncio.gather(*(writer(f"w{i}") for i in range(8)))
    versions = [e.version for e in await store.read_stream("run-r")]
    assert versions == list(range(1, 1 + 1 + sum(counts)))


async def test_requests_in_one_batch_keep_their_own_version_checks(store: EventStore) -> None:
    """Appends coalesced into one transaction still fail or succeed one by one: a
    conflicting request does not take its batch neighbours down."""
    await store.append("run-c", [status()], NO_STREAM, meta=META)
    results = await asyncio.gather(
        store.append("run-c", [status("ok")], 1, meta=META),
        store.append("run-c", [status("stale")], 1, meta=META),
        store.append("run-d", [status("new")], NO_STREAM, meta=META),
        store.append("run-c", [status("next")], 2, meta=META),
        return_exceptions=True,
    )
    assert isinstance(results[1], VersionConflict)
    assert not any(isinstance(r, BaseException) for i, r in enumerate(results) if i != 1)
    assert [e.event.task for e in await store.read_stream("run-c")] == [  # type: ignore[union-attr]
        "build",
        "ok",
        "next",
    ]


async def test_bad_input_is_refused_and_nothing_written(store: EventStore) -> None:
    """Unknown stream, empty append, wrong version, oversized payload: each a typed error
    with a clear message, and the log is untouched."""
    with pytest.raises(StreamNotFound, match="run-missing"):
        await store.read_stream("run-missing")
    with pytest.raises(StreamNotFound):
        await store.append("run-missing", [status()], 3, meta=META)
    with pytest.raises(EmptyAppend):
        await store.append("run-e", [], NO_STREAM, meta=META)
    await store.append("run-e", [status()], NO_STREAM, meta=META)
    with pytest.raises(VersionConflict, match="at version 1, expected 5") as conflict:
        await store.append("run-e", [status()], 5, meta=META)
    assert (conflict.value.expected, conflict.value.actual) == (5, 1)
    with pytest.raises(VersionConflict, match="already exists"):
        await store.append("run-e", [status()], NO_STREAM, meta=META)
    huge = UnknownEvent(type="blob", raw=b"\xc4" + b"x" * (store.max_payload_bytes + 10))
    with pytest.raises(PayloadTooLarge, match="over the limit"):
        await store.append("run-e", [status(), huge], 1, meta=META)
    assert await count_rows(store.pool) == 1


async def test_retried_append_with_same_ids_is_stored_once(store: EventStore) -> None:
    """An append retried after a lost acknowledgement (same event ids) returns the
    original positions and writes nothing twice."""
    ids = [new_event_id(), new_event_id()]
    first = await store.append(
        "run-i", [status("a"), status("b")], NO_STREAM, meta=META, event_ids=ids
    )
    await store.append("run-i", [status("c")], 2, meta=META)
    again = await store.append(
        "run-i", [status("a"), status("b")], NO_STREAM, meta=META, event_ids=ids
    )
    assert again == first
    assert await count_rows(store.pool) == 3
    with pytest.raises(EventIdReused):
        await store.append("run-j", [status("a")], NO_STREAM, meta=META, event_ids=ids[:1])


async def test_unknown_event_types_pass_through(store: EventStore) -> None:
    """An event type this version does not know is kept byte for byte, not crashed on."""
    future = UnknownEvent(type="run_teleported", raw=b"\x81\xa2to\xa4mars")
    await store.append("run-u", [future, status()], NO_STREAM, meta=META)
    events = await store.read_stream("run-u")
    assert events[0].event == future
    assert events[0].type == "run_teleported"
    assert isinstance(events[0].event, UnknownEvent)
    assert events[0].event.data() == {"to": "mars"}
    assert (await store.verify_stream("run-u")).ok


async def test_filtered_pages_progress_and_match_by_path(store: EventStore) -> None:
    """Filters by type, stream and scope path; a scope `/a/b` does not match `/a/bc`; a
    sparse filter still advances `next_after` past what it scanned."""
    await store.append("run-1", [status()], NO_STREAM, meta=META, scope="/a/b")
    await store.append("run-2", [status()], NO_STREAM, meta=META, scope="/a/bc")
    await store.append("run-3", [status()], NO_STREAM, meta=META, scope="/a/b/c")
    await store.append("other-4", [UnknownEvent("x", b"\x80")], NO_STREAM, meta=META)
    by_scope = await store.read_all(filter=EventFilter(scope="/a/b"))
    assert [e.stream for e in by_scope.events] == ["run-1", "run-3"]
    assert by_scope.next_after == await store.head()
    by_type = await store.read_all(filter=EventFilter(types=frozenset({"x"})))
    assert [e.stream for e in by_type.events] == ["other-4"]
    by_prefix = await store.read_all(filter=EventFilter(stream_prefix="run-"), limit=2)
    assert [e.stream for e in by_prefix.events] == ["run-1", "run-2"]
    assert by_prefix.next_after == by_prefix.events[-1].position
    nothing = await store.read_all(filter=EventFilter(streams=frozenset({"run-9"})))
    assert nothing.events == []
    assert nothing.next_after == await store.head()
    for event in by_scope.events:
        assert EventFilter(scope="/a/b").matches(event)


async def test_partitions_split_streams_alike_in_sql_and_in_memory(store: EventStore) -> None:
    """The parts of a partition are disjoint, together hold every event, keep each stream
    whole, and the database and `matches` put every event in the same part."""
    for n in range(24):
        await store.append(f"run-{n:04x}", [status(), status()], NO_STREAM, meta=META)
    everything = (await store.read_all(limit=1000)).events
    parts = [
        (await store.read_all(limit=1000, filter=EventFilter(partition=(3, i)))).events
        for i in range(3)
    ]
    assert sorted(e.position for part in parts for e in part) == [e.position for e in everything]
    for index, part in enumerate(parts):
        assert part, "a part is empty: the split is lopsided"
        assert all(EventFilter(partition=(3, index)).matches(e) for e in part)
        others = {e.stream for i, p in enumerate(parts) if i != index for e in p}
        assert not others & {e.stream for e in part}


async def test_hash_chain_detects_tampering(store: EventStore) -> None:
    """Altering, removing or reordering stored events (by SQL) breaks verification."""
    for name in ("run-alter", "run-remove", "run-swap"):
        await store.append(name, [status(f"{name}{i}") for i in range(4)], NO_STREAM, meta=META)
        assert (await store.verify_stream(name)).ok

    await store.pool.execute(
        "UPDATE events SET data = set_byte(data, 10, 65) WHERE stream = 'run-alter' AND version = 2"
    )
    report = await store.verify_stream("run-alter")
    assert not report.ok
    assert "version 2" in report.problems[0]

    await store.pool.execute("DELETE FROM events WHERE stream = 'run-remove' AND version = 2")
    assert not (await store.verify_stream("run-remove")).ok

    await store.pool.execute(
        """
        UPDATE events e SET data = o.data, meta = o.meta, hash = o.hash, type = o.type
        FROM events o
        WHERE e.stream = 'run-swap' AND o.stream = 'run-swap'
          AND ((e.version = 2 AND o.version = 3) OR (e.version = 3 AND o.version = 2))
        """
    )
    assert not (await store.verify_stream("run-swap")).ok


async def test_appends_survive_killed_connections(store: EventStore) -> None:
    """Connections terminated mid-append (pg_terminate_backend) make appends retry, never
    fail or write twice: every acknowledged append is stored exactly once.

    Every connection is killed at bounded moments (each time the writers have acknowledged
    a few more appends, while the others are in flight), so the appends always get a
    window to finish, however slow the machine is."""
    admin = await asyncpg.connect(store.notifier._dsn)
    progress = asyncio.Condition()
    acknowledged_count = 0
    kills_wanted, every = 8, 9
    killed = 0

    def reached(goal: int) -> bool:
        return acknowledged_count >= goal

    async def killer() -> None:
        nonlocal killed
        for round_ in range(1, kills_wanted + 1):
            async with progress:
                await progress.wait_for(functools.partial(reached, round_ * every))
            killed += await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )

    async def writer(index: int) -> list[int]:
        nonlocal acknowledged_count
        positions = []
        for i in range(15):
            positions += await store.append(f"run-k{index}-{i}", [status()], NO_STREAM, meta=META)
            async with progress:
                acknowledged_count += 1
                progress.notify_all()
        return positions

    killing = asyncio.create_task(killer())
    try:
        written = await asyncio.gather(*(writer(i) for i in range(6)))
        await killing
    finally:
        killing.cancel()
        await asyncio.gather(killing, return_exceptions=True)
        await admin.close()
    acknowledged = sorted(p for positions in written for p in positions)
    # Read on a fresh connection: the last round may have killed idle pooled ones, and a
    # pooled connection whose termination notice has arrived but not yet its EOF fails
    # its next query ("cannot switch to state ..."; the service retries those).
    reader = await asyncpg.connect(store.notifier._dsn)
    try:
        stored = [r[0] for r in await reader.fetch("SELECT position FROM events ORDER BY 1")]
    finally:
        await reader.close()
    assert acknowledged == stored
    assert len(stored) == 90
    assert killed > 0


async def test_group_commit_batches_concurrent_appends(store: EventStore) -> None:
    """Concurrent appends share transactions: fewer batches than appends."""
    before = store.appender.batches_written
    await asyncio.gather(
        *(store.append(f"run-g{i}", [status()], NO_STREAM, meta=META) for i in range(200))
    )
    assert store.appender.batches_written - before < 200
    assert await count_rows(store.pool) == 200


async def test_append_in_transaction_commits_or_rolls_back_with_the_caller(
    store: EventStore,
) -> None:
    """Events appended inside a caller's transaction are stored only if it commits, keep
    the version check, and continue the hash chain of group-committed appends."""
    await store.pool.execute("CREATE TABLE side (x int)")
    await store.append("run-t", [status("a")], NO_STREAM, meta=META)
    async with store.pool.acquire() as connection:

        async def append_then_fail() -> None:
            async with connection.transaction():
                await connection.execute("INSERT INTO side VALUES (1)")
                await store.append_in_transaction(connection, "run-t", [status("b")], 1, meta=META)
                raise RuntimeError("caller fails after appending")

        with pytest.raises(RuntimeError):
            await append_then_fail()
        assert await store.stream_version("run-t") == 1
        async with connection.transaction():
            positions = await store.append_in_transaction(
                connection, "run-t", [status("b"), status("c")], 1, meta=META
            )
            await connection.execute("INSERT INTO side VALUES (2)")
        with pytest.raises(VersionConflict):
            await store.append_in_transaction(connection, "run-t", [status("d")], 1, meta=META)
    assert [e.position for e in await store.read_stream("run-t", from_version=2)] == positions
    assert await store.pool.fetchval("SELECT array_agg(x) FROM side") == [2]
    await store.append("run-t", [status("e")], 3, meta=META)
    assert (await store.verify_stream("run-t")).ok
