"""Schedules through the API on a real database: create, read, list, change, pause, delete,
trigger, and firings decided on a clock the test sets (the loop's own clock)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from runsvc.http.keys import SCHEDULES, SERVICE, SETTINGS
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.service.schedules import ScheduleService
from tests.fixtures.service import Service, service_settings, start_service
from tests.integration.test_runs_api import caught_up

T0 = datetime(2031, 3, 10, 12, 0, 30, tzinfo=UTC)


def schedule_body(**fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "nightly",
        "group": "/acme/nightly",
        "cron": "0 * * * *",
        "run": {"config": {"tasks": [{"name": "work", "run": "true"}]}},
    }
    body.update(fields)
    return body


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def clocked(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> AsyncIterator[tuple[Service, FakeClock]]:
    """The service, its schedules deciding on a clock the test moves and firing only when
    the test says (`fire`): its own loop looks once at start, then not for an hour."""
    settings = service_settings(
        database_dsn, tmp_path, object_store_config, timer_interval_s=3600.0
    )
    async for service in start_service(settings):
        clock = FakeClock(T0)
        service.app[SCHEDULES].clock = clock
        yield service, clock


async def create_schedule(service: Service, **fields: Any) -> dict[str, Any]:
    response = await service.client.post(
        "/api/v1/schedules", json=schedule_body(**fields), headers=service.auth("submitter")
    )
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def get_schedule(service: Service, schedule_id: str) -> dict[str, Any]:
    response = await service.client.get(
        f"/api/v1/schedules/{schedule_id}", headers=service.auth("reader")
    )
    assert response.status == 200, await response.text()
    found: dict[str, Any] = await response.json()
    return found


async def runs_of(service: Service, schedule_id: str) -> list[dict[str, Any]]:
    await caught_up(service)
    response = await service.client.get(
        "/api/v1/runs?group=/acme&limit=500", headers=service.auth("reader")
    )
    listed = (await response.json())["runs"]
    runs = [await service.app[SERVICE].load(r["id"]) for r in listed]
    return [
        {"id": r.id, "key": r.idempotency_key}
        for r in runs
        if r.annotations.get("runsvc.schedule") == schedule_id
    ]


async def fire(service: Service) -> int:
    await caught_up(service)
    return await service.app[SCHEDULES].fire_due()


async def test_a_schedule_is_created_read_and_listed(service: Service) -> None:
    created = await create_schedule(service, timezone="Europe/Berlin", cron="30 2 * * *")
    assert created["name"] == "nightly"
    assert created["timezone"] == "Europe/Berlin"
    assert created["paused"] is False
    assert created["overlap"] == "skip"
    assert created["catchup"] == "latest"
    # 02:30 in Berlin is 00:30 or 01:30 UTC, depending on the season.
    next_fire = datetime.fromisoformat(created["next_fire_at"])
    assert next_fire.minute == 30
    assert next_fire.hour in (0, 1)
    assert await get_schedule(service, created["id"]) == created
    response = await service.client.get(
        "/api/v1/schedules?group=/acme", headers=service.auth("reader")
    )
    assert [s["id"] for s in (await response.json())["schedules"]] == [created["id"]]
    response = await service.client.get(
        "/api/v1/schedules?group=/other", headers=service.auth("reader")
    )
    assert (await response.json())["schedules"] == []


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"group": "relative"}, "group"),
        ({"run": {"config": {"tasks": [{"name": "a", "depends": ["b"]}]}}}, "run.config.tasks[0]"),
    ],
)
async def test_a_bad_schedule_is_a_400_with_its_path(
    service: Service, fields: dict[str, Any], path: str
) -> None:
    response = await service.client.post(
        "/api/v1/schedules", json=schedule_body(**fields), headers=service.auth("submitter")
    )
    assert response.status == 400, await response.text()
    body = await response.json()
    assert body["code"] == "bad_request"
    assert any(d["path"].startswith(path) for d in body["details"]), body
    await caught_up(service)
    listed = await service.client.get("/api/v1/schedules", headers=service.auth("reader"))
    assert (await listed.json())["schedules"] == []


async def test_a_run_body_cannot_set_its_own_idempotency_key(service: Service) -> None:
    run = {"config": {"tasks": [{"name": "a", "run": "true"}]}, "idempotency_key": "mine"}
    response = await service.client.post(
        "/api/v1/schedules", json=schedule_body(run=run), headers=service.auth("submitter")
    )
    assert response.status == 400
    assert "idempotency_key" in (await response.text())


async def test_roles_reader_reads_and_only_submitters_manage(service: Service) -> None:
    created = await create_schedule(service)
    one = f"/api/v1/schedules/{created['id']}"
    reader = service.auth("reader")
    assert (await service.client.get(one, headers=reader)).status == 200
    assert (
        await service.client.post("/api/v1/schedules", json=schedule_body(), headers=reader)
    ).status == 403
    assert (await service.client.patch(one, json={"paused": True}, headers=reader)).status == 403
    assert (await service.client.delete(one, headers=reader)).status == 403
    assert (await service.client.post(f"{one}/trigger", headers=reader)).status == 403
    executor = service.auth("executor")
    assert (await service.client.get(one, headers=executor)).status == 403
    assert (await service.client.get("/api/v1/schedules", headers=executor)).status == 403
    admin = service.auth("admin")
    assert (await service.client.patch(one, json={"paused": True}, headers=admin)).status == 200


async def test_a_firing_makes_one_run_with_the_schedules_key(
    clocked: tuple[Service, FakeClock],
) -> None:
    service, clock = clocked
    created = await create_schedule(service)
    assert created["next_fire_at"] == "2031-03-10T13:00:00Z"
    clock.now = datetime(2031, 3, 10, 13, 0, 5, tzinfo=UTC)
    assert await fire(service) == 1
    assert await fire(service) == 0
    runs = await runs_of(service, created["id"])
    assert runs == [{"id": runs[0]["id"], "key": f"schedule:{created['id']}:2031-03-10T13:00:00Z"}]
    schedule = await get_schedule(service, created["id"])
    assert schedule["fired"] == 1
    assert schedule["next_fire_at"] == "2031-03-10T14:00:00Z"
    assert [r["run_id"] for r in schedule["recent_runs"]] == [runs[0]["id"]]
    run = await service.app[SERVICE].load(runs[0]["id"])
    assert run.group == "/acme/nightly"
    assert run.submitted_by == f"schedule:{created['id']}"


@pytest.mark.parametrize(
    ("catchup", "fired", "skipped"), [("none", 0, 5), ("latest", 1, 4), ("all", 3, 2)]
)
async def test_after_downtime_the_catchup_policy_decides(
    clocked: tuple[Service, FakeClock], catchup: str, fired: int, skipped: int
) -> None:
    service, clock = clocked
    created = await create_schedule(service, catchup=catchup, catchup_limit=3, overlap="allow")
    # Five hourly fire times passed while nothing looked (13:00 to 17:00), all late.
    clock.now = datetime(2031, 3, 10, 17, 30, tzinfo=UTC)
    await fire(service)
    await fire(service)
    runs = await runs_of(service, created["id"])
    assert len(runs) == fired
    schedule = await get_schedule(service, created["id"])
    assert (schedule["fired"], schedule["skipped"]) == (fired, skipped)
    keys = sorted(r["key"][-9:-7] for r in runs)  # the hours of the fire times
    assert keys == ["13", "14", "15", "16", "17"][5 - fired :]


async def test_overlap_skip_lets_a_firing_go_while_the_last_run_is_on(
    clocked: tuple[Service, FakeClock],
) -> None:
    service, clock = clocked
    created = await create_schedule(service, overlap="skip")
    clock.now = datetime(2031, 3, 10, 13, 0, 1, tzinfo=UTC)
    await fire(service)
    clock.now = datetime(2031, 3, 10, 14, 0, 1, tzinfo=UTC)
    await fire(service)
    schedule = await get_schedule(service, created["id"])
    assert (schedule["fired"], schedule["skipped"]) == (1, 1)
    history = await service.client.get(
        f"/api/v1/schedules/{created['id']}/events", headers=service.auth("reader")
    )
    types = [e["type"] for e in (await history.json())["events"]]
    assert types == ["schedule_created", "schedule_fired", "schedule_skipped"]
    skipped = (await history.json())["events"][-1]["data"]
    assert skipped["reason"] == "overlap"
    paged = await service.client.get(
        f"/api/v1/schedules/{created['id']}/events?after_version=1&limit=1",
        headers=service.auth("reader"),
    )
    page = await paged.json()
    assert [e["type"] for e in page["events"]] == ["schedule_fired"]
    assert page["next_after_version"] == 2


async def test_paused_schedules_do_not_fire_and_resume_from_then(
    clocked: tuple[Service, FakeClock],
) -> None:
    service, clock = clocked
    created = await create_schedule(service, paused=True)
    assert created["next_fire_at"] is None
    clock.now = datetime(2031, 3, 10, 15, 0, 1, tzinfo=UTC)
    assert await fire(service) == 0
    one = f"/api/v1/schedules/{created['id']}"
    response = await service.client.patch(
        one, json={"paused": False}, headers=service.auth("submitter")
    )
    resumed = await response.json()
    # What fell in the pause is not made up: the next firing is the next hour.
    assert resumed["next_fire_at"] == "2031-03-10T16:00:00Z"
    response = await service.client.patch(
        one, json={"cron": "*/15 * * * *"}, headers=service.auth("submitter")
    )
    assert (await response.json())["next_fire_at"] == "2031-03-10T15:15:00Z"
    assert (await service.client.delete(one, headers=service.auth("submitter"))).status == 204
    assert (await service.client.get(one, headers=service.auth("reader"))).status == 404
    assert (await service.client.delete(one, headers=service.auth("submitter"))).status == 404
    clock.now = datetime(2031, 3, 10, 18, 0, 1, tzinfo=UTC)
    assert await fire(service) == 0


async def test_trigger_makes_a_run_now_and_leaves_the_clock_alone(
    clocked: tuple[Service, FakeClock],
) -> None:
    service, _ = clocked
    created = await create_schedule(service, paused=True)
    response = await service.client.post(
        f"/api/v1/schedules/{created['id']}/trigger", headers=service.auth("submitter")
    )
    assert response.status == 201, await response.text()
    run = await response.json()
    assert run["group"] == "/acme/nightly"
    schedule = await get_schedule(service, created["id"])
    assert schedule["recent_runs"][0]["manual"] is True
    assert schedule["recent_runs"][0]["run_id"] == run["id"]
    assert schedule["paused"] is True
    missing = await service.client.post(
        "/api/v1/schedules/NOPE/trigger", headers=service.auth("submitter")
    )
    assert missing.status == 404


async def test_two_services_on_one_database_fire_each_time_once(
    clocked: tuple[Service, FakeClock],
) -> None:
    service, clock = clocked
    created = await create_schedule(service, overlap="allow", catchup="all", catchup_limit=50)
    other_services = start_service(service.app[SETTINGS])
    other = await anext(other_services)
    try:
        other.app[SCHEDULES].clock = clock
        await caught_up(other)
        for hour in range(13, 19):
            clock.now = datetime(2031, 3, 10, hour, 0, 1, tzinfo=UTC)
            await _together(service.app[SCHEDULES], other.app[SCHEDULES], caught=service)
        runs = await runs_of(service, created["id"])
        assert sorted(r["key"][-9:-7] for r in runs) == ["13", "14", "15", "16", "17", "18"]
    finally:
        await other_services.aclose()


async def _together(*services: ScheduleService, caught: Service) -> None:
    await caught_up(caught)
    await asyncio.gather(*(s.fire_due() for s in services))
    # A process that found the other holding the schedule's lock looks again.
    await asyncio.gather(*(s.fire_due() for s in services))


async def test_a_schedule_is_audited_like_a_run(clocked: tuple[Service, FakeClock]) -> None:
    """Its chain and its fold verify; a firing removed by SQL is found."""
    service, clock = clocked
    created = await create_schedule(service, overlap="allow")
    for hour in (13, 14):
        clock.now = datetime(2031, 3, 10, hour, 0, 1, tzinfo=UTC)
        await fire(service)
    await caught_up(service)
    verify = f"/api/v1/schedules/{created['id']}/verify"
    response = await service.client.get(verify, headers=service.auth("reader"))
    assert await response.json() == {"ok": True, "events": 3, "problems": []}
    await service.app[SERVICE].pool.execute(
        "DELETE FROM events WHERE stream = $1 AND version = 2", f"schedule-{created['id']}"
    )
    response = await service.client.get(verify, headers=service.auth("reader"))
    report = await response.json()
    assert report["ok"] is False
    assert any("events were removed" in p or "version" in p for p in report["problems"])
