"""Group commit: one appender per process turns the appends waiting at a moment into one
transaction.

Callers hand in `AppendRequest`s and await their positions. A single background task takes
everything queued (up to a size bound), checks each request's expected version against the
stream heads it knows (in order, so two requests for one stream in one batch chain
correctly), computes the hash chain, and writes the accepted events with one call of the
SQL function `eventlog_append`. That function re-checks the heads under the log's advisory
lock; a head that moved (another process appended) sends the batch round again with fresh
heads. Each request keeps its own version check: a conflict fails only that request.

Lost acknowledgements: when the connection drops during the call we cannot know whether
it committed. The batch is retried with the same event ids; a request whose ids are
already stored is answered with the stored positions, so nothing is written twice.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from eventlog.errors import (
    EventIdReused,
    EventLogError,
    StoreUnavailable,
    StreamNotFound,
    VersionConflict,
)
from eventlog.hashchain import GENESIS, chain_hash_raw

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, pg_terminate_backend
    asyncpg.exceptions.CannotConnectNowError,
    # Raised when a connection the server just terminated is reused before asyncpg noticed
    # ("cannot switch to state …"); the connection is broken, the operation safe to retry.
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
    OSError,
    asyncio.TimeoutError,
)


@dataclass
class AppendRequest:
    """One caller's append, encoded: parallel lists of ids, types and payloads (columns
    rather than objects, because this is the hot path). `meta` is one metadata blob for
    all events, or one per event."""

    stream: str
    expected_version: int
    event_ids: Sequence[uuid.UUID]
    types: Sequence[str]
    payloads: Sequence[bytes]
    meta: bytes | Sequence[bytes]
    scope: str | None
    future: asyncio.Future[list[int]] = field(repr=False)

    def __len__(self) -> int:
        return len(self.event_ids)

    @property
    def size(self) -> int:
        return sum(map(len, self.payloads)) + sum(map(len, self.metas()))

    def metas(self) -> Sequence[bytes]:
        if isinstance(self.meta, bytes):
            return [self.meta] * len(self.payloads)
        return self.meta


@dataclass(frozen=True)
class Head:
    """A stream's version and the hash of its last event."""

    version: int
    hash: bytes


class HeadCache:
    """The last known (version, hash) of recently written streams, so that the common case
    (a process appending to streams it wrote before) needs no read before the write. An
    entry can only be stale behind the truth; `eventlog_append` catches that under lock."""

    def __init__(self, capacity: int) -> None:
        self._entries: OrderedDict[str, Head] = OrderedDict()
        self._capacity = capacity

    def get(self, stream: str) -> Head | None:
        head = self._entries.get(stream)
        if head is not None:
            self._entries.move_to_end(stream)
        return head

    def put(self, stream: str, head: Head) -> None:
        self._entries[stream] = head
        self._entries.move_to_end(stream)
        while len(self._entries) > self._capacity:
            self._entries.popitem(last=False)

    def forget(self, stream: str) -> None:
        self._entries.pop(stream, None)


class Appender:
    """The process's group-committing writer. Start it once; `submit` from anywhere."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        max_batch_events: int = 10_000,
        max_batch_bytes: int = 32 * 1024 * 1024,
        retry_for: float = 30.0,
        head_cache_size: int = 100_000,
        max_in_flight: int = 2,
    ) -> None:
        self._pool = pool
        self._queue: list[AppendRequest] = []
        self._wakeup = asyncio.Event()
        self._max_batch_events = max_batch_events
        self._max_batch_bytes = max_batch_bytes
        self._retry_for = retry_for
        self._heads = HeadCache(head_cache_size)
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._busy_streams: set[str] = set()
        self._max_in_flight = max_in_flight
        self._closing = False
        self.batches_written = 0
        self.events_written = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="eventlog-appender")

    async def close(self) -> None:
        """Flush what is queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, request: AppendRequest) -> list[int]:
        if self._closing:
            raise EventLogError("the event log is shutting down")
        self._queue.append(request)
        self._wakeup.set()
        return await request.future

    async def _run(self) -> None:
        while True:
            self._wakeup.clear()
            if self._queue and len(self._in_flight) < self._max_in_flight:
                batch = self._take_batch()
                if batch:
                    self._launch(batch)
                    continue
            if self._closing and not self._queue and not self._in_flight:
                return
            await self._wakeup.wait()

    def _launch(self, batch: list[AppendRequest]) -> None:
        """Write `batch` beside the batches already in flight. Their transactions still
        take the log lock one after another, but one batch's encoding, hashing and round
        trip overlap the other's commit."""
        streams = {request.stream for request in batch}
        self._busy_streams |= streams
        task = asyncio.create_task(self._write_guarded(batch))
        self._in_flight.add(task)

        def finished(done: asyncio.Task[None]) -> None:
            self._in_flight.discard(done)
            self._busy_streams -= streams
            self._wakeup.set()

        task.add_done_callback(finished)

    async def _write_guarded(self, batch: list[AppendRequest]) -> None:
        try:
            await self._write_batch(batch)
        except BaseException as exc:  # a failed batch fails its callers, not the appender
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(
                        exc if isinstance(exc, EventLogError) else StoreUnavailable(str(exc))
                    )
            if isinstance(exc, asyncio.CancelledError):
                raise

    def _take_batch(self) -> list[AppendRequest]:
        """The oldest queued requests that fit one batch, skipping streams another batch
        in flight is writing (their requests keep their order for the next batch)."""
        batch: list[AppendRequest] = []
        left: list[AppendRequest] = []
        events = size = 0
        full = False
        for request in self._queue:
            if request.future.cancelled():
                continue
            if full or request.stream in self._busy_streams:
                left.append(request)
                continue
            if batch and (
                events + len(request) > self._max_batch_events
                or size + request.size > self._max_batch_bytes
            ):
                full = True
                left.append(request)
                continue
            batch.append(request)
            events += len(request)
            size += request.size
        self._queue = left
        return batch

    async def _write_batch(self, batch: list[AppendRequest]) -> None:
        deadline = asyncio.get_running_loop().time() + self._retry_for
        fresh_heads = False
        delay = 0.05
        while batch:
            try:
                async with self._pool.acquire() as connection:
                    batch = await self._attempt(connection, batch, fresh_heads)
                    fresh_heads = True
            except CONNECTION_ERRORS as exc:
                if asyncio.get_running_loop().time() > deadline:
                    raise StoreUnavailable(f"database unreachable: {exc}") from exc
                # The call may or may not have committed; drop cached heads and retry with
                # the same event ids (dedup answers requests that did commit).
                for request in batch:
                    self._heads.forget(request.stream)
                fresh_heads = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _attempt(
        self, connection: asyncpg.Connection, batch: list[AppendRequest], fresh_heads: bool
    ) -> list[AppendRequest]:
        """Try to write `batch` once; return the requests that must go round again."""
        heads = await self._load_heads(connection, batch, fresh_heads)
        accepted, rejected = self._check_versions(batch, heads)
        if any(request.stream in heads.from_cache for request, _ in rejected):
            # A cached head can lag behind the truth, so a mismatch against it proves
            # nothing yet: read the heads afresh and decide again.
            for request, _ in rejected:
                self._heads.forget(request.stream)
            return batch
        if rejected:
            await self._settle_rejected(connection, rejected)
        if not accepted:
            return []
        if sum(map(len, accepted)) >= _ROWS_OFF_LOOP:
            # Hashing thousands of events would stall every other request meanwhile; the
            # requests are immutable once queued, so a worker thread can build the rows.
            rows, assumed, new_heads = await asyncio.to_thread(build_rows, accepted, heads.known)
        else:
            rows, assumed, new_heads = build_rows(accepted, heads.known)
        try:
            result = await connection.fetch(
                "SELECT * FROM eventlog_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                list(assumed.keys()),
                [h.version for h in assumed.values()],
                *rows,
            )
        except asyncpg.UniqueViolationError:
            # Some event id is stored already: a retry of an append that did commit, or a
            # caller reusing ids. Settle those requests by their ids; retry the rest.
            return await self._settle_duplicates(connection, accepted)
        conflicts = [r["conflict_stream"] for r in result if r["conflict_stream"] is not None]
        if conflicts:
            # Another process appended to these streams since we read their heads. Nothing
            # was written; go round again with freshly read heads.
            for stream in conflicts:
                self._heads.forget(stream)
            return accepted
        self._resolve(accepted, result[0]["first_position"], new_heads)
        return []

    async def _load_heads(
        self, connection: asyncpg.Connection, batch: list[AppendRequest], fresh: bool
    ) -> Heads:
        heads = Heads()
        missing = []
        for stream in dict.fromkeys(r.stream for r in batch):
            cached = None if fresh else self._heads.get(stream)
            if cached is None:
                missing.append(stream)
            else:
                heads.known[stream] = cached
                heads.from_cache.add(stream)
        if missing:
            rows = await connection.fetch(
                """
                SELECT DISTINCT ON (stream) stream, version, hash
                FROM events WHERE stream = ANY($1::text[])
                ORDER BY stream, version DESC
                """,
                missing,
            )
            found = {r["stream"]: Head(r["version"], bytes(r["hash"])) for r in rows}
            for stream in missing:
                heads.known[stream] = found.get(stream, Head(0, GENESIS))
        return heads

    def _check_versions(
        self, batch: list[AppendRequest], heads: Heads
    ) -> tuple[list[AppendRequest], list[tuple[AppendRequest, int]]]:
        versions = {stream: head.version for stream, head in heads.known.items()}
        accepted: list[AppendRequest] = []
        rejected: list[tuple[AppendRequest, int]] = []
        for request in batch:
            actual = versions[request.stream]
            if request.expected_version == actual:
                accepted.append(request)
                versions[request.stream] = actual + len(request)
            else:
                rejected.append((request, actual))
        return accepted, rejected

    async def _settle_rejected(
        self, connection: asyncpg.Connection, rejected: list[tuple[AppendRequest, int]]
    ) -> None:
        """A version mismatch is either a real conflict or a retried append whose first
        try committed (its ids are stored); tell them apart by the ids."""
        stored = await self._stored_positions(connection, [r for r, _ in rejected])
        for request, actual in rejected:
            positions = stored.get(id(request))
            if positions is not None:
                if not request.future.done():
                    request.future.set_result(positions)
                continue
            self._heads.forget(request.stream)
            if actual == 0 and request.expected_version > 0:
                error: EventLogError = StreamNotFound(request.stream)
            else:
                error = VersionConflict(request.stream, request.expected_version, actual)
            if not request.future.done():
                request.future.set_exception(error)

    async def _settle_duplicates(
        self, connection: asyncpg.Connection, accepted: list[AppendRequest]
    ) -> list[AppendRequest]:
        stored = await self._stored_positions(connection, accepted)
        retry: list[AppendRequest] = []
        for request in accepted:
            positions = stored.get(id(request))
            if positions is not None:
                request.future.set_result(positions)
            elif id(request) in stored.partial:
                request.future.set_exception(
                    EventIdReused(f"event ids of this append to {request.stream!r} are in use")
                )
            else:
                self._heads.forget(request.stream)
                retry.append(request)
        return retry

    async def _stored_positions(
        self, connection: asyncpg.Connection, requests: list[AppendRequest]
    ) -> _Stored:
        ids = [event_id for r in requests for event_id in r.event_ids]
        rows = await connection.fetch(
            "SELECT event_id, stream, position FROM events WHERE event_id = ANY($1::uuid[])", ids
        )
        by_id = {r["event_id"]: (r["stream"], r["position"]) for r in rows}
        stored = _Stored()
        for request in requests:
            found = [by_id.get(event_id) for event_id in request.event_ids]
            if all(f is not None and f[0] == request.stream for f in found):
                stored[id(request)] = [f[1] for f in found if f is not None]
            elif any(f is not None for f in found):
                stored.partial.add(id(request))
        return stored

    def _resolve(
        self, accepted: list[AppendRequest], first_position: int, new_heads: dict[str, Head]
    ) -> None:
        position = first_position
        for request in accepted:
            positions = list(range(position, position + len(request)))
            position += len(request)
            if not request.future.done():
                request.future.set_result(positions)
        for stream in {r.stream for r in accepted}:
            self._heads.put(stream, new_heads[stream])
        self.batches_written += 1
        self.events_written += position - first_position


@dataclass
class Heads:
    known: dict[str, Head] = field(default_factory=dict)
    from_cache: set[str] = field(default_factory=set)


class _Stored(dict[int, list[int]]):
    """Positions of requests whose every event id is stored, keyed by request identity;
    `partial` holds requests of which only some ids are stored."""

    def __init__(self) -> None:
        super().__init__()
        self.partial: set[int] = set()


_ROWS_OFF_LOOP = 1000
"""Batches of at least this many events are hashed and laid out in a worker thread."""


def build_rows(
    accepted: Sequence[AppendRequest], known: dict[str, Head]
) -> tuple[list[list[Any]], dict[str, Head], dict[str, Head]]:
    """The batch as column arrays for `eventlog_append`, the heads it assumes, and the
    heads the streams will have once it is written."""
    stream_col: list[str] = []
    version_col: list[int] = []
    id_col: list[uuid.UUID] = []
    type_col: list[str] = []
    data_col: list[bytes] = []
    meta_col: list[bytes] = []
    hash_col: list[bytes] = []
    scope_col: list[str | None] = []
    assumed: dict[str, Head] = {}
    current = dict(known)
    for request in accepted:
        head = current[request.stream]
        assumed.setdefault(request.stream, head)
        first_version, previous = head.version + 1, head.hash
        stream_bytes, metas = request.stream.encode(), request.metas()
        count = len(request)
        for version, event_id, type_, data, meta in zip(
            range(first_version, first_version + count),
            request.event_ids,
            request.types,
            request.payloads,
            metas,
            strict=True,
        ):
            previous = chain_hash_raw(
                previous, event_id.bytes, stream_bytes, type_.encode(), data, meta, version
            )
            hash_col.append(previous)
        stream_col += [request.stream] * count
        version_col += range(first_version, first_version + count)
        id_col += request.event_ids
        type_col += request.types
        data_col += request.payloads
        meta_col += metas
        scope_col += [request.scope] * count
        current[request.stream] = Head(first_version + count - 1, previous)
    columns: list[list[Any]] = [
        stream_col,
        version_col,
        id_col,
        type_col,
        data_col,
        meta_col,
        hash_col,
        scope_col,
    ]
    return columns, assumed, current
