"""The timer loop: what time alone changes (task and run timeouts) is recorded in the
run_timers table (maintained by the run_state projection from the log); every service
process claims due rows with FOR UPDATE SKIP LOCKED and ticks those runs. Nothing lives
only in memory: a process that dies leaves its claims to expire and be taken again.

The loop also repairs what a crash between two commits could leave behind: a concurrency
slot still held by a run that has ended.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from runsvc.domain.errors import ServiceError
from runsvc.domain.events import SYSTEM
from runsvc.domain.timing import next_wakeup
from runsvc.service.runs import Caller, RunService

log = structlog.get_logger("runsvc.timers")
_CLAIM_FOR = "30 seconds"


async def claim_due(service: RunService, limit: int = 100) -> list[str]:
    rows = await service.pool.fetch(
        f"""
        UPDATE run_timers SET claimed_until = now() + interval '{_CLAIM_FOR}'
        WHERE run_id IN (
            SELECT run_id FROM run_timers
            WHERE due_at <= now() AND (claimed_until IS NULL OR claimed_until < now())
            ORDER BY due_at LIMIT $1
            FOR UPDATE SKIP LOCKED
        )
        RETURNING run_id
        """,
        limit,
    )
    return [row["run_id"] for row in rows]


async def tick_due(service: RunService) -> int:
    """Tick every due run once; returns how many."""
    caller = Caller(SYSTEM)
    due = await claim_due(service)
    for run_id in due:
        try:
            run = await service.tick(run_id, caller)
        except ServiceError as exc:
            log.warning("timer tick refused", run_id=run_id, error=str(exc))
            continue
        # When the tick decided nothing, the projection will not rewrite the row: move it
        # to the run's next wake-up here so it is not claimed again for nothing.
        wakeup = next_wakeup(run)
        if wakeup is None:
            await service.pool.execute("DELETE FROM run_timers WHERE run_id = $1", run_id)
        elif wakeup > service.clock():
            await service.pool.execute(
                "UPDATE run_timers SET due_at = $2, claimed_until = NULL WHERE run_id = $1",
                run_id,
                wakeup,
            )
    return len(due)


async def release_stale_slots(service: RunService) -> None:
    rows = await service.pool.fetch(
        """
        SELECT s.key, s.run_id FROM concurrency_slots s
        JOIN run_state r ON r.run_id = s.run_id
        WHERE r.phase IN ('finished', 'cancelled', 'setuperror')
        """
    )
    for row in rows:
        await service.release_slot(row["key"], row["run_id"], Caller(SYSTEM))


Job = Callable[[], Awaitable[object]]


async def timer_loop(
    service: RunService, *, jobs: Sequence[tuple[int, Job]] = (), interval: float = 1.0
) -> None:
    """Tick due runs every `interval`; run each extra job every n rounds. Until cancelled."""
    every: list[tuple[int, Job]] = [(10, lambda: release_stale_slots(service)), *jobs]
    rounds = 0
    while True:
        for job in [lambda: tick_due(service)] + [j for n, j in every if rounds % n == 0]:
            try:
                await job()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer job failed")
        rounds += 1
        await asyncio.sleep(interval)
