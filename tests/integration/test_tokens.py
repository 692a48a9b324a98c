"""Tokens through the API: create, list, revoke (at once, in every process), expiry."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runsvc.domain.events import TaskStatusChanged, stream_of
from runsvc.http.keys import REVOCATIONS, SERVICE, STORE
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.settings import Settings
from runsvc.service.auth import create_token
from tests.fixtures.service import Service, service_settings, start_service
from tests.integration.test_runs_api import caught_up, create


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def status_with(service: Service, token: str) -> int:
    response = await service.client.get("/api/v1/runs", headers=bearer(token))
    await response.read()
    return response.status


async def refused_within(service: Service, token: str, seconds: float) -> bool:
    """Whether requests with `token` turn to 401 within `seconds` (checked every 20 ms)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await status_with(service, token) == 401:
            return True
        await asyncio.sleep(0.02)
    return False


@pytest.fixture
def long_cache(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> Settings:
    """Settings whose verified tokens stay cached for an hour: whatever refuses a token
    within the test's time is not the cache going stale."""
    return service_settings(database_dsn, tmp_path, object_store_config, token_cache_s=3600)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    services = start_service(settings)
    try:
        yield await anext(services)
    finally:
        await services.aclose()


async def test_admin_creates_lists_and_revokes_tokens(service: Service) -> None:
    """A created token works at once and is shown this once; the list shows it without
    its secret; a revoke is 204 (again too), refuses the token at once, and shows when;
    an unknown id is 404."""
    created = await service.client.post(
        "/api/v1/tokens",
        json={"role": "reader", "name": "dashboard"},
        headers=service.auth("admin"),
    )
    assert created.status == 201
    assert created.headers["Cache-Control"] == "no-store"
    issued = await created.json()
    token = issued["token"]
    assert (issued["name"], issued["role"], issued["expires_at"]) == ("dashboard", "reader", None)
    assert token.startswith(f"rsv_{issued['id']}_")
    assert await status_with(service, token) == 200

    listed = await service.client.get("/api/v1/tokens", headers=service.auth("admin"))
    assert listed.status == 200
    text = await listed.text()
    secret = token.split("_", 2)[2]
    assert secret not in text
    assert "secret" not in text
    mine = next(t for t in (await listed.json())["tokens"] if t["id"] == issued["id"])
    assert (mine["name"], mine["role"], mine["revoked_at"]) == ("dashboard", "reader", None)

    revoked = await service.client.delete(
        f"/api/v1/tokens/{issued['id']}", headers=service.auth("admin")
    )
    assert revoked.status == 204
    assert await status_with(service, token) == 401
    again = await service.client.delete(
        f"/api/v1/tokens/{issued['id']}", headers=service.auth("admin")
    )
    assert again.status == 204
    unknown = await service.client.delete("/api/v1/tokens/nope", headers=service.auth("admin"))
    assert unknown.status == 404
    assert (await unknown.json())["code"] == "not_found"
    listed = await service.client.get("/api/v1/tokens", headers=service.auth("admin"))
    mine = next(t for t in (await listed.json())["tokens"] if t["id"] == issued["id"])
    assert mine["revoked_at"] is not None


async def test_token_requests_are_checked_and_admin_only(service: Service) -> None:
    """Bad requests are 400 naming each problem and create nothing; only admins manage
    tokens."""
    before = await service.app[SERVICE].pool.fetchval("SELECT count(*) FROM tokens")
    bad = await service.client.post(
        "/api/v1/tokens",
        json={"role": "root", "labels": {"pool": "linux"}, "expires_in": "soon"},
        headers=service.auth("admin"),
    )
    assert bad.status == 400
    error = await bad.json()
    assert error["code"] == "bad_request"
    assert {d["path"] for d in error["details"]} == {"role", "labels", "expires_in"}
    for role in ("submitter", "reader", "executor"):
        for method, path in (("POST", "/api/v1/tokens"), ("GET", "/api/v1/tokens")):
            answer = await service.client.request(
                method, path, json={"role": "admin"}, headers=service.auth(role)
            )
            assert answer.status == 403, (role, method)
    after = await service.app[SERVICE].pool.fetchval("SELECT count(*) FROM tokens")
    assert after == before


async def test_a_revocation_reaches_every_process_at_once(long_cache: Settings) -> None:
    """Two service processes on one database, each caching verified tokens for an hour:
    a token revoked through one is refused by the other as soon as the revocation's
    announcement arrives, not when its cache entry would have gone stale."""
    async with running(long_cache) as first, running(long_cache) as second:
        issued = await create_token(first.app[SERVICE].pool, role="reader", name="shared")
        assert await status_with(first, issued.token) == 200
        assert await status_with(second, issued.token) == 200  # now cached in both
        revoked = await first.client.delete(
            f"/api/v1/tokens/{issued.id}", headers=first.auth("admin")
        )
        assert revoked.status == 204
        assert await status_with(first, issued.token) == 401
        assert await refused_within(second, issued.token, 10.0)


async def test_revocations_missed_while_not_listening_are_not_trusted(
    long_cache: Settings,
) -> None:
    """While the listening connection is down (PostgreSQL restarted, a network cut) a
    revocation's announcement reaches nobody. On reconnecting, the process forgets every
    token it cached, so one revoked meanwhile is checked against the table and refused
    instead of being trusted for the rest of its hour in the cache."""
    async with running(long_cache) as service:
        pool = service.app[SERVICE].pool
        issued = await create_token(pool, role="reader", name="missed")
        assert await status_with(service, issued.token) == 200  # cached for an hour
        # A revocation whose announcement is lost: committed without a NOTIFY.
        await pool.execute("UPDATE tokens SET revoked_at = now() WHERE id = $1", issued.id)
        assert await status_with(service, issued.token) == 200  # the cache trusts it
        listener = service.app[REVOCATIONS]
        reconnects = listener.reconnects
        assert await pool.fetchval("SELECT pg_terminate_backend($1)", listener.server_pid)
        assert await refused_within(service, issued.token, 10.0)
        assert listener.reconnects > reconnects


async def test_an_expired_token_is_refused_even_from_the_cache(long_cache: Settings) -> None:
    """A token past its expiry is refused, also when it was verified (and cached for an
    hour) before it expired; the list shows when it expires and when it was last used."""
    async with running(long_cache) as service:
        pool = service.app[SERVICE].pool
        expired = await create_token(
            pool, role="reader", expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
        assert await status_with(service, expired.token) == 401
        soon = await create_token(
            pool, role="reader", expires_at=datetime.now(UTC) + timedelta(seconds=1)
        )
        assert await status_with(service, soon.token) == 200
        assert await refused_within(service, soon.token, 10.0)

        created = await service.client.post(
            "/api/v1/tokens",
            json={"role": "reader", "expires_in": "30d"},
            headers=service.auth("admin"),
        )
        issued = await created.json()
        expires_at = datetime.fromisoformat(issued["expires_at"])
        assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)
        assert await status_with(service, issued["token"]) == 200
        for _ in range(250):  # the use is recorded in the background
            listed = await service.client.get("/api/v1/tokens", headers=service.auth("admin"))
            mine = next(t for t in (await listed.json())["tokens"] if t["id"] == issued["id"])
            if mine["last_used_at"] is not None:
                break
            await asyncio.sleep(0.02)
        assert mine["last_used_at"] is not None
        assert mine["expires_at"] is not None


async def test_an_executor_token_decides_its_labels_and_is_the_recorded_actor(
    service: Service,
) -> None:
    """A token bound to `pool=gpu` claims only tasks that label satisfies, whatever labels
    its executor announces; the start and the completion are recorded as caused by the
    token's name, and the announced name is kept only as the task's executor (a host
    hint). An unbound executor token still claims by what it announces."""
    created = await service.client.post(
        "/api/v1/tokens",
        json={"role": "executor", "name": "gpu-farm", "labels": {"pool": "gpu"}},
        headers=service.auth("admin"),
    )
    bound = (await created.json())["token"]
    tasks = [
        {"name": "cpu", "run": "true", "runs_on": {"pool": "cpu"}},
        {"name": "gpu", "run": "true", "runs_on": {"pool": "gpu"}},
    ]
    run = await create(service, config={"tasks": tasks})
    await caught_up(service)

    async def claim(token: str) -> dict[str, Any] | None:
        answer = await service.client.post(
            "/api/v1/executor/claim",
            json={"executor": "claims-to-be-cpu", "labels": {"pool": "cpu"}, "wait": "0s"},
            headers=bearer(token),
        )
        assert answer.status in (200, 204), await answer.text()
        return None if answer.status == 204 else dict(await answer.json())

    first = await claim(bound)
    assert first is not None
    assert first["task"]["task"] == "gpu"
    assert await claim(bound) is None  # cpu is not for this token
    completed = await service.client.post(
        f"/api/v1/executor/leases/{first['lease']}/complete",
        json={"status": "success", "exit_code": 0},
        headers=bearer(bound),
    )
    assert completed.status == 204, await completed.text()
    other = await claim(service.tokens["executor"])
    assert other is not None
    assert other["task"]["task"] == "cpu"

    events = await service.app[STORE].read_stream(stream_of(run["id"]))
    gpu_changes = [
        e for e in events if isinstance(e.event, TaskStatusChanged) and e.event.task == "gpu"
    ]
    started = next(e for e in gpu_changes if e.event.status == "running")
    ended = next(e for e in gpu_changes if e.event.status == "success")
    assert (started.meta.actor.kind, started.meta.actor.id) == ("executor", "gpu-farm")
    assert ended.meta.actor.id == "gpu-farm"
    assert started.event.executor == "claims-to-be-cpu"
