"""Types of the HTTP API that are not the run itself (which is `projections.run_state`'s
view): errors, events, pages. The server encodes these and the client decodes them, so both
sides share one definition."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventlog.events import RecordedEvent, UnknownEvent


class ErrorDetail(msgspec.Struct, frozen=True):
    path: str
    message: str


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """The body of every error response."""

    code: str
    message: str
    details: list[ErrorDetail] = msgspec.field(default_factory=list)


class ActorOut(msgspec.Struct, frozen=True):
    kind: str
    id: str


class EventOut(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event of the log as clients see it."""

    position: int
    stream: str
    version: int
    type: str
    recorded_at: datetime
    actor: ActorOut
    data: Any
    hash: str
    id: str
    correlation_id: str | None = None
    causation_id: str | None = None
    request_id: str | None = None


class EventPage(msgspec.Struct, frozen=True):
    events: list[EventOut]
    next_after: int


class StreamEvents(msgspec.Struct, frozen=True):
    events: list[EventOut]


def event_out(recorded: RecordedEvent) -> EventOut:
    event = recorded.event
    meta = recorded.meta
    return EventOut(
        position=recorded.position,
        stream=recorded.stream,
        version=recorded.version,
        type=recorded.type,
        recorded_at=meta.recorded_at,
        actor=ActorOut(kind=meta.actor.kind, id=meta.actor.id),
        data=event.data() if isinstance(event, UnknownEvent) else event,
        hash=recorded.hash.hex(),
        id=str(recorded.event_id),
        correlation_id=meta.correlation_id,
        causation_id=meta.causation_id,
        request_id=meta.request_id,
    )
