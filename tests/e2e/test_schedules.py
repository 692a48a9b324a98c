"""Two `runsvc serve` processes on one database, a schedule firing every 2 seconds by the
real clock for most of a minute, one process SIGKILLed and restarted meanwhile: every fire
time from the schedule's creation to its pause made exactly one run."""

from __future__ import annotations

import asyncio
import itertools
import signal
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.processes import Cluster, api

pytestmark = pytest.mark.slow

EVERY = timedelta(seconds=2)


async def schedule_events(cluster: Cluster, schedule_id: str) -> list[dict[str, Any]]:
    status, body = await api(cluster, "GET", f"/api/v1/schedules/{schedule_id}/events")
    assert status == 200, body
    events: list[dict[str, Any]] = body["events"]
    return events


async def fired_count(cluster: Cluster, schedule_id: str) -> int:
    events = await schedule_events(cluster, schedule_id)
    return sum(1 for e in events if e["type"] == "schedule_fired")


async def until_fired(cluster: Cluster, schedule_id: str, count: int) -> None:
    """Until the schedule has fired `count` times: another process's commit announces
    nothing to this test, so it looks every 0.2 s, for 60 s at most."""
    for _ in range(300):
        if await fired_count(cluster, schedule_id) >= count:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"fewer than {count} firings within 60 s")


async def test_every_fire_time_made_one_run_across_a_sigkill(cluster: Cluster) -> None:
    await cluster.start_server()
    body = {
        "name": "pulse",
        "group": "/e2e/schedules",
        "cron": "@every 2s",
        "overlap": "allow",
        "catchup": "all",
        "catchup_limit": 1000,
        "run": {"config": {"tasks": [{"name": "noop", "run": "true"}]}},
    }
    status, created = await api(cluster, "POST", "/api/v1/schedules", json=body)
    assert status == 201, created
    schedule_id = created["id"]
    await until_fired(cluster, schedule_id, 5)

    victim, url = cluster.servers[1]
    victim.send_signal(signal.SIGKILL)
    await asyncio.to_thread(victim.wait)
    await until_fired(cluster, schedule_id, 10)  # the survivor goes on alone
    await cluster.start_server(int(url.rsplit(":", 1)[1]))
    await until_fired(cluster, schedule_id, 20)

    status, _ = await api(
        cluster, "PATCH", f"/api/v1/schedules/{schedule_id}", json={"paused": True}
    )
    assert status == 200
    events = await schedule_events(cluster, schedule_id)
    created_at = datetime.fromisoformat(events[0]["data"]["at"])
    fired = [
        datetime.fromisoformat(e["data"]["fire_at"])
        for e in events
        if e["type"] == "schedule_fired"
    ]
    assert not [e for e in events if e["type"] == "schedule_skipped"]
    # Every fire time from the creation on, none twice, none left out.
    assert fired[0] - created_at <= EVERY
    assert all(b - a == EVERY for a, b in itertools.pairwise(fired))
    run_ids = [e["data"]["run_id"] for e in events if e["type"] == "schedule_fired"]
    assert len(set(run_ids)) == len(run_ids)
    for run_id, fire_at in zip(run_ids, fired, strict=True):
        status, run = await api(cluster, "GET", f"/api/v1/runs/{run_id}")
        assert status == 200
        assert run["annotations"]["runsvc.schedule"] == schedule_id
        assert run["idempotency_key"] == f"schedule:{schedule_id}:{fire_at:%Y-%m-%dT%H:%M:%S}Z"
    # No run of the group but the firings' (a run made twice for one fire time would be
    # here without a firing of its own). The index may trail the log by a moment.
    async with asyncio.timeout(30):
        while True:
            status, page = await api(
                cluster, "GET", "/api/v1/runs", params={"group": "/e2e/schedules", "limit": "500"}
            )
            assert status == 200
            listed = {r["id"] for r in page["runs"]}
            if len(listed) >= len(run_ids):
                break
            await asyncio.sleep(0.2)
    assert listed == set(run_ids)
