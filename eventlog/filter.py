"""Which events a reader wants: by stream, stream prefix, event type and scope prefix.

The same filter runs in SQL (`EventStore.read_all`) and in memory (`matches`, for fan-out
to many subscribers from one read), and both must agree.
"""

from __future__ import annotations

import msgspec

from eventlog.records import RecordedEvent


class EventFilter(msgspec.Struct, frozen=True):
    """All given criteria must hold; an empty filter matches everything.

    `scope` matches by path: `/a/b` matches scopes `/a/b` and `/a/b/c`, not `/a/bc`.

    `partition` = (count, index) keeps the streams of one of `count` disjoint parts: those
    whose last character's code point is `index` modulo `count`. Stream ids end in random
    characters, so the parts are about equal; every event of a stream lands in the same
    part, which lets several processes fold a log side by side (a partitioned rebuild).
    """

    streams: frozenset[str] | None = None
    stream_prefix: str | None = None
    types: frozenset[str] | None = None
    scope: str | None = None
    partition: tuple[int, int] | None = None

    def is_empty(self) -> bool:
        return (
            self.streams is None
            and self.stream_prefix is None
            and self.types is None
            and self.scope is None
            and self.partition is None
        )

    def matches(self, event: RecordedEvent) -> bool:
        if self.streams is not None and event.stream not in self.streams:
            return False
        if self.stream_prefix is not None and not event.stream.startswith(self.stream_prefix):
            return False
        if self.types is not None and event.type not in self.types:
            return False
        if self.partition is not None and not in_partition(event.stream, self.partition):
            return False
        return self.scope is None or scope_matches(self.scope, event.scope)


def in_partition(stream: str, partition: tuple[int, int]) -> bool:
    """The in-memory twin of the SQL `ascii(right(stream, 1)) % count = index`."""
    count, index = partition
    return (ord(stream[-1]) if stream else 0) % count == index


def scope_matches(prefix: str, scope: str | None) -> bool:
    """Path-prefix match: the scope is the prefix itself or lies below it."""
    if scope is None:
        return False
    base = prefix.rstrip("/")
    return scope == prefix or scope.startswith(base + "/")
