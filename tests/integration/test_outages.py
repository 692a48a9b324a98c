"""The service while its database is down: clear 503s that say when to try again, nothing
half-done, and service again as soon as the database is back."""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from eventlog.postgres import create_pool, migrate
from runsvc.domain.errors import Unauthorized
from runsvc.http.keys import OBJECTS, SERVICE, STORE
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.postgres import TEST_SETTINGS, EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.infra.settings import load_settings
from runsvc.service.auth import TokenVerifier, create_token
from runsvc.service.schema import MIGRATION_SETS
from runsvc.service.task_logs import append_chunk, archive
from tests.fixtures.postgres import server_directory, server_processes
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
        assert await _until(functools.partial(_creating_again, service), within=30)
        await caught_up(service)
        runs = await service.client.get("/api/v1/runs", headers=service.auth())
        assert runs.status == 200
        # The run refused during the outage was never created: two runs, numbered 1 and 2.
        counters = sorted(r["counter"] for r in (await runs.json())["runs"])
        assert counters == [1, 2]


async def test_a_hung_database_is_503_not_a_hung_request(
    own_postgres: EmbeddedPostgres, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """With PostgreSQL frozen (SIGSTOP: connections are accepted, nothing answers), a
    create and a listing end in 503 `unavailable` after the request timeout instead of
    hanging; liveness still answers and readiness says the database is not; a run read
    just before is served from what the process holds; once the server thaws, work goes
    on without a restart."""
    settings = service_settings(
        own_postgres.dsn, tmp_path, object_store_config, request_timeout_s=1.0
    )
    async for service in start_service(settings):
        status, created, _ = await create(service)
        assert status == 201
        await caught_up(service)
        path = f"/api/v1/runs/{created['id']}"
        assert (await service.client.get(path, headers=service.auth())).status == 200

        frozen = server_processes(own_postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            # The client's own timeout only catches a hang; the service must answer first.
            async with asyncio.timeout(20):
                status, body, headers = await create(service)
                assert (status, body["code"]) == (503, "unavailable")
                assert int(headers["Retry-After"]) > 0
                listing = await service.client.get("/api/v1/runs", headers=service.auth())
                assert listing.status == 503
                assert (await service.client.get("/healthz")).status == 200
                ready = await service.client.get("/readyz")
                assert ready.status == 503
                checks = {c["name"]: c["ok"] for c in (await ready.json())["checks"]}
                assert checks["database"] is False
                cached = await service.client.get(path, headers=service.auth())
                assert cached.status == 200
                assert (await cached.json())["id"] == created["id"]
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)

        assert await _until(functools.partial(_creating_again, service), within=30)


async def test_tokens_seen_before_still_verify_while_the_database_hangs(
    own_postgres: EmbeddedPostgres,
) -> None:
    """Past its short cache, a token verified before is accepted again when the database
    does not answer within a second (the process serves what it has in memory); once the
    database answers, tokens are checked against it again."""
    pool = await create_pool(own_postgres.dsn, max_size=4)
    try:
        async with pool.acquire() as connection:
            await migrate(connection, MIGRATION_SETS)
        issued = await create_token(pool, role="reader", name="dashboard")
        verifier = TokenVerifier(pool, cache_seconds=0.0, outage_wait_s=0.5)
        assert (await verifier.verify(issued.token)).role == "reader"
        frozen = server_processes(own_postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            async with asyncio.timeout(20):  # catches a hang only
                assert (await verifier.verify(issued.token)).role == "reader"
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        await pool.execute("UPDATE tokens SET revoked_at = now()")
        with pytest.raises(Unauthorized):
            await verifier.verify(issued.token)
    finally:
        await pool.close()


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


async def _until(check: Callable[[], Awaitable[bool]], within: float = 60.0) -> bool:
    """Whether `check` came true within `within` seconds, asked every 0.2 s."""
    async with asyncio.timeout(within):
        for _ in range(int(within / 0.2)):
            if await check():
                return True
            await asyncio.sleep(0.2)
    return False


async def _serving_objects_again(service: Service, pid_file: Path, killed: int) -> bool:
    ready = await service.client.get("/readyz")
    checks = {c["name"]: c["ok"] for c in (await ready.json())["checks"]}
    try:
        recorded = await asyncio.to_thread(pid_file.read_text)
    except FileNotFoundError:  # the killed server's record is gone, the new one's not yet
        return False
    return bool(checks["object_store"]) and int(recorded.split()[0]) != killed


async def _creating_again(service: Service) -> bool:
    return (await create(service))[0] == 201


async def test_a_killed_embedded_object_store_is_started_again(
    database_dsn: str, tmp_path: Path
) -> None:
    """The embedded SeaweedFS SIGKILLed under a running service is started again by the
    service, on the same address and data: an object written before is read after."""
    settings = load_settings(
        {},
        database_url=database_dsn,
        data_dir=tmp_path / "data",
        bootstrap_admin_token=False,
        log_format="json",
    )
    async for service in start_service(settings):
        objects = service.app[OBJECTS]
        await objects.put("before-the-crash", b"kept")
        pid_file = settings.data_dir / "s3" / "weed.pid"
        first = int(pid_file.read_text().split()[0])
        os.kill(first, signal.SIGKILL)
        assert await _until(functools.partial(_serving_objects_again, service, pid_file, first))
        assert await objects.get("before-the-crash") == b"kept"


async def test_a_killed_embedded_database_is_started_again(
    tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """The embedded PostgreSQL's postmaster SIGKILLed under a running service: the service
    starts it again (PostgreSQL recovers from its WAL) and creates succeed again, with the
    run created before the crash still there."""
    directory = server_directory()
    settings = load_settings(
        {},
        data_dir=directory,
        bootstrap_admin_token=False,
        log_format="json",
        s3_endpoint=object_store_config.endpoint,
        s3_bucket=object_store_config.bucket,
        s3_access_key=object_store_config.access_key,
        s3_secret_key=object_store_config.secret_key,
    )
    try:
        async for service in start_service(settings):
            status, before, _ = await create(service)
            assert status == 201
            server = EmbeddedPostgres(directory)
            os.kill(server_processes(server)[0], signal.SIGKILL)
            assert await _until(functools.partial(_creating_again, service))
            await caught_up(service)
            again = await service.client.get(f"/api/v1/runs/{before['id']}", headers=service.auth())
            assert again.status == 200
    finally:
        shutil.rmtree(directory, ignore_errors=True)
