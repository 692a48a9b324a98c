"""Rebuilding every projection while the service serves: in one process or partitioned
over worker processes, the rebuilt tables equal the incrementally maintained ones."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from projections.rebuild import RebuildProgress, rebuild_all
from projections.registry import all_projections
from runsvc.http.keys import PROJECTIONS, STORE
from runsvc.infra.settings import Settings
from tests.fixtures.service import Service
from tests.integration.test_runs_api import run_tasks

# Columns a live process may change without an event (a claim's reservation, a timer
# loop's claim); a rebuild starts them empty.
VOLATILE = {"ready_tasks": "reserved_until", "run_timers": "claimed_until"}

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
            volatile = VOLATILE.get(table)
            rows[table] = [
                tuple(v for k, v in record.items() if k != volatile) for record in records
            ]
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
