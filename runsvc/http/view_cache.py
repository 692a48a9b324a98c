"""Encoded views of recently read runs, so that a run polled by many clients (a dashboard,
`watch` on many screens) is answered without a database round trip each time.

The cache is exactly as fresh as the `run_state` projection it copies: this process's
projection runner calls `invalidate` after each batch it commits, with the runs that
batch touched, or with None when another process applied the batch (the runs it touched
are unknown here, so everything goes). A read that raced an invalidation is not stored:
`put` takes the generation seen before the read and drops the view if it has moved.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventlog.records import RecordedEvent
from runsvc.domain.events import run_id_of
from runsvc.infra.lru import SizedLRU


class RunViewCache:
    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._views: SizedLRU[str, bytes] = SizedLRU(max_bytes, len)
        self.generation = 0

    @property
    def size_bytes(self) -> int:
        return self._views.bytes

    def get(self, run_id: str) -> bytes | None:
        return self._views.get(run_id)

    def put(self, run_id: str, view: bytes, generation: int) -> None:
        """Keep `view`, read while the cache was at `generation`, unless it moved since."""
        if generation != self.generation:
            return
        self._views.put(run_id, view)

    def invalidate(self, applied: Sequence[RecordedEvent] | None) -> None:
        """After the projection committed `applied` (None: a batch of unknown runs)."""
        self.generation += 1
        if applied is None:
            self._views.clear()
            return
        for recorded in applied:
            self._views.pop(run_id_of(recorded.stream))
