"""Schedules on real `runsvc serve` processes and the real clock: two processes on one
database, a schedule firing every 2 seconds for most of a minute, one process SIGKILLed and
restarted meanwhile: every fire time from the schedule's creation to its pause made exactly
one run. And a scheduled batch run by an executor, a webhook telling a receiver of each
run's end."""

from __future__ import annotations

import asyncio
import itertools
import signal
from datetime import datetime, timedelta
from typing import Any

import pytest

from tests.fixtures.processes import Cluster, api
from tests.webhook_receiver import Receiver

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


async def test_a_scheduled_batch_runs_on_time_and_a_webhook_says_each_finished(
    cluster: Cluster,
) -> None:
    """The issue's end to end: a schedule starts a batch every 2 s, an executor runs it,
    and a webhook tells a local receiver, signed, when each run finished."""
    secret = "whsec-schedules-e2e-3c1f9a"
    receiver = Receiver(secret)
    await receiver.start()
    try:
        cluster.start_executor("batch", concurrency=2)
        status, hook = await api(
            cluster,
            "POST",
            "/api/v1/webhooks",
            json={"url": receiver.url, "secret": secret, "types": ["run_finished"],
                  "group": "/e2e/batch"},
        )  # fmt: skip
        assert status == 201, hook
        body = {
            "name": "batch",
            "group": "/e2e/batch",
            "cron": "@every 2s",
            "overlap": "allow",
            "run": {"config": {"tasks": [
                {"name": "extract", "run": "echo rows=3"},
                {"name": "load", "depends": ["extract"], "run": "echo loaded"},
            ]}},
        }  # fmt: skip
        status, created = await api(cluster, "POST", "/api/v1/schedules", json=body)
        assert status == 201, created
        await receiver.wait_for(lambda r: len(r.accepted) >= 3)
        status, _ = await api(
            cluster, "PATCH", f"/api/v1/schedules/{created['id']}", json={"paused": True}
        )
        assert status == 200
        events = await schedule_events(cluster, created["id"])
        fired = {
            e["data"]["run_id"]: datetime.fromisoformat(e["data"]["fire_at"])
            for e in events
            if e["type"] == "schedule_fired"
        }
        finished = receiver.accepted[:3]
        assert all(a.signed for a in finished)
        assert all(a.event_type == "run_phase_changed" for a in finished)
        assert all(a.body["data"]["phase"] == "finished" for a in finished)
        for arrival in finished:
            run_id = arrival.body["stream"].removeprefix("run-")
            assert run_id in fired  # each finished run was made by a firing
            status, run = await api(cluster, "GET", f"/api/v1/runs/{run_id}")
            assert run["result"] == "success"
            key = f"schedule:{created['id']}:{fired[run_id]:%Y-%m-%dT%H:%M:%S}Z"
            assert run["idempotency_key"] == key
    finally:
        await receiver.stop()
