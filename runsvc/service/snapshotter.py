"""The snapshotter: on an interval (and on demand) the index is dumped to object storage.
An unreachable store only delays the next dump: failures are retried with backoff,
logged, and visible in /readyz and the metrics; the service carries on."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import asyncpg
import structlog

from projections import snapshot
from projections.snapshot import DumpInfo
from runsvc.infra.objectstore import ObjectStore, ObjectStoreError

log = structlog.get_logger("runsvc.snapshotter")


class Snapshotter:
    def __init__(
        self, pool: asyncpg.Pool, objects: ObjectStore, *, interval_s: float, keep: int
    ) -> None:
        self.pool = pool
        self.objects = objects
        self.interval_s = interval_s
        self.keep = keep
        self.last: DumpInfo | None = None
        self.last_success: float | None = None
        self.last_error: str | None = None
        self.failures = 0

    @property
    def age_s(self) -> float | None:
        """Seconds since the last dump this process wrote or found."""
        return None if self.last_success is None else time.monotonic() - self.last_success

    async def create(self) -> DumpInfo:
        info = await snapshot.create_dump(self.pool, self.objects, keep=self.keep)
        self.last, self.last_success, self.last_error, self.failures = (
            info,
            time.monotonic(),
            None,
            0,
        )
        log.info("index dump written", key=info.key, rows=info.rows, bytes=info.size)
        return info

    async def run(self) -> None:
        """Dump every interval; after a failure, retry sooner with a growing delay."""
        pointer = None
        try:
            pointer = await snapshot.latest_pointer(self.objects)
        except ObjectStoreError as exc:
            self.last_error = str(exc)
        delay = self.interval_s
        if pointer is not None:
            self.last = pointer
            elapsed = (datetime.now(UTC) - pointer.created_at).total_seconds()
            self.last_success = time.monotonic() - elapsed
            delay = max(0.0, self.interval_s - elapsed)
        else:
            delay = 0.0
        while True:
            await asyncio.sleep(delay)
            try:
                await self.create()
                delay = self.interval_s
            except ObjectStoreError as exc:
                self.failures += 1
                self.last_error = str(exc)
                delay = min(self.interval_s, 2.0 ** min(self.failures, 10))
                log.warning(
                    "index dump failed; will retry",
                    error=str(exc),
                    failures=self.failures,
                    retry_in_s=delay,
                )
            except Exception:
                self.failures += 1
                delay = min(self.interval_s, 60.0)
                log.exception("index dump failed")
