"""The per-stream hash chain: each event's hash covers the previous event's hash and every
stored byte of the event, so altering, removing or reordering an event breaks the chain
from that point on. Pure functions; the store calls them on write and on verify."""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Iterable

import msgspec

GENESIS = b""
_lengths = struct.Struct(">QQQQQQQ").pack
_sha256 = hashlib.sha256


def chain_hash(
    previous: bytes,
    *,
    event_id: uuid.UUID,
    stream: str,
    version: int,
    type_: str,
    data: bytes,
    meta: bytes,
) -> bytes:
    """sha256 over the previous hash and the event. The lengths of all parts come first,
    so that no two different events can produce the same byte string."""
    return chain_hash_raw(
        previous, event_id.bytes, stream.encode(), type_.encode(), data, meta, version
    )


def chain_hash_raw(  # noqa: PLR0917 -- positional on purpose: the append hot path
    previous: bytes,
    event_id: bytes,
    stream: bytes,
    type_: bytes,
    data: bytes,
    meta: bytes,
    version: int,
) -> bytes:
    """`chain_hash` on parts already encoded; the appender's hot path."""
    header = _lengths(
        len(previous), len(event_id), len(stream), len(type_), len(data), len(meta), version
    )
    return _sha256(header + previous + event_id + stream + type_ + data + meta).digest()


class StoredRow(msgspec.Struct, frozen=True):
    """The bytes of one stored event, exactly as the table holds them."""

    version: int
    event_id: uuid.UUID
    type: str
    data: bytes
    meta: bytes
    hash: bytes


class ChainReport(msgspec.Struct, frozen=True):
    """The outcome of checking one stream's chain. `problems` is empty when it holds."""

    stream: str
    events: int
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_chain(stream: str, rows: Iterable[StoredRow]) -> ChainReport:
    """Check versions run 1, 2, 3… without holes and every hash links to its predecessor.

    A removed *last* event leaves a valid shorter chain; that is caught by comparing with
    the version a reader last saw (the run state projection keeps it), not here.
    """
    problems: list[str] = []
    previous = GENESIS
    count = 0
    for count, row in enumerate(rows, start=1):
        if row.version != count:
            problems.append(f"version {row.version} found where version {count} belongs")
        expected = chain_hash(
            previous,
            event_id=row.event_id,
            stream=stream,
            version=row.version,
            type_=row.type,
            data=row.data,
            meta=row.meta,
        )
        if expected != row.hash:
            problems.append(f"hash mismatch at version {row.version}: altered or out of order")
        # Continue from the stored hash so that one altered event is reported once, not
        # as a cascade through every later event.
        previous = row.hash
    return ChainReport(stream=stream, events=count, problems=problems)
