"""An event of the log as the API shows it: what `GET /api/v1/events` lists, what the
websocket subscription sends, and what a webhook POSTs (the same JSON everywhere)."""

from __future__ import annotations

import msgspec

from eventlog.records import RecordedEvent
from runsvc.domain.events import UnknownEvent
from runsvc.wire.api import EventOut

_encoder = msgspec.json.Encoder()


def event_out(recorded: RecordedEvent) -> EventOut:
    """An event of the log as the API shows it (an unknown type's payload decoded
    generically)."""
    event = recorded.event
    meta = recorded.meta
    return EventOut(
        position=recorded.position,
        stream=recorded.stream,
        version=recorded.version,
        type=recorded.type,
        recorded_at=meta.recorded_at,
        actor=meta.actor,
        data=event.data() if isinstance(event, UnknownEvent) else event,
        hash=recorded.hash.hex(),
        id=str(recorded.event_id),
        correlation_id=meta.correlation_id,
        causation_id=meta.causation_id,
        request_id=meta.request_id,
    )


def event_json(recorded: RecordedEvent) -> bytes:
    """`event_out` encoded: the bytes a subscriber or a webhook receives for the event."""
    return _encoder.encode(event_out(recorded))
