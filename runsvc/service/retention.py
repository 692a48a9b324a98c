"""Retention: delete the logs and artifacts of runs that ended before a cutoff, and record
that in each run's history. Runs and their events stay.

A task carried into a newer run by a recreation shares its id, and so its output, with
that run; such a task's output is kept while any run using it is younger than the cutoff.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import msgspec
import structlog

from runsvc.domain.events import SYSTEM, Event, RunOutputDeleted
from runsvc.domain.model import Run
from runsvc.infra.objectstore import ObjectStore
from runsvc.service.runs import Caller, RunService
from runsvc.service.task_logs import artifact_prefix

log = structlog.get_logger("runsvc.retention")
_TERMINAL = ["finished", "cancelled", "setuperror"]


class Collected(msgspec.Struct, frozen=True):
    run_id: str
    logs: int
    artifacts: int


async def collect(
    runs: RunService,
    objects: ObjectStore,
    *,
    older_than: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> list[Collected]:
    """Delete the output of every run that ended before `older_than` and still has it."""
    candidates = [
        row["run_id"]
        for row in await runs.pool.fetch(
            """
            SELECT r.run_id FROM runs_index r
            WHERE r.phase = ANY($1::text[]) AND r.finished_at < $2
              AND NOT EXISTS (SELECT 1 FROM output_deleted d WHERE d.run_id = r.run_id)
            ORDER BY r.finished_at
            """,
            _TERMINAL,
            older_than,
        )
    ]
    done: list[Collected] = []
    for index, run_id in enumerate(candidates, start=1):
        done.append(await _collect_run(runs, objects, run_id, older_than))
        if progress is not None:
            progress(index, len(candidates))
    return done


async def _collect_run(
    runs: RunService, objects: ObjectStore, run_id: str, older_than: datetime
) -> Collected:
    run = await runs.load(run_id)
    task_ids = sorted({task.id for task in run.tasks.values()})
    protected = {
        row["task_id"]
        for row in await runs.pool.fetch(
            """
            SELECT c.task_id FROM carried_tasks c JOIN runs_index r ON r.run_id = c.run_id
            WHERE c.task_id = ANY($1::text[]) AND c.run_id <> $2
              AND NOT (r.phase = ANY($3::text[]) AND r.finished_at < $4)
            """,
            task_ids,
            run_id,
            _TERMINAL,
            older_than,
        )
    }
    logs = artifacts = 0
    for task_id in task_ids:
        if task_id in protected:
            continue
        logs += await objects.delete_prefix(f"logs/{task_id}/")
        artifacts += await objects.delete_prefix(artifact_prefix(task_id))
    await runs.pool.execute(
        "DELETE FROM log_chunks WHERE task_id = ANY($1::text[])",
        [t for t in task_ids if t not in protected],
    )

    def record(current: Run, now: datetime) -> list[Event]:
        if current.output_deleted_at is not None:
            return []
        return [RunOutputDeleted(at=now, older_than=older_than, logs=logs, artifacts=artifacts)]

    await runs.execute(run_id, record, Caller(SYSTEM))
    await runs.pool.execute(
        "INSERT INTO output_deleted (run_id) VALUES ($1) ON CONFLICT DO NOTHING", run_id
    )
    log.info("run output deleted", run_id=run_id, logs=logs, artifacts=artifacts)
    return Collected(run_id=run_id, logs=logs, artifacts=artifacts)
