"""Retention: delete the logs and artifacts of runs that ended before a cutoff, and record
that in each run's history. Runs and their events stay.

This module holds the SQL of `output_deleted`.

A task carried into a newer run by a recreation shares its id, and so its output, with
that run; such a task's output is kept while any run using it is younger than the cutoff.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime

import msgspec
import structlog

from projections.index_queries import carried_into_younger_runs, ended_before
from runsvc.domain import commands
from runsvc.domain.events import SYSTEM
from runsvc.infra.objectstore import ObjectStore
from runsvc.service.runs import RunService
from runsvc.service.task_logs import artifact_prefix, drop_chunks
from runsvc.service.writer import Caller

log = structlog.get_logger("runsvc.retention")


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
    ended = await ended_before(runs.pool, older_than)
    deleted = {
        row["run_id"]
        for row in await runs.pool.fetch(
            "SELECT run_id FROM output_deleted WHERE run_id = ANY($1::text[])", ended
        )
    }
    candidates = [run_id for run_id in ended if run_id not in deleted]
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
    protected = await carried_into_younger_runs(runs.pool, task_ids, run_id, older_than)
    logs = artifacts = 0
    for task_id in task_ids:
        if task_id in protected:
            continue
        logs += await objects.delete_prefix(f"logs/{task_id}/")
        artifacts += await objects.delete_prefix(artifact_prefix(task_id))
    await drop_chunks(runs.pool, [t for t in task_ids if t not in protected])

    record = functools.partial(
        commands.record_output_deleted, older_than=older_than, logs=logs, artifacts=artifacts
    )
    await runs.execute(run_id, record, Caller(SYSTEM))
    await runs.pool.execute(
        "INSERT INTO output_deleted (run_id) VALUES ($1) ON CONFLICT DO NOTHING", run_id
    )
    log.info("run output deleted", run_id=run_id, logs=logs, artifacts=artifacts)
    return Collected(run_id=run_id, logs=logs, artifacts=artifacts)
