"""The event store: append, read a stream, read the whole log, subscribe, verify.

Global order guarantee
----------------------
Every event gets a `position` (bigint). A reader that pages through the log by position
(`read_all(after=p)`, `subscribe(after=p)`) never misses and never reorders a committed
event, whatever the number of concurrent writers and service processes, and positions
increase strictly in delivery order.

How: positions are handed out inside `eventlog_append` (eventlog/migrations) while holding a
transaction-scoped advisory lock, so appending transactions commit one after another in
position order. PostgreSQL makes a committed transaction visible before it releases its
locks, so any snapshot sees a *prefix* of the log: there is never a visible position above
an invisible one, which is exactly the gap a plain sequence leaves (a transaction that drew
a lower number commits after one that drew a higher number, and a reader that already
moved past it skips it forever).

Cost: appends serialize on that lock from position assignment to commit. The appender wins
the throughput back by group commit (`eventlog.appender`): every append waiting at a moment
goes into one transaction of one function call, so the lock is taken once per batch, not
once per event. With a fast disk the lock is held well under a millisecond per batch; see
docs/BENCHMARKS.md for the measured rates.

Durability: an append returns only after its transaction committed. Nothing acknowledged
is lost; an append whose acknowledgement was lost can be retried with the same event ids
and is stored once.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TypeVar

import asyncpg
import msgspec

from eventlog.appender import CONNECTION_ERRORS, Appender, AppendRequest, Head, build_rows
from eventlog.errors import (
    CorruptEvent,
    EmptyAppend,
    PayloadTooLarge,
    StoreUnavailable,
    StreamNotFound,
    VersionConflict,
)
from eventlog.filter import EventFilter
from eventlog.hashchain import GENESIS, ChainReport, StoredRow, check_chain
from eventlog.notifier import Notifier
from eventlog.records import Metadata, RecordedEvent, decode_metadata, encode_metadata, new_event_id
from runsvc.domain.events import Event, UnknownEvent, decode_event, encode_event, event_type_of

NO_STREAM = 0
"""Expected version for creating a stream: it must not exist yet."""

DEFAULT_MAX_PAYLOAD = 1024 * 1024
_FILTERED_SCAN_WINDOW = 5000

T = TypeVar("T")

_COLUMNS = "position, stream, version, event_id, type, data, meta, hash, scope"


class ReadPage(msgspec.Struct, frozen=True):
    """A page of the global log. `next_after` is where the next page starts: past every
    event this page scanned, matching or not, so a sparse filter still makes progress."""

    events: list[RecordedEvent]
    next_after: int


def _recorded(row: asyncpg.Record) -> RecordedEvent:
    try:
        return _decoded(row)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise CorruptEvent(row[1], row[2], str(exc)) from exc


def _decoded(row: asyncpg.Record) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        stream=row[1],
        version=row[2],
        event_id=row[3],
        type=row[4],
        event=decode_event(row[4], row[5]),
        meta=decode_metadata(row[6]),
        hash=row[7],
        scope=row[8],
    )


# Streams with at least this many events are verified in a worker thread.
_VERIFY_ON_LOOP = 1000


class EventStore:
    """The event log on PostgreSQL. One per process: it owns the group-commit appender
    and the LISTEN connection that wakes subscribers."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        dsn: str,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
        retry_for: float = 30.0,
        poll_interval: float = 5.0,
    ) -> None:
        self.pool = pool
        self.max_payload_bytes = max_payload_bytes
        self._retry_for = retry_for
        self.appender = Appender(pool, retry_for=retry_for)
        self.notifier = Notifier(dsn, poll_interval=poll_interval)

    async def start(self) -> None:
        self.appender.start()
        await self.notifier.start()

    async def close(self) -> None:
        await self.appender.close()
        await self.notifier.close()

    async def __aenter__(self) -> EventStore:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- writing

    async def append(
        self,
        stream: str,
        events: Sequence[Event | UnknownEvent],
        expected_version: int,
        *,
        meta: Metadata | Sequence[Metadata],
        event_ids: Sequence[uuid.UUID] | None = None,
        scope: str | None = None,
    ) -> list[int]:
        """Append `events` to `stream` if it is at `expected_version` (`NO_STREAM` to
        create it); return their positions. `meta` is one Metadata for all events or one
        per event. Raises `VersionConflict`, `StreamNotFound`,
        `EmptyAppend`, `PayloadTooLarge`; in every error case nothing is written."""
        request = self._request(
            stream, events, expected_version, meta=meta, event_ids=event_ids, scope=scope
        )
        return await self.appender.submit(request)

    def _request(
        self,
        stream: str,
        events: Sequence[Event | UnknownEvent],
        expected_version: int,
        *,
        meta: Metadata | Sequence[Metadata],
        event_ids: Sequence[uuid.UUID] | None,
        scope: str | None,
    ) -> AppendRequest:
        """Validate and encode an append; raises before anything reaches the database."""
        if not events:
            raise EmptyAppend(f"append to {stream!r} carries no events")
        if expected_version < 0:
            raise ValueError("expected_version must be >= 0")
        if not isinstance(meta, Metadata) and len(meta) != len(events):
            raise ValueError("meta must be one Metadata, or one per event")
        if event_ids is not None and len(event_ids) != len(events):
            raise ValueError("event_ids must have one id per event")
        ids = list(event_ids) if event_ids is not None else [new_event_id() for _ in events]
        payloads = [encode_event(event) for event in events]
        largest = max(map(len, payloads))
        if largest > self.max_payload_bytes:
            raise PayloadTooLarge(largest, self.max_payload_bytes)
        request = AppendRequest(
            stream=stream,
            expected_version=expected_version,
            event_ids=ids,
            types=[event_type_of(event) for event in events],
            payloads=payloads,
            meta=(
                encode_metadata(meta)
                if isinstance(meta, Metadata)
                else [encode_metadata(m) for m in meta]
            ),
            scope=scope,
            future=asyncio.get_running_loop().create_future(),
        )
        return request

    async def append_in_transaction(
        self,
        connection: asyncpg.Connection,
        stream: str,
        events: Sequence[Event | UnknownEvent],
        expected_version: int,
        *,
        meta: Metadata | Sequence[Metadata],
        event_ids: Sequence[uuid.UUID] | None = None,
        scope: str | None = None,
    ) -> list[int]:
        """Append inside the caller's open transaction, so the events commit or roll back
        together with the caller's own writes (e.g. a key table row). No group commit:
        use it where atomicity with other rows matters, `append` everywhere else. The
        log lock is held from here to the caller's commit, so commit promptly."""
        request = self._request(
            stream, events, expected_version, meta=meta, event_ids=event_ids, scope=scope
        )
        row = await connection.fetchrow(
            "SELECT version, hash FROM events WHERE stream = $1 ORDER BY version DESC LIMIT 1",
            stream,
        )
        head = Head(row["version"], bytes(row["hash"])) if row else Head(0, GENESIS)
        if head.version != expected_version:
            stored = await connection.fetch(
                "SELECT position FROM events WHERE event_id = ANY($1::uuid[]) ORDER BY position",
                list(request.event_ids),
            )
            if len(stored) == len(request.event_ids):
                return [r["position"] for r in stored]
            if head.version == 0:
                raise StreamNotFound(stream)
            raise VersionConflict(stream, expected_version, head.version)
        columns, assumed, _ = build_rows([request], {stream: head})
        result = await connection.fetch(
            "SELECT * FROM eventlog_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            list(assumed.keys()),
            [h.version for h in assumed.values()],
            *columns,
        )
        conflict = result[0]["conflict_stream"]
        if conflict is not None:
            raise VersionConflict(stream, expected_version, result[0]["actual_version"])
        first = int(result[0]["first_position"])
        return list(range(first, first + len(request)))

    # -- reading

    async def read_stream(
        self,
        stream: str,
        *,
        from_version: int = 1,
        to_version: int | None = None,
        connection: asyncpg.Connection | None = None,
    ) -> list[RecordedEvent]:
        """The events of `stream` from `from_version` to `to_version` (inclusive), in
        order. Raises `StreamNotFound` when the stream has no events at all. Read on
        `connection` when given (a caller inside a transaction), else on a pooled one."""

        async def read(connection: asyncpg.Connection) -> list[asyncpg.Record]:
            rows: list[asyncpg.Record] = await connection.fetch(
                f"""
                SELECT {_COLUMNS} FROM events
                WHERE stream = $1 AND version >= $2 AND ($3::int IS NULL OR version <= $3)
                ORDER BY version
                """,
                stream,
                from_version,
                to_version,
            )
            if not rows and not await connection.fetchval(
                "SELECT EXISTS (SELECT 1 FROM events WHERE stream = $1)", stream
            ):
                raise StreamNotFound(stream)
            return rows

        rows = await (read(connection) if connection else self._with_connection(read))
        return [_recorded(row) for row in rows]

    async def stream_version(self, stream: str) -> int:
        """The version of `stream`: the number of events in it, 0 if it does not exist."""
        version = await self._with_connection(
            lambda c: c.fetchval("SELECT max(version) FROM events WHERE stream = $1", stream)
        )
        return int(version or 0)

    async def head(self) -> int:
        """The position of the newest committed event (0 for an empty log)."""
        position = await self._with_connection(
            lambda c: c.fetchval("SELECT coalesce(max(position), 0) FROM events")
        )
        return int(position)

    async def read_all(
        self, *, after: int = 0, limit: int = 1000, filter: EventFilter | None = None
    ) -> ReadPage:
        """Up to `limit` events after position `after` that match `filter`, in position
        order, read in one snapshot."""
        if limit < 1:
            raise ValueError("limit must be >= 1")
        if filter is None or filter.is_empty():
            rows = await self._with_connection(
                lambda c: c.fetch(
                    f"SELECT {_COLUMNS} FROM events WHERE position > $1 ORDER BY position LIMIT $2",
                    after,
                    limit,
                )
            )
            events = [_recorded(row) for row in rows]
            return ReadPage(events, events[-1].position if events else after)
        return await self._read_filtered(after, limit, filter)

    async def _read_filtered(self, after: int, limit: int, filter: EventFilter) -> ReadPage:
        # One statement, so one snapshot: the scan window and the matches come from the
        # same prefix of the log. The last scanned row always comes back (flagged) so the
        # page knows how far it scanned even when nothing matched.
        window = max(limit, _FILTERED_SCAN_WINDOW)
        rows = await self._with_connection(
            lambda c: c.fetch(
                """
                WITH scanned AS (
                    SELECT position, stream, version, event_id, type, data, meta, hash, scope
                    FROM events WHERE position > $1 ORDER BY position LIMIT $2
                ), marked AS (
                    SELECT s.*,
                        ($3::text[] IS NULL OR s.stream = ANY($3))
                        AND ($4::text IS NULL OR starts_with(s.stream, $4))
                        AND ($5::text[] IS NULL OR s.type = ANY($5))
                        AND ($6::text IS NULL OR s.scope = $6
                             OR starts_with(s.scope, rtrim($6, '/') || '/'))
                        AND ($7::int IS NULL OR ascii(right(s.stream, 1)) % $7 = $8)
                            AS matched,
                        max(s.position) OVER () AS scanned_to
                    FROM scanned s
                )
                SELECT position, stream, version, event_id, type,
                       CASE WHEN matched THEN data END, CASE WHEN matched THEN meta END,
                       hash, scope, matched
                FROM marked WHERE matched OR position = scanned_to
                ORDER BY position
                """,
                after,
                window,
                sorted(filter.streams) if filter.streams is not None else None,
                filter.stream_prefix,
                sorted(filter.types) if filter.types is not None else None,
                filter.scope,
                filter.partition[0] if filter.partition is not None else None,
                filter.partition[1] if filter.partition is not None else None,
            )
        )
        events: list[RecordedEvent] = []
        next_after = after
        for row in rows:
            if row[9]:
                events.append(_recorded(row))
                if len(events) == limit:
                    return ReadPage(events, row[0])
            next_after = row[0]
        return ReadPage(events, next_after)

    def subscribe(
        self, *, after: int = 0, filter: EventFilter | None = None, page_size: int = 1000
    ) -> AsyncIterator[RecordedEvent]:
        """Every matching event after `after`: the stored ones, then live ones as they are
        committed, with no gap and no duplicate across the switch (both come from the same
        ordered reads of the table; notifications only say *when* to read). Survives a
        dropped database connection: reads are retried, the listener reconnects."""
        return self._subscription(after, filter, page_size)

    async def _subscription(
        self, after: int, filter: EventFilter | None, page_size: int
    ) -> AsyncIterator[RecordedEvent]:
        position = after
        while True:
            # Everything up to the head the listener has announced is visible to the read
            # below (notifications are sent after commit), so a scan that reaches it has
            # seen all there is; only then is it safe to sleep until the next notification.
            seen_head = self.notifier.head
            page = await self.read_all(after=position, limit=page_size, filter=filter)
            for event in page.events:
                yield event
            position = page.next_after
            self.notifier.observe(position)
            if position >= seen_head:
                await self.notifier.wait_beyond(position)

    # -- audit

    async def verify_stream(self, stream: str) -> ChainReport:
        """Recompute the hash chain of `stream` from the stored bytes."""
        rows = await self._with_connection(
            lambda c: c.fetch(
                "SELECT version, event_id, type, data, meta, hash FROM events "
                "WHERE stream = $1 ORDER BY version",
                stream,
            )
        )
        if not rows:
            raise StreamNotFound(stream)
        stored = (StoredRow(r[0], r[1], r[2], bytes(r[3]), bytes(r[4]), bytes(r[5])) for r in rows)
        if len(rows) < _VERIFY_ON_LOOP:
            return check_chain(stream, stored)
        # A long stream is a long computation: in a thread, so the loop goes on serving.
        return await asyncio.to_thread(check_chain, stream, stored)

    # -- plumbing

    async def _with_connection(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run a read on a pooled connection, retrying on connection loss (reads are
        idempotent) until `retry_for` seconds have passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        delay = 0.05
        while True:
            try:
                async with self.pool.acquire() as connection:
                    return await work(connection)
            except CONNECTION_ERRORS as exc:
                if loop.time() > deadline:
                    raise StoreUnavailable(f"database unreachable: {exc}") from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
