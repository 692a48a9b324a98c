"""The full index of all runs: one small row per run (group path, name, counter, phase,
result, times), queryable by group prefix, phase, result and time with keyset pagination.

Only the events that change those columns are read (`filter`), so the index keeps up with
the log cheaply and rebuilds fast: a batch is folded in memory into new rows and column
patches, then written with two set-based statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from runsvc.domain.events import (
    RUN_STREAM_PREFIX,
    Phase,
    Result,
    RunCreated,
    RunPhaseChanged,
    RunResultChanged,
    run_id_of,
    type_name,
)

_DDL = (Path(__file__).parent / "sql" / "index.sql").read_text()


@dataclass
class IndexRow:
    """One run's index entry as the fold builds it."""

    run_id: str
    group_path: str
    name: str
    counter: int
    phase: Phase
    result: Result
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    created_position: int
    updated_position: int

    def as_tuple(self) -> tuple[Any, ...]:
        return (
            self.run_id,
            self.group_path,
            self.name,
            self.counter,
            self.phase,
            self.result,
            self.created_at,
            self.started_at,
            self.finished_at,
            self.created_position,
            self.updated_position,
        )


@dataclass
class _Patch:
    phase: Phase | None = None
    result: Result | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    position: int = 0


_TERMINAL_PHASES = frozenset({"finished", "cancelled", "setuperror"})


def apply_phase(
    phase: Phase, at: datetime, started_at: datetime | None, finished_at: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """The run's (started_at, finished_at) after entering `phase` at `at`."""
    if phase == "running" and started_at is None:
        started_at = at
    if phase in _TERMINAL_PHASES and finished_at is None:
        finished_at = at
    return started_at, finished_at


class IndexProjection:
    name = "index"
    # 2: an index on the run's name, for `?name=`.
    version = 2
    tables: tuple[str, ...] = ("runs_index",)
    per_stream = True
    filter: EventFilter | None = EventFilter(
        stream_prefix=RUN_STREAM_PREFIX,
        types=frozenset(type_name(t) for t in (RunCreated, RunPhaseChanged, RunResultChanged)),
    )

    def ddl(self) -> str:
        return _DDL

    async def apply(self, connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        created: dict[str, IndexRow] = {}
        patches: dict[str, _Patch] = {}
        for recorded in events:
            event = recorded.event
            run_id = run_id_of(recorded.stream)
            if isinstance(event, RunCreated):
                created[run_id] = IndexRow(
                    run_id=run_id,
                    group_path=event.group,
                    name=event.name,
                    counter=event.counter,
                    phase="queued",
                    result="unknown",
                    created_at=event.created_at,
                    started_at=None,
                    finished_at=None,
                    created_position=recorded.position,
                    updated_position=recorded.position,
                )
                continue
            row = created.get(run_id)
            if row is not None:
                if isinstance(event, RunPhaseChanged):
                    row.phase = event.phase
                    row.started_at, row.finished_at = apply_phase(
                        event.phase, event.at, row.started_at, row.finished_at
                    )
                elif isinstance(event, RunResultChanged):
                    row.result = event.result
                row.updated_position = recorded.position
                continue
            patch = patches.setdefault(run_id, _Patch())
            if isinstance(event, RunPhaseChanged):
                patch.phase = event.phase
                if event.phase == "running" and patch.started_at is None:
                    patch.started_at = event.at
                if event.phase in _TERMINAL_PHASES and patch.finished_at is None:
                    patch.finished_at = event.at
            elif isinstance(event, RunResultChanged):
                patch.result = event.result
            patch.position = recorded.position
        if created:
            await connection.copy_records_to_table(
                "runs_index", records=[row.as_tuple() for row in created.values()]
            )
        if patches:
            ids = list(patches)
            values = list(patches.values())
            # COALESCE keeps a time already set: started_at and finished_at are first-wins.
            await connection.execute(
                """
                UPDATE runs_index r SET
                    phase = coalesce(p.phase, r.phase),
                    result = coalesce(p.result, r.result),
                    started_at = coalesce(r.started_at, p.started_at),
                    finished_at = coalesce(r.finished_at, p.finished_at),
                    updated_position = p.position
                FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[],
                            $5::timestamptz[], $6::bigint[])
                    AS p(run_id, phase, result, started_at, finished_at, position)
                WHERE r.run_id = p.run_id
                """,
                ids,
                [v.phase for v in values],
                [v.result for v in values],
                [v.started_at for v in values],
                [v.finished_at for v in values],
                [v.position for v in values],
            )
