"""Rebuilding every projection while the service serves: in one process or partitioned
over worker processes, the rebuilt tables equal the incrementally maintained ones."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from projections.rebuild import RebuildProgress, rebuild_all
from projections.registry import all_projections
from runsvc.domain import commands
from runsvc.domain.events import SYSTEM
from runsvc.http.keys import LEASES, PROJECTIONS, SERVICE, STORE
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.settings import Settings
from runsvc.service.timers import claim_due
from runsvc.service.writer import Caller
from runsvc.wire.executor import Completion
from tests.fixtures.service import Service, service_settings, start_service
from tests.integration.test_runs_api import caught_up, create, run_tasks

CONFIG: dict[str, Any] = {
    "timeout": "1h",
    "tasks": [
        {"name": "build", "run": "make", "timeout": "10m"},
        {"name": "shard", "run": "t", "depends": ["build"], "foreach": ["1", "2", "3"]},
        {"name": "flaky", "run": "t", "depends": ["build"], "retry": {"max_attempts": 3}},
        {"name": "cleanup", "run": "c", "depends": [{"task": "flaky", "on": ["failure"]}]},
        {"name": "deploy", "run": "d", "depends": ["shard"], "approval": True},
    ],
}


async def table_rows(pool: asyncpg.Pool) -> dict[str, list[tuple[object, ...]]]:
    rows = {}
    for projection in all_projections():
        for table in projection.tables:
            records = await pool.fetch(f"SELECT * FROM {table} ORDER BY 1")
            rows[table] = [tuple(record.values()) for record in records]
    return rows


async def workload(service: Service, runs: int, seed: int) -> None:
    """Runs in every state the projections distinguish: queued behind a concurrency key,
    running with scheduled (claimable) tasks, retried, waiting for approval, stopped,
    finished."""
    rng = random.Random(seed)

    async def one(n: int) -> None:
        body = {"group": f"/acme/{n % 3}", "name": "ci", "config": CONFIG}
        if n % 5 == 0:
            body["concurrency_key"] = "deploys"
        response = await service.client.post("/api/v1/runs", json=body, headers=service.auth())
        assert response.status == 201, await response.text()
        run_id = (await response.json())["id"]
        if n % 5 == 0:
            return
        await run_tasks(service, run_id, "build")
        if rng.random() < 0.7:
            await run_tasks(service, run_id, "shard[0]", "shard[1]", "shard[2]")
        if rng.random() < 0.5:
            await run_tasks(service, run_id, "flaky", ok=False)
        if rng.random() < 0.3:
            stopped = await service.client.post(
                f"/api/v1/runs/{run_id}/stop", headers=service.auth()
            )
            assert stopped.status in (204, 409)

    await asyncio.gather(*(one(n) for n in range(runs)))


async def caught_up_rows(service: Service) -> dict[str, list[tuple[object, ...]]]:
    for runner in service.app[PROJECTIONS]:
        await runner.catch_up()
    return await table_rows(service.app[STORE].pool)


@pytest.mark.parametrize("workers", [1, 2])
async def test_rebuild_while_serving_equals_the_live_projections(
    service: Service, service_config: Settings, workers: int
) -> None:
    """After a workload through the real command side, rebuilding every projection (in
    one pass, or partitioned over two worker processes) swaps in tables equal to what
    the live runners built, reports progress up to the head, and the live runners carry
    on from the rebuilt checkpoint."""
    await workload(service, 30, seed=workers)
    live = await caught_up_rows(service)
    assert live["ready_tasks"], "the workload left no claimable task"
    assert live["run_timers"], "the workload left no timer"

    store = service.app[STORE]
    reports: list[RebuildProgress] = []
    assert service_config.database_url is not None
    finals = await rebuild_all(
        store,
        service_config.database_url,
        all_projections(),
        page_size=40,
        workers=workers,
        progress=reports.append,
        progress_every=0,
    )
    head = await store.head()
    assert [f.position for f in finals] == [head] * len(finals)
    assert reports[-1].position == head
    assert await table_rows(store.pool) == live

    await workload(service, 4, seed=9)
    after = await caught_up_rows(service)
    assert len(after["runs_index"]) == len(live["runs_index"]) + 4


async def test_a_rebuild_keeps_claims_in_flight(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """A rebuild replaces the claim queue and the timers, but never what live commands rely
    on: an executor's active lease still heartbeats and completes, a claim between its
    reservation and its start is not handed to a second executor, and a run a timer loop
    is ticking is not claimed by another."""
    # The service's own timer loop looks once, at start: this test plays the timer loop.
    settings = service_settings(
        database_dsn, tmp_path, object_store_config, timer_interval_s=3600.0
    )
    async for service in start_service(settings):
        await _claims_survive_a_rebuild(service, settings)


async def _claims_survive_a_rebuild(service: Service, settings: Settings) -> None:
    runs, leases = service.app[SERVICE], service.app[LEASES]
    claimed = await create(
        service,
        config={"tasks": [{"name": "leased", "run": "true"}, {"name": "reserved", "run": "true"}]},
    )
    # A run of its own (any command on a run also applies its timeouts): started two hours
    # ago with a one-hour timeout, its timer is due now.
    timed = await create(
        service, config={"tasks": [{"name": "overdue", "run": "sleep 100", "timeout": "1h"}]}
    )
    await runs.execute(
        timed["id"],
        lambda r, now: commands.start_attempt(
            r, "overdue", attempt=1, executor="e", now=now - timedelta(hours=2)
        ),
        Caller(SYSTEM),
    )
    await caught_up(service)
    claim = await leases.claim("executor-1", {}, wait_s=0)
    assert claim is not None
    in_flight = await leases._reserve({})
    assert in_flight is not None
    assert in_flight["won"]
    await caught_up(service)
    ticking = await claim_due(runs)
    assert [run_id for run_id, _ in ticking] == [timed["id"]]

    assert settings.database_url is not None
    await rebuild_all(service.app[STORE], settings.database_url, all_projections())
    await caught_up(service)

    assert await claim_due(runs) == []
    assert await leases.claim("executor-2", {}, wait_s=0) is None
    assert await leases.heartbeat(claim.lease) is None  # None: keep going
    await leases.complete(claim.lease, Completion(status="success", exit_code=0))
    after = await runs.load(claimed["id"])
    assert after.tasks[claim.task.task].status == "success"
    assert {claim.task.task, in_flight["task"]} == {"leased", "reserved"}
