"""Types of the HTTP API that are not the run itself (which is `runsvc.domain.fold`'s
view): errors, events, pages. The server encodes these and the client decodes them, so both
sides share one definition."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from eventlog.records import RecordedEvent
from runsvc.domain.events import UnknownEvent
from runsvc.infra.objectstore import ObjectInfo


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


class Verification(msgspec.Struct, frozen=True):
    """`GET /runs/{id}/verify`: the hash chain holds and the fold reproduces the state."""

    ok: bool
    events: int
    problems: list[str]


class ArtifactList(msgspec.Struct, frozen=True):
    """`GET /tasks/{id}/artifacts`: keys relative to the task's artifact folder."""

    artifacts: list[ObjectInfo]


class Health(msgspec.Struct, frozen=True):
    """`GET /healthz`: the process is up."""

    status: str


class Check(msgspec.Struct, frozen=True):
    """One readiness check; `detail` says what is wrong (or, for some, how things are)."""

    name: str
    ok: bool
    detail: str | None = None


class Readiness(msgspec.Struct, frozen=True):
    """`GET /readyz` (200 when every check is ok, 503 otherwise)."""

    ready: bool
    checks: list[Check]
