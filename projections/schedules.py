"""Every schedule, folded from its stream: what `GET /schedules` lists and what the firing
loop of each `runsvc serve` process asks when it looks for due schedules.

The stream stays the authority: the loop re-reads a due schedule's stream before it fires,
so this table being a moment behind costs a wasted look, never a wrong firing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import asyncpg
import msgspec
import structlog

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from runsvc.domain.events import SCHEDULE_STREAM_PREFIX, schedule_id_of
from runsvc.domain.schedules import ScheduleState, fold, next_fire_at

_DDL = (Path(__file__).parent / "sql" / "schedules.sql").read_text()
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ScheduleState)
log = structlog.get_logger("runsvc.projections")


def decode_state(data: bytes) -> ScheduleState:
    return _decoder.decode(data)


async def stored_schedule(pool: asyncpg.Pool, schedule_id: str) -> ScheduleState | None:
    """The schedule as the projection folded it, or None when it has not yet."""
    data = await pool.fetchval("SELECT state FROM schedules WHERE schedule_id = $1", schedule_id)
    return None if data is None else decode_state(data)


class SchedulesProjection:
    name = "schedules"
    version = 1
    tables: tuple[str, ...] = ("schedules",)
    per_stream = True
    filter: EventFilter | None = EventFilter(stream_prefix=SCHEDULE_STREAM_PREFIX)

    def ddl(self) -> str:
        return _DDL

    async def apply(self, connection: asyncpg.Connection, events: Sequence[RecordedEvent]) -> None:
        by_schedule: dict[str, list[RecordedEvent]] = {}
        for recorded in events:
            by_schedule.setdefault(schedule_id_of(recorded.stream), []).append(recorded)
        rows = await connection.fetch(
            "SELECT schedule_id, state FROM schedules WHERE schedule_id = ANY($1::text[])",
            list(by_schedule),
        )
        states = {row["schedule_id"]: decode_state(row["state"]) for row in rows}
        written = []
        for schedule_id, stream_events in by_schedule.items():
            state = states.get(schedule_id)
            try:
                for recorded in stream_events:
                    state = fold(state, recorded.event, recorded.version)
            except ValueError as exc:
                # Not a stream the service wrote: leave it out rather than stop the
                # projection for every other schedule.
                log.warning("skipping a schedule stream", schedule=schedule_id, error=str(exc))
                continue
            assert state is not None
            written.append(
                (
                    schedule_id,
                    state.spec.group,
                    state.spec.name,
                    state.deleted,
                    next_fire_at(state),
                    state.version,
                    stream_events[-1].position,
                    _encoder.encode(state),
                )
            )
        await connection.executemany(
            """
            INSERT INTO schedules (schedule_id, group_path, name, deleted, next_fire_at,
                                   version, position, state)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (schedule_id) DO UPDATE SET
                group_path = excluded.group_path, name = excluded.name,
                deleted = excluded.deleted, next_fire_at = excluded.next_fire_at,
                version = excluded.version, position = excluded.position,
                state = excluded.state
            """,
            written,
        )
