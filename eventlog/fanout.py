"""Fan-out of the live log to many subscribers from one reader per process.

The hub follows the log (one unfiltered read per batch of new events, woken by the store's
listener) and hands each new event to the subscribers whose filter matches it. Subscribers
are indexed by stream and by scope so that dispatch costs the number of matching
subscribers, not the number of subscribers.

A subscriber starts from storage (everything after its `after` position), and joins the
live feed only at an instant when it has read at least as far as the hub has dispatched;
from then on the hub's events continue exactly where storage left off. Each subscriber has
a bounded buffer. When a slow subscriber's buffer overflows, it leaves the live feed and
goes back to reading storage from the last event it delivered until it catches up again,
so it never blocks the hub or anyone else and never loses an event. Positions are strictly
increasing in what a subscriber yields: anything at or below its last position is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from eventlog.appender import CONNECTION_ERRORS
from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from eventlog.store import EventStore


class _Subscriber:
    def __init__(self, filter: EventFilter, buffer: int) -> None:
        self.filter = filter
        self.queue: asyncio.Queue[RecordedEvent] = asyncio.Queue(maxsize=buffer)
        self.overflowed = False
        self.live = False


class EventHub:
    """One per process: the single live reader of the log that feeds every subscriber."""

    def __init__(self, store: EventStore, *, page_size: int = 1000, buffer: int = 1000) -> None:
        self.store = store
        self.page_size = page_size
        self.buffer = buffer
        self.position = 0
        self._all: set[_Subscriber] = set()
        self._by_stream: dict[str, set[_Subscriber]] = {}
        self._by_scope: dict[str, set[_Subscriber]] = {}
        self._task: asyncio.Task[None] | None = None
        self.subscribers = 0
        self.overflows = 0

    async def start(self) -> None:
        self.position = await self.store.head()
        self._task = asyncio.create_task(self._follow(), name="eventlog-hub")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def subscribe(
        self, *, after: int = 0, filter: EventFilter | None = None
    ) -> AsyncIterator[RecordedEvent]:
        """Every event after `after` matching `filter`: stored, then live."""
        return self._subscription(after, filter or EventFilter())

    async def _subscription(self, after: int, filter: EventFilter) -> AsyncIterator[RecordedEvent]:
        subscriber = _Subscriber(filter, self.buffer)
        position = after
        self.subscribers += 1
        try:
            while True:
                # From storage until level with the hub (or past it).
                while position < self.position:
                    page = await self.store.read_all(
                        after=position, limit=self.page_size, filter=filter
                    )
                    for event in page.events:
                        yield event
                    position = page.next_after
                # No await between this check and joining: the hub cannot dispatch in
                # between, so the live feed starts right after what storage gave.
                if position < self.position:
                    continue
                subscriber.overflowed = False
                self._join(subscriber)
                try:
                    while not subscriber.overflowed or not subscriber.queue.empty():
                        event = await subscriber.queue.get()
                        if event.position <= position:
                            continue
                        position = event.position
                        yield event
                finally:
                    self._leave(subscriber)
                # Overflowed and drained: back to storage from `position`.
        finally:
            self.subscribers -= 1

    def _slots(self, subscriber: _Subscriber) -> list[set[_Subscriber]]:
        """The index sets a subscriber is filed under while live."""
        streams = subscriber.filter.streams
        scope = subscriber.filter.scope
        if streams is not None:
            return [self._by_stream.setdefault(stream, set()) for stream in streams]
        if scope is not None:
            return [self._by_scope.setdefault(_normal_scope(scope), set())]
        return [self._all]

    def _join(self, subscriber: _Subscriber) -> None:
        subscriber.live = True
        for slot in self._slots(subscriber):
            slot.add(subscriber)

    def _leave(self, subscriber: _Subscriber) -> None:
        if not subscriber.live:
            return
        subscriber.live = False
        self._all.discard(subscriber)
        scope = subscriber.filter.scope
        for index, keys in (
            (self._by_stream, subscriber.filter.streams or ()),
            (self._by_scope, [_normal_scope(scope)] if scope is not None else []),
        ):
            for key in keys:
                subscribers = index.get(key)
                if subscribers is not None:
                    subscribers.discard(subscriber)
                    if not subscribers:
                        del index[key]

    def _candidates(self, event: RecordedEvent) -> list[_Subscriber]:
        found = list(self._all)
        found += self._by_stream.get(event.stream, ())
        if self._by_scope and event.scope is not None:
            for prefix in _scope_prefixes(event.scope):
                found += self._by_scope.get(prefix, ())
        return found

    def _dispatch(self, event: RecordedEvent) -> None:
        for subscriber in self._candidates(event):
            if subscriber.overflowed or not subscriber.filter.matches(event):
                continue
            try:
                subscriber.queue.put_nowait(event)
            except asyncio.QueueFull:
                # Too slow for the live feed: it drains what it has, then reads storage.
                subscriber.overflowed = True
                self.overflows += 1
                self._leave(subscriber)

    async def _follow(self) -> None:
        delay = 0.05
        while True:
            try:
                page = await self.store.read_all(after=self.position, limit=self.page_size)
            except CONNECTION_ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            for event in page.events:
                self._dispatch(event)
            self.position = page.next_after
            if not page.events:
                await self.store.notifier.wait_beyond(self.position)


def _normal_scope(scope: str) -> str:
    return scope.rstrip("/") or "/"


def _scope_prefixes(scope: str) -> list[str]:
    """`/a/b/c` -> ["/", "/a", "/a/b", "/a/b/c"]: every subscription scope it falls under."""
    prefixes = ["/"]
    parts = [p for p in scope.split("/") if p]
    for i in range(1, len(parts) + 1):
        prefixes.append("/" + "/".join(parts[:i]))
    return prefixes
