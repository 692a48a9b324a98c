"""The envelope of an event in the log: the metadata stored beside each payload, the event
as read back with the position, version and hash the store assigned, and the ids appends
are keyed by. The payloads themselves are the run's events (`runsvc.domain.events`)."""

from __future__ import annotations

import random
import time
import uuid
from datetime import datetime

import msgspec

from runsvc.domain.events import Actor, Event, UnknownEvent

_random_bits = random.getrandbits
_encoder = msgspec.msgpack.Encoder()


class Metadata(msgspec.Struct, frozen=True, omit_defaults=True):
    """Facts about an append rather than about the domain; stored beside the payload."""

    actor: Actor
    recorded_at: datetime
    correlation_id: str | None = None
    causation_id: str | None = None
    request_id: str | None = None


_metadata_decoder = msgspec.msgpack.Decoder(Metadata)


def encode_metadata(meta: Metadata) -> bytes:
    return _encoder.encode(meta)


def decode_metadata(data: bytes) -> Metadata:
    return _metadata_decoder.decode(data)


def new_event_id() -> uuid.UUID:
    """A UUIDv7: time-ordered, so the unique index on event ids grows at its right edge
    instead of taking random inserts all over the tree. The random part comes from the
    `random` module (reseeded in every forked child), which is ample for uniqueness and
    an order of magnitude cheaper than os.urandom on the append hot path."""
    ms = time.time_ns() // 1_000_000
    rand = _random_bits(74)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= ((rand >> 62) & 0xFFF) << 64
    value |= 0b10 << 62
    value |= rand & ((1 << 62) - 1)
    return uuid.UUID(int=value)


class RecordedEvent(msgspec.Struct, frozen=True):
    """An event as the log holds it: payload plus the facts the store assigned."""

    position: int
    stream: str
    version: int
    event_id: uuid.UUID
    type: str
    event: Event | UnknownEvent
    meta: Metadata
    hash: bytes
    scope: str | None = None
