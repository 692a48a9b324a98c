"""The run_state projection: one row per run with its full current state, plus the claim
queue (`ready_tasks`) and the timers (`run_timers`) that follow from those states.

A batch is folded per run in memory (runs recently touched stay cached, keyed by their
version, so a busy run is not decoded again for every batch), then written with a few
set-based statements. The claim queue changes by event (a task scheduled is queued; any
other status takes it out), so a huge run never rewrites its whole queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import structlog

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from runsvc.domain.codec import decode_run, encode_run
from runsvc.domain.events import (
    RUN_STREAM_PREFIX,
    Phase,
    RunCreated,
    TaskStatusChanged,
    run_id_of,
)
from runsvc.domain.fold import TERMINAL_PHASES, apply
from runsvc.domain.model import Run, approximate_size
from runsvc.domain.timing import next_wakeup
from runsvc.domain.view import run_view
from runsvc.infra.lru import SizedLRU

log = structlog.get_logger("runsvc.projections")
_DDL = (Path(__file__).parent / "sql" / "run_state.sql").read_text()
READY_CHANNEL = "runsvc_ready"
_json = msgspec.json.Encoder()


# Events plus tasks of the runs a batch touches, past which the batch is folded in a
# thread (a run of 10,000 tasks is well past it; ordinary batches stay on the loop).
OFF_LOOP_WEIGHT = 2000


def _weight(events: Sequence[RecordedEvent], runs: dict[str, Run]) -> int:
    created = sum(
        len(recorded.event.config.tasks)
        for recorded in events
        if isinstance(recorded.event, RunCreated)
    )
    return len(events) + created + sum(len(run.tasks) for run in runs.values())


@dataclass
class _Folded:
    runs: list[Run]
    states: list[bytes]
    views: list[bytes]
    due: list[tuple[str, datetime | None]]
    ready: dict[str, tuple[Any, ...]]
    unready: set[str]
    fresh: set[str]
    carried: list[tuple[str, str]]


class RunStateProjection:
    name = "run_state"
    # 6: tasks' states and views hold when they were approved (`approved_at`).
    # 7: run_state.waiting_approval, for the run list's filter.
    version = 7
    tables: tuple[str, ...] = ("run_state", "ready_tasks", "run_timers", "carried_tasks")
    per_stream = True
    filter: EventFilter | None = EventFilter(stream_prefix=RUN_STREAM_PREFIX)

    def __init__(self, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._cache: SizedLRU[str, Run] = SizedLRU(cache_bytes, approximate_size)

    def ddl(self) -> str:
        return _DDL

    async def apply(self, connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        by_run: dict[str, list[RecordedEvent]] = {}
        for recorded in events:
            by_run.setdefault(run_id_of(recorded.stream), []).append(recorded)
        runs = await self._load(connection, by_run)
        if _weight(events, runs) > OFF_LOOP_WEIGHT:
            # Folding and viewing a run of thousands of tasks takes a good part of a
            # second of CPU. In a thread, the event loop keeps answering requests
            # meanwhile (the GIL is handed over every few milliseconds). The runs folded
            # here are this projection's own: nothing else touches them meanwhile.
            folded = await asyncio.to_thread(self._fold, by_run, runs)
        else:
            folded = self._fold(by_run, runs)
        await self._write(connection, folded)
        if folded.carried:
            await connection.executemany(
                "INSERT INTO carried_tasks (task_id, run_id) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                folded.carried,
            )
        for run in folded.runs:
            self._remember(run)

    def _fold(self, by_run: dict[str, list[RecordedEvent]], runs: dict[str, Run]) -> _Folded:
        """The batch folded into its runs, and the rows to write (no I/O)."""
        ready: dict[str, tuple[Any, ...]] = {}
        unready: set[str] = set()
        # Runs created in this batch have no rows yet: nothing of theirs needs deleting.
        fresh = {run_id for run_id, run_events in by_run.items() if run_events[0].version == 1}
        carried: list[tuple[str, str]] = []
        for run_id, run_events in list(by_run.items()):
            run = runs.get(run_id)
            if run is None and not isinstance(run_events[0].event, RunCreated):
                # Not a stream the run service wrote (its first event is not a creation):
                # leave it out rather than stop the projection for every other run.
                log.warning(
                    "skipping events of a stream without a run", stream=run_events[0].stream
                )
                del by_run[run_id]
                continue
            for recorded in run_events:
                run = apply(run, recorded)
                event = recorded.event
                if isinstance(event, RunCreated) and event.carried:
                    carried += [(c.id, run_id) for c in event.carried.values()]
                if isinstance(event, TaskStatusChanged):
                    task = run.tasks[event.task]
                    if event.status == "scheduled" and not task.is_parent:
                        unready.discard(task.id)
                        ready[task.id] = (
                            task.id,
                            run_id,
                            task.name,
                            event.attempt,
                            event.next_attempt_at,
                            json.dumps(task.spec.runs_on),
                            recorded.position,
                        )
                    else:
                        ready.pop(task.id, None)
                        if run_id not in fresh:
                            unready.add(task.id)
            assert run is not None
            runs[run_id] = run
        touched = [runs[r] for r in by_run]
        return _Folded(
            runs=touched,
            states=[encode_run(r) for r in touched],
            views=[_json.encode(run_view(r)) for r in touched],
            due=[(r.id, next_wakeup(r)) for r in touched],
            ready=ready,
            unready=unready,
            fresh=fresh,
            carried=carried,
        )

    async def _load(
        self, connection: asyncpg.Connection, by_run: dict[str, list[RecordedEvent]]
    ) -> dict[str, Run]:
        runs: dict[str, Run] = {}
        missing = []
        for run_id, run_events in by_run.items():
            first = run_events[0]
            if first.version == 1:
                continue  # created in this batch
            cached = self._cache.get(run_id)
            if cached is not None and cached.version == first.version - 1:
                runs[run_id] = cached
            else:
                missing.append(run_id)
        if missing:
            rows = await connection.fetch(
                "SELECT run_id, state FROM run_state WHERE run_id = ANY($1::text[])", missing
            )
            for row in rows:
                runs[row["run_id"]] = decode_run(bytes(row["state"]))
        return runs

    def _remember(self, run: Run) -> None:
        self._cache.put(run.id, run)

    async def _write(self, connection: asyncpg.Connection, folded: _Folded) -> None:
        runs, ready, unready, fresh = folded.runs, folded.ready, folded.unready, folded.fresh
        await connection.execute(
            """
            INSERT INTO run_state (run_id, version, position, phase, concurrency_key,
                                   waiting_approval, state, view)
            SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::text[], $5::text[],
                                 $6::int[], $7::bytea[], $8::bytea[])
            ON CONFLICT (run_id) DO UPDATE SET
                version = excluded.version, position = excluded.position,
                phase = excluded.phase, concurrency_key = excluded.concurrency_key,
                waiting_approval = excluded.waiting_approval,
                state = excluded.state, view = excluded.view
            """,
            [r.id for r in runs],
            [r.version for r in runs],
            [r.position for r in runs],
            [r.phase for r in runs],
            [r.concurrency_key for r in runs],
            [r.waiting_approval for r in runs],
            folded.states,
            folded.views,
        )
        if unready:
            await connection.execute(
                "DELETE FROM ready_tasks WHERE task_id = ANY($1::text[])", list(unready)
            )
        if ready:
            rows = list(ready.values())
            await connection.execute(
                """
                INSERT INTO ready_tasks (task_id, run_id, task, attempt, not_before, runs_on,
                                         position)
                SELECT t.id, t.run, t.task, t.attempt, t.nb, t.labels::jsonb, t.pos
                FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::timestamptz[],
                            $6::text[], $7::bigint[]) AS t(id, run, task, attempt, nb, labels, pos)
                ON CONFLICT (task_id) DO UPDATE SET
                    attempt = excluded.attempt, not_before = excluded.not_before,
                    runs_on = excluded.runs_on, position = excluded.position
                """,
                *[list(column) for column in zip(*rows, strict=True)],
            )
            await connection.execute("SELECT pg_notify($1, '')", READY_CHANNEL)
        due = folded.due
        untimed = [run_id for run_id, at in due if at is None and run_id not in fresh]
        if untimed:
            await connection.execute(
                "DELETE FROM run_timers WHERE run_id = ANY($1::text[])", untimed
            )
        timed = [(run_id, at) for run_id, at in due if at is not None]
        if timed:
            await connection.execute(
                """
                INSERT INTO run_timers (run_id, due_at)
                SELECT * FROM unnest($1::text[], $2::timestamptz[])
                ON CONFLICT (run_id) DO UPDATE SET due_at = excluded.due_at
                """,
                [run_id for run_id, _ in timed],
                [at for _, at in timed],
            )


# --- reads of the run_state table, for the command side and the API -----------------------


class StoredView(msgspec.Struct, frozen=True):
    """A run's view as the projection last wrote it (JSON, as the API answers it)."""

    view: bytes
    phase: Phase
    concurrency_key: str | None


async def stored_view(pool: asyncpg.Pool, run_id: str) -> StoredView | None:
    row = await pool.fetchrow(
        "SELECT view, phase, concurrency_key FROM run_state WHERE run_id = $1", run_id
    )
    if row is None:
        return None
    return StoredView(bytes(row["view"]), row["phase"], row["concurrency_key"])


async def stored_state(pool: asyncpg.Pool, run_id: str) -> tuple[int, bytes] | None:
    """The stream version the stored state was folded to, and that state (encoded)."""
    row = await pool.fetchrow("SELECT version, state FROM run_state WHERE run_id = $1", run_id)
    return None if row is None else (row["version"], bytes(row["state"]))


async def stored_run(pool: asyncpg.Pool | asyncpg.Connection, run_id: str) -> Run | None:
    """The run as the projection last folded it; the caller reads the events after it."""
    state = await pool.fetchval("SELECT state FROM run_state WHERE run_id = $1", run_id)
    return decode_run(bytes(state)) if state is not None else None


async def ended_runs(pool: asyncpg.Pool, run_ids: Sequence[str]) -> set[str]:
    """Which of `run_ids` have ended, as far as the projection has folded."""
    rows = await pool.fetch(
        "SELECT run_id FROM run_state WHERE run_id = ANY($1::text[]) AND phase = ANY($2::text[])",
        list(run_ids),
        sorted(TERMINAL_PHASES),
    )
    return {row["run_id"] for row in rows}
