"""Retention: old runs lose their logs and artifacts, keep their history; output a newer
run still uses (a task carried over by a recreation) is kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from runsvc.domain import commands
from runsvc.domain.events import SYSTEM, stream_of
from runsvc.domain.requests import CreateRunRequest, RecreateRequest
from runsvc.http.keys import OBJECTS, PROJECTIONS, SERVICE, STORE
from runsvc.service.retention import collect
from runsvc.service.writer import Caller
from tests.fixtures.service import Service
from tests.unit.histories import config, task


async def test_gc_deletes_old_output_records_it_and_spares_carried_tasks(service: Service) -> None:
    """Output of ended runs is deleted and the deletion is in each run's history; a task
    carried into a younger run keeps its output; a second pass finds nothing to do."""
    runs = service.app[SERVICE]
    objects = service.app[OBJECTS]
    caller = Caller(SYSTEM)
    request = CreateRunRequest(
        group="/gc", name="old", config=config(task("build"), task("test", "build"))
    )
    old, _ = await runs.create(request, caller)
    await runs.execute(
        old.id,
        lambda r, now: commands.start_attempt(r, "build", attempt=1, executor="e", now=now),
        caller,
    )
    await runs.execute(
        old.id,
        lambda r, now: commands.finish_attempt(
            r, "build", attempt=1, succeeded=True, exit_code=0, error=None, now=now
        ),
        caller,
    )
    await runs.execute(
        old.id,
        lambda r, now: commands.start_attempt(r, "test", attempt=1, executor="e", now=now),
        caller,
    )
    await runs.execute(
        old.id,
        lambda r, now: commands.finish_attempt(
            r, "test", attempt=1, succeeded=False, exit_code=1, error=None, now=now
        ),
        caller,
    )
    old = await runs.load(old.id)
    build_id, test_id = old.tasks["build"].id, old.tasks["test"].id
    for task_id in (build_id, test_id):
        await objects.put(f"logs/{task_id}/1.log", b"output")
        await objects.put(f"artifacts/{task_id}/report.txt", b"report")

    cutoff = datetime.now(UTC) + timedelta(minutes=1)  # everything ended before it
    for runner in service.app[PROJECTIONS]:
        await runner.catch_up()
    newer = await runs.recreate(old.id, RecreateRequest(), caller)  # carries "build"
    assert newer.tasks["build"].id == build_id
    for runner in service.app[PROJECTIONS]:
        await runner.catch_up()

    collected = await collect(runs, objects, older_than=cutoff)
    assert [(c.run_id, c.logs, c.artifacts) for c in collected] == [(old.id, 1, 1)]
    assert [i.key async for i in objects.list(f"logs/{test_id}/")] == []
    assert [i.key async for i in objects.list(f"logs/{build_id}/")] == [f"logs/{build_id}/1.log"]
    events = await service.app[STORE].read_stream(stream_of(old.id))
    assert events[-1].type == "run_output_deleted"
    assert (await runs.load(old.id)).output_deleted_at is not None
    assert await collect(runs, objects, older_than=cutoff) == []
