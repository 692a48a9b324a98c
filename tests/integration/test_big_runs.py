"""Runs past BIG_RUN_TASKS are created in a worker thread: the run, and what commands
decide for it, are the same as on the event loop, and a refused command changes
nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from runsvc.domain import commands
from runsvc.domain.codec import encode_run
from runsvc.domain.errors import Conflict, NotFound
from runsvc.domain.events import SYSTEM
from runsvc.domain.fold import apply
from runsvc.domain.model import Run
from runsvc.http.keys import SERVICE, STORE
from runsvc.service.writer import BIG_RUN_TASKS, Caller
from tests.fixtures.service import Service
from tests.integration.test_runs_api import caught_up, create


def big_config() -> dict[str, Any]:
    tasks: list[dict[str, Any]] = [{"name": "root", "run": "true"}]
    tasks += [
        {"name": f"t{n}", "run": "true", "depends": ["root"]} for n in range(BIG_RUN_TASKS + 100)
    ]
    return {"tasks": tasks}


async def replayed(service: Service, run_id: str) -> Run:
    run: Run | None = None
    for recorded in await service.app[STORE].read_stream(f"run-{run_id}"):
        run = apply(run, recorded)
    assert run is not None
    return run


async def test_a_big_run_is_decided_as_a_small_one_would_be(service: Service) -> None:
    created = await create(service, config=big_config())
    run_id = created["id"]
    runs = service.app[SERVICE]
    caller = Caller(SYSTEM)

    # Two commands at once are decided in one batch; the one that is refused fails alone.
    started, unknown = await asyncio.gather(
        runs.execute(
            run_id,
            lambda r, now: commands.start_attempt(r, "root", attempt=1, executor="e", now=now),
            caller,
        ),
        runs.execute(
            run_id,
            lambda r, now: commands.start_attempt(r, "nope", attempt=1, executor="e", now=now),
            caller,
        ),
        return_exceptions=True,
    )
    assert isinstance(unknown, Conflict | NotFound)
    assert isinstance(started, Run)
    assert started.tasks["root"].status == "running"

    stopped = await runs.stop(run_id, caller)
    assert stopped.stop_requested
    cached = await runs.load(run_id)
    assert encode_run(cached) == encode_run(await replayed(service, run_id))
    await caught_up(service)
    view = await service.client.get(f"/api/v1/runs/{run_id}", headers=service.auth())
    assert (await view.json())["stop_requested"] is True
    verified = await service.client.get(f"/api/v1/runs/{run_id}/verify", headers=service.auth())
    assert (await verified.json())["ok"] is True
