"""The run view cache never serves a view older than the projection it copies."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from eventlog.records import Metadata, RecordedEvent
from runsvc.domain.events import SYSTEM, RunPhaseChanged
from runsvc.http.view_cache import RunViewCache


def applied(run_id: str) -> RecordedEvent:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    return RecordedEvent(
        position=1,
        stream=f"run-{run_id}",
        version=2,
        event_id=uuid.uuid4(),
        type="run_phase_changed",
        event=RunPhaseChanged(phase="running", at=at),
        meta=Metadata(actor=SYSTEM, recorded_at=at),
        hash=b"",
    )


def test_a_batch_drops_the_runs_it_touched_and_only_those() -> None:
    """After the projection commits a batch, its runs are read again; others stay."""
    cache = RunViewCache()
    cache.put("a", b"A1", cache.generation)
    cache.put("b", b"B1", cache.generation)
    cache.invalidate([applied("a")])
    assert cache.get("a") is None
    assert cache.get("b") == b"B1"


def test_a_read_that_raced_a_batch_is_not_kept() -> None:
    """A view read before a batch committed, stored after, would be stale: dropped."""
    cache = RunViewCache()
    seen = cache.generation
    cache.invalidate([applied("a")])
    cache.put("a", b"A-old", seen)
    assert cache.get("a") is None


def test_a_batch_applied_elsewhere_empties_the_cache() -> None:
    """When another process applied a batch, what it touched is unknown: all goes."""
    cache = RunViewCache()
    cache.put("a", b"A1", cache.generation)
    cache.invalidate(None)
    assert cache.get("a") is None


def test_the_least_recently_read_view_leaves_first() -> None:
    """The cache is bounded by bytes; reading a view keeps it."""
    cache = RunViewCache(max_bytes=2)
    cache.put("a", b"A", cache.generation)
    cache.put("b", b"B", cache.generation)
    assert cache.get("a") == b"A"
    cache.put("c", b"C", cache.generation)
    assert cache.get("b") is None
    assert cache.get("a") == b"A"
