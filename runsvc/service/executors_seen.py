"""Which executors are about: the name each announces, its labels and when it last
claimed or renewed a lease (the `executors_seen` table; its SQL is all here).

An idle executor leaves no lease behind, only its claims, which are answered with
nothing; so the claims themselves are noted. Each process writes a name at most once
every `every_s` (sooner when its labels change): a long poll's claims come back to back.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import asyncpg

from runsvc.wire.api import ExecutorSeen

FORGET_AFTER = timedelta(days=7)


class ExecutorRegister:
    def __init__(self, pool: asyncpg.Pool, *, every_s: float = 10.0) -> None:
        self.pool = pool
        self.every_s = every_s
        self._written: dict[str, tuple[float, dict[str, str] | None]] = {}

    async def saw(self, name: str, now: datetime, labels: dict[str, str] | None = None) -> None:
        """`name` claimed (with `labels`) or renewed a lease (`labels` None: unchanged)."""
        moment = time.monotonic()
        written_at, known_labels = self._written.get(name, (None, None))
        recent = written_at is not None and moment - written_at < self.every_s
        if recent and (labels is None or labels == known_labels):
            return
        if len(self._written) > 10_000:
            self._written.clear()
        self._written[name] = (moment, known_labels if labels is None else labels)
        await self.pool.execute(
            """
            WITH forgotten AS (
                DELETE FROM executors_seen
                 WHERE last_seen < $3::timestamptz - $4::interval AND name <> $1
            )
            INSERT INTO executors_seen (name, labels, last_seen)
            VALUES ($1, coalesce($2::jsonb, '{}'), $3)
            ON CONFLICT (name) DO UPDATE
               SET last_seen = greatest(executors_seen.last_seen, excluded.last_seen),
                   labels = coalesce($2::jsonb, executors_seen.labels)
            """,
            name,
            None if labels is None else json.dumps(labels),
            now,
            FORGET_AFTER,
        )

    async def recent(
        self, now: datetime, within: timedelta, running: dict[str, int]
    ) -> list[ExecutorSeen]:
        """Executors seen since `now - within`, by name; `running`: attempts by executor."""
        rows = await self.pool.fetch(
            "SELECT name, labels, last_seen FROM executors_seen "
            "WHERE last_seen >= $1 ORDER BY name",
            now - within,
        )
        return [
            ExecutorSeen(
                name=row["name"],
                labels=json.loads(row["labels"]),
                last_seen=row["last_seen"],
                running=running.get(row["name"], 0),
            )
            for row in rows
        ]
