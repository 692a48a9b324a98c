"""The service while its database is down: clear 503s that say when to try again, nothing
half-done, and service again as soon as the database is back."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runsvc.http.keys import OBJECTS, SERVICE, STORE
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.postgres import TEST_SETTINGS, EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.service.task_logs import append_chunk, archive
from tests.fixtures.postgres import server_directory
from tests.fixtures.service import Service, service_settings, start_service
from tests.integration.test_runs_api import caught_up

RUN = {"group": "/acme", "name": "ci", "config": {"tasks": [{"name": "t", "run": "true"}]}}


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL server of this test's own, which it may stop and start."""
    directory = server_directory()
    server = EmbeddedPostgres(directory, settings=TEST_SETTINGS)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


async def create(service: Service) -> tuple[int, dict[str, object], dict[str, str]]:
    response = await service.client.post("/api/v1/runs", json=RUN, headers=service.auth())
    return response.status, await response.json(), dict(response.headers)


async def test_database_down_is_503_with_retry_after_then_recovers(
    own_postgres: EmbeddedPostgres, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """With PostgreSQL stopped, a create and a listing answer 503 `unavailable` with
    Retry-After (not 500 `internal`), and no run appears; once it is back, a create
    succeeds without restarting the service."""
    settings = service_settings(own_postgres.dsn, tmp_path, object_store_config)
    async for service in start_service(settings):
        status, _, _ = await create(service)
        assert status == 201

        await asyncio.to_thread(own_postgres.stop)
        status, body, headers = await create(service)
        assert status == 503
        assert body["code"] == "unavailable"
        assert int(headers["Retry-After"]) > 0
        listing = await service.client.get("/api/v1/runs", headers=service.auth())
        assert listing.status == 503
        assert (await listing.json())["code"] == "unavailable"

        await asyncio.to_thread(own_postgres.start)
        # Clients retry after a 503 as Retry-After says; here quicker, for at most 30 s.
        for _ in range(150):
            outcome = await create(service)
            if outcome[0] != 503:
                break
            await asyncio.sleep(0.2)
        assert outcome[0] == 201
        await caught_up(service)
        runs = await service.client.get("/api/v1/runs", headers=service.auth())
        assert runs.status == 200
        # The run refused during the outage was never created: two runs, numbered 1 and 2.
        counters = sorted(r["counter"] for r in (await runs.json())["runs"])
        assert counters == [1, 2]


async def test_a_run_too_large_to_record_is_413(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """A request within the body limit whose run would be one event over the event size
    limit is a 413 `too_large` that says so, not a 500, and records nothing."""
    settings = service_settings(database_dsn, tmp_path, object_store_config, max_event_bytes=4096)
    big = {**RUN, "config": {"tasks": [{"name": "t", "run": "x" * 8000}]}}
    async for service in start_service(settings):
        response = await service.client.post("/api/v1/runs", json=big, headers=service.auth())
        assert response.status == 413
        body = await response.json()
        assert body["code"] == "too_large"
        assert "4096" in body["message"]
        assert await service.app[STORE].head() == 0


async def test_object_storage_down_is_503_for_archived_logs_then_recovers(
    service: Service, seaweed: EmbeddedSeaweed
) -> None:
    """With object storage stopped, an archived log is a 503 `unavailable` (it was a 200
    with an empty body) and the artifact list too; once storage is back, the whole log is
    served again."""
    pool = service.app[SERVICE].pool
    now = datetime.now(UTC)
    await pool.execute(
        """
        INSERT INTO leases (lease_id, run_id, task, task_id, attempt, executor, state,
                            expires_at, last_output_at)
        VALUES ('l1', 'r1', 'build', 'archived-task', 1, 'e', 'completed', $1, $1)
        """,
        now,
    )
    async with pool.acquire() as connection:
        await append_chunk(connection, "archived-task", 1, 0, b"built\n")
    await archive(pool, service.app[OBJECTS], "archived-task", 1)
    path = "/api/v1/tasks/archived-task/logs"

    served = await service.client.get(path, headers=service.auth("reader"))
    assert (served.status, await served.read()) == (200, b"built\n")

    await asyncio.to_thread(seaweed.stop)
    try:
        down = await service.client.get(path, headers=service.auth("reader"))
        assert down.status == 503
        assert (await down.json())["code"] == "unavailable"
        artifacts = await service.client.get(
            "/api/v1/tasks/archived-task/artifacts", headers=service.auth("reader")
        )
        assert artifacts.status == 503
    finally:
        await asyncio.to_thread(seaweed.start)

    back = await service.client.get(path, headers=service.auth("reader"))
    assert (back.status, await back.read()) == (200, b"built\n")
