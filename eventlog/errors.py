"""Typed errors of the event log. Callers never see an asyncpg exception: the adapter
modules translate driver errors into these (`raise ... from exc`)."""

from __future__ import annotations


class EventLogError(Exception):
    """The event log refused or could not complete an operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class VersionConflict(EventLogError):
    """The stream is not at the version the caller expected; nothing was written."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        if expected == 0:
            message = f"stream {stream!r} already exists (at version {actual})"
        else:
            message = f"stream {stream!r} is at version {actual}, expected {expected}"
        super().__init__(message)
        self.stream = stream
        self.expected = expected
        self.actual = actual


class StreamNotFound(EventLogError):
    """No such stream."""

    def __init__(self, stream: str) -> None:
        super().__init__(f"stream {stream!r} does not exist")
        self.stream = stream


class EmptyAppend(EventLogError):
    """An append must carry at least one event."""


class PayloadTooLarge(EventLogError):
    """An event's payload is over the configured limit; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"event payload of {size} bytes is over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class EventIdReused(EventLogError):
    """Event ids of this append are already stored for other events; nothing was written."""


class StoreUnavailable(EventLogError):
    """The database could not be reached in time; the operation may be retried."""


class CorruptEvent(EventLogError):
    """A stored event does not decode: it was altered outside the event log."""

    def __init__(self, stream: str, version: int, reason: str) -> None:
        super().__init__(f"event {version} of stream {stream!r} does not decode: {reason}")
        self.stream = stream
        self.version = version
