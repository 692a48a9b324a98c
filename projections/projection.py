"""What a projection is: a fold of events into tables, plus the DDL of those tables.

A projection's SQL names its tables unqualified. The runner applies it in `public`; a
rebuild applies the very same code with `search_path` pointing at a scratch schema and then
moves the finished tables into `public` in one transaction. Projections own no numbered
migrations: their tables are disposable and rebuilt from the log whenever `version` changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import asyncpg

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent


class Projection(Protocol):
    """A checkpointed fold of the log into read tables."""

    name: str
    version: int
    tables: tuple[str, ...]
    # The events it reads; others are skipped in SQL without being fetched.
    filter: EventFilter | None
    # True when folding one stream's events reads and writes only that stream's rows, so
    # disjoint sets of streams may be folded side by side (a partitioned rebuild).
    per_stream: bool

    def ddl(self) -> str:
        """CREATE statements for its tables, with unqualified names."""
        ...

    async def apply(self, connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        """Fold `events` (in position order) into the tables, inside the caller's
        transaction. Called exactly once per event per table set."""
        ...
