"""Webhooks against a real service and PostgreSQL, with a receiver on 127.0.0.1: signed,
ordered, at-least-once delivery; retries, failing and resume; a hung receiver holding up
nobody else; the lease fencing the checkpoint; roles; the secret never shown; refusals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.settings import Settings
from runsvc.service import webhooks
from runsvc.wire.webhooks import CreateWebhookRequest
from tests.fixtures.service import Service, service_settings, start_service
from tests.integration.test_runs_api import run_tasks
from tests.webhook_receiver import Receiver

SECRET = "whsec-4f2c9a7e1b6d3058-not-for-logs"
ONE_TASK = {"tasks": [{"name": "a", "run": "true"}]}


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[Service]:
    services = start_service(settings)
    try:
        yield await anext(services)
    finally:
        await services.aclose()


@contextlib.asynccontextmanager
async def receiver(answer: Callable[[int], int | None] | None = None) -> AsyncIterator[Receiver]:
    found = Receiver(SECRET)
    if answer is not None:
        found.answer = answer
    await found.start()
    try:
        yield found
    finally:
        await found.stop()


def settings_with(
    database_dsn: str, tmp_path: Path, objects: ObjectStoreConfig, **overrides: object
) -> Settings:
    return service_settings(database_dsn, tmp_path, objects, **overrides)


async def create_webhook(
    service: Service, url: str, types: list[str], role: str = "submitter", **fields: Any
) -> dict[str, Any]:
    response = await service.client.post(
        "/api/v1/webhooks",
        json={"url": url, "secret": SECRET, "types": types, **fields},
        headers=service.auth(role),
    )
    assert response.status == 201, await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def finished_run(service: Service, group: str = "/acme/shop") -> str:
    """A run that ends (succeeds): created, its one task started and finished."""
    response = await service.client.post(
        "/api/v1/runs",
        json={"group": group, "name": "ci", "config": ONE_TASK},
        headers=service.auth("submitter"),
    )
    assert response.status == 201, await response.text()
    run_id: str = (await response.json())["id"]
    await run_tasks(service, run_id, "a")
    return run_id


async def events_after(service: Service, after: int) -> list[dict[str, Any]]:
    response = await service.client.get(
        f"/api/v1/events?after={after}&limit=1000", headers=service.auth("reader")
    )
    page: dict[str, Any] = await response.json()
    return list(page["events"])


async def webhook(service: Service, webhook_id: str, role: str = "reader") -> dict[str, Any]:
    response = await service.client.get(
        f"/api/v1/webhooks/{webhook_id}", headers=service.auth(role)
    )
    assert response.status == 200, await response.text()
    found: dict[str, Any] = await response.json()
    return found


async def deliveries(service: Service, webhook_id: str) -> list[dict[str, Any]]:
    response = await service.client.get(
        f"/api/v1/webhooks/{webhook_id}/deliveries?limit=500", headers=service.auth("reader")
    )
    assert response.status == 200, await response.text()
    return list((await response.json())["deliveries"])


async def until(condition: Callable[[], Any]) -> None:
    """Wait for a condition only the API shows (a webhook's state), looking every 50 ms
    (the state is in the database; nothing announces it to a test)."""
    async with asyncio.timeout(60):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def checkpointed(service: Service, webhook_id: str, position: int) -> dict[str, Any]:
    """The webhook once its checkpoint reached `position`: the receiver has its 2xx
    answer a moment before the checkpoint commits."""
    found: dict[str, Any] = {}

    async def reached() -> bool:
        found.update(await webhook(service, webhook_id))
        return bool(found["position"] >= position)

    await until(reached)
    return found


def strictly_ascending(positions: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(positions))


async def test_events_arrive_signed_in_order_each_once(service: Service) -> None:
    """A `run_finished` webhook on a group gets one signed POST per run of that group that
    ended, in position order; an `all` webhook gets every event after its creation once,
    each body the same JSON the event log shows; the checkpoint ends at the last one."""
    async with receiver() as finished, receiver() as everything:
        hook = await create_webhook(service, finished.url, ["run_finished"], group="/acme")
        other = await create_webhook(service, everything.url, ["all"])
        assert hook["position"] == other["position"]  # the head at creation
        runs = [await finished_run(service) for _ in range(5)]
        await finished_run(service, group="/elsewhere")
        log = await events_after(service, hook["position"])
        await everything.wait_for(lambda r: len(r.accepted) == len(log))
        await finished.wait_for(lambda r: len(r.accepted) == len(runs))
        for got, want in ((finished, runs), (everything, None)):
            assert all(a.signed for a in got.arrivals)
            positions = [a.position for a in got.accepted]
            assert strictly_ascending(positions)
            assert all(a.body["position"] == a.position for a in got.arrivals)
            assert all(a.body["type"] == a.event_type for a in got.arrivals)
            if want is not None:
                assert [a.body["stream"] for a in got.accepted] == [f"run-{r}" for r in want]
                assert {a.body["data"]["phase"] for a in got.accepted} == {"finished"}
        # Exactly the log after the webhook's start, byte for byte as the log shows it.
        assert [a.body for a in everything.accepted] == log
        assert len(everything.arrivals) == len(log)
        shown = await checkpointed(service, other["id"], log[-1]["position"])
        assert shown["position"] == log[-1]["position"]
        assert shown["state"] == "active"
        assert shown["lag"] == {"events": 0, "seconds": 0.0}
        assert shown["created_by"] == "submitter-token"
        assert shown["lease"]["owner"]
        await checkpointed(service, hook["id"], finished.accepted[-1].position)
        tried = await deliveries(service, hook["id"])
        assert [d["outcome"] for d in tried] == ["delivered"] * 5
        assert [d["position"] for d in reversed(tried)] == [a.position for a in finished.accepted]
        assert all(d["status_code"] == 200 and d["attempt"] == 1 for d in tried)


async def test_a_failing_receiver_loses_nothing_and_keeps_the_order(service: Service) -> None:
    """The receiver answers 500, then a redirect (not followed), then 200: the first event
    is retried until accepted, nothing is lost or reordered, and the deliveries list shows
    the failed attempts with their status code."""
    async with receiver(lambda n: {0: 500, 1: 302}.get(n, 200)) as got:
        hook = await create_webhook(service, got.url, ["run_finished"])
        runs = [await finished_run(service) for _ in range(3)]
        await got.wait_for(lambda r: len(r.accepted) == len(runs))
        assert [a.status for a in got.arrivals] == [500, 302, 200, 200, 200]
        assert [a.position for a in got.arrivals[:3]] == [got.accepted[0].position] * 3
        assert strictly_ascending([a.position for a in got.accepted])
        assert [a.body["stream"] for a in got.accepted] == [f"run-{r}" for r in runs]
        tried = list(reversed(await deliveries(service, hook["id"])))
        assert [(d["outcome"], d["status_code"], d["attempt"]) for d in tried[:3]] == [
            ("rejected", 500, 1),
            ("rejected", 302, 2),
            ("delivered", 200, 3),
        ]
        assert tried[0]["error"]
        assert tried[0]["latency_ms"] >= 0
        shown = await webhook(service, hook["id"])
        assert shown["attempts"] == 0
        assert shown["failing_since"] is None
        assert "302" in shown["last_error"]


async def test_a_hung_receiver_holds_up_no_other_webhook(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """With a receiver that accepts the connection and never answers (and a timeout of ten
    minutes, so no timeout can end its request during the test), another webhook still
    gets every event: the hung one has seen just its first request, nothing of it is
    recorded yet, and the API answers meanwhile."""
    settings = settings_with(database_dsn, tmp_path, object_store_config, webhook_timeout_s=600.0)
    async with (
        running(settings) as service,
        receiver(lambda _n: None) as hung,
        receiver() as fine,
    ):
        stuck = await create_webhook(service, hung.url, ["all"])
        other = await create_webhook(service, fine.url, ["all"])
        for _ in range(3):
            await finished_run(service)
        log = await events_after(service, other["position"])
        await fine.wait_for(lambda r: len(r.accepted) == len(log))
        assert [a.body for a in fine.accepted] == log
        await hung.wait_for(lambda r: len(r.arrivals) == 1)
        assert hung.arrivals[0].position == log[0]["position"]
        shown = await webhook(service, stuck["id"])
        assert shown["position"] == stuck["position"]
        assert shown["state"] == "active"
        assert shown["lag"]["events"] == len(log)
        assert await deliveries(service, stuck["id"]) == []


async def test_exhausted_retries_mark_it_failing_and_resume_delivers_from_there(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """Past the retry window (half a second here) the webhook turns `failing` with the
    last error and stops; events keep coming; resume delivers from the event that failed,
    everything after it, in order."""
    settings = settings_with(database_dsn, tmp_path, object_store_config, webhook_retry_for_s=0.5)
    accepting = False
    async with (
        running(settings) as service,
        receiver(lambda _n: 200 if accepting else 503) as got,
    ):
        hook = await create_webhook(service, got.url, ["run_finished"])
        first = await finished_run(service)

        async def failing() -> bool:
            return (await webhook(service, hook["id"]))["state"] == "failing"

        await until(failing)
        shown = await webhook(service, hook["id"])
        assert "503" in shown["last_error"]
        assert shown["failing_since"] is not None
        # Past the events it skipped, short of the one it could not deliver.
        assert hook["position"] <= shown["position"] < got.arrivals[0].position
        assert shown["lease"] is None
        assert shown["attempts"] >= 2
        later = [await finished_run(service) for _ in range(2)]
        tried = await deliveries(service, hook["id"])
        assert {(d["outcome"], d["status_code"]) for d in tried} == {("rejected", 503)}
        failed_attempts = len(got.arrivals)
        assert failed_attempts == len(tried)
        accepting = True
        response = await service.client.post(
            f"/api/v1/webhooks/{hook['id']}/resume", headers=service.auth("submitter")
        )
        assert response.status == 200
        assert (await response.json())["state"] == "active"
        await got.wait_for(lambda r: len(r.accepted) == 3)
        streams = [a.body["stream"] for a in got.accepted]
        assert streams == [f"run-{r}" for r in [first, *later]]
        assert strictly_ascending([a.position for a in got.accepted])
        assert got.arrivals[failed_attempts].position == got.arrivals[0].position


async def test_a_stale_lease_cannot_move_the_checkpoint(database_dsn: str) -> None:
    """The checkpoint and the attempt records are fenced by the lease: once another owner
    has taken an expired lease, the old owner's record, skip and renewal change nothing,
    and a held lease cannot be taken."""
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=2)
    try:
        request = CreateWebhookRequest(url="http://127.0.0.1:9/h", secret=SECRET, types=["all"])
        row = await webhooks.create(
            pool, request, ["all"], created_by="t", position=5, now=datetime.now(UTC)
        )
        [taken] = await webhooks.take_leases(pool, "old", 0.2, running=())
        assert taken.id == row.id
        assert taken.secret == SECRET
        assert await webhooks.take_leases(pool, "new", 30, running=()) == []
        await pool.execute("UPDATE webhooks SET lease_expires_at = now() - interval '1 s'")
        [again] = await webhooks.take_leases(pool, "new", 30, running=())
        assert again.id == row.id
        attempt = webhooks.Attempt(
            position=7,
            event_type="run_created",
            attempt=1,
            at=datetime.now(UTC),
            outcome="delivered",
            latency_ms=1.0,
            status_code=200,
        )
        assert await webhooks.record(pool, row.id, "old", attempt) == (False, None)
        assert not await webhooks.skip_to(pool, row.id, "old", 9)
        assert not await webhooks.renew_lease(pool, row.id, "old", 30)
        assert not await webhooks.mark_failing(pool, row.id, "old")
        stored = await webhooks.get(pool, row.id)
        assert stored is not None
        assert stored.position == 5
        assert stored.state == "active"
        assert await webhooks.deliveries(pool, row.id, 10) == []
        assert (await webhooks.record(pool, row.id, "new", attempt))[0]
        stored = await webhooks.get(pool, row.id)
        assert stored is not None
        assert stored.position == 7
        assert stored.lease is not None
        assert stored.lease.owner == "new"
    finally:
        await pool.close()


async def test_roles_and_the_secret_is_never_shown(service: Service) -> None:
    """Readers list, show and read deliveries but may not create, delete or resume;
    executors may not even read. No answer, and no event in the log, holds the secret."""
    async with receiver() as got:
        answers: list[bytes] = []
        created = await service.client.post(
            "/api/v1/webhooks",
            json={"url": got.url, "secret": SECRET, "types": ["run_finished"]},
            headers=service.auth("admin"),
        )
        assert created.status == 201
        answers.append(await created.read())
        hook_id = (await created.json())["id"]
        await finished_run(service)
        await got.wait_for(lambda r: len(r.accepted) == 1)
        for path in ("", f"/{hook_id}", f"/{hook_id}/deliveries"):
            response = await service.client.get(
                f"/api/v1/webhooks{path}", headers=service.auth("reader")
            )
            assert response.status == 200
            answers.append(await response.read())
            refused = await service.client.get(
                f"/api/v1/webhooks{path}", headers=service.auth("executor")
            )
            assert refused.status == 403
            answers.append(await refused.read())
        for method, path in (
            ("POST", ""),
            ("DELETE", f"/{hook_id}"),
            ("POST", f"/{hook_id}/resume"),
        ):
            body = {"url": got.url, "secret": SECRET, "types": ["all"]} if path == "" else None
            response = await service.client.request(
                method, f"/api/v1/webhooks{path}", json=body, headers=service.auth("reader")
            )
            assert response.status == 403
            assert (await response.json())["code"] == "forbidden"
        resumed = await service.client.post(
            f"/api/v1/webhooks/{hook_id}/resume", headers=service.auth("submitter")
        )
        answers.append(await resumed.read())
        assert all(b'"secret"' not in a and SECRET.encode() not in a for a in answers)
        log = await service.client.get("/api/v1/events?limit=1000", headers=service.auth())
        assert SECRET.encode() not in await log.read()
        pool = service.app[_database_key()].pool
        assert not await pool.fetchval(
            "SELECT count(*) FROM events WHERE position($1::bytea in data) > 0"
            " OR position($1::bytea in meta) > 0",
            SECRET.encode(),
        )
        deleted = await service.client.delete(
            f"/api/v1/webhooks/{hook_id}", headers=service.auth("submitter")
        )
        assert deleted.status == 204
        gone = await service.client.get(
            f"/api/v1/webhooks/{hook_id}", headers=service.auth("reader")
        )
        assert gone.status == 404


def _database_key() -> Any:
    from runsvc.http.keys import DATABASE

    return DATABASE


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "http:///hook"}, "url"),
        ({"url": "http://user:pw@127.0.0.1:9/hook"}, "url"),
        ({"url": "http://no-such-host.invalid/hook"}, "url"),
        ({"url": "http://127.0.0.1:99999/hook"}, "url"),
        ({"types": ["run_finished", "run_exploded"]}, "types[1]"),
        ({"types": []}, "types"),
        ({"group": "acme"}, "group"),
        ({"secret": "short"}, "secret"),
        ({"after": 10**12}, "after"),
        ({"colour": "red"}, "body"),
        ({"types": "all"}, "types"),
    ],
)
async def test_bad_requests_are_400_with_a_path(
    service: Service, fields: dict[str, Any], path: str
) -> None:
    """Each bad field is refused with the error body and the field's path."""
    body = {"url": "http://127.0.0.1:9/hook", "secret": SECRET, "types": ["all"], **fields}
    response = await service.client.post("/api/v1/webhooks", json=body, headers=service.auth())
    assert response.status == 400, await response.text()
    error = await response.json()
    assert error["code"] == "bad_request"
    assert path in [d["path"] for d in error["details"]], error


async def test_urls_of_the_service_itself_are_refused(service: Service) -> None:
    """A webhook may not POST to the service's own address, however it is spelt; another
    port on 127.0.0.1 is fine."""
    port = service.client.port
    for host in ("127.0.0.1", "localhost", "[::1]", "0.0.0.0", "127.0.0.2", "[::]"):
        response = await service.client.post(
            "/api/v1/webhooks",
            json={"url": f"http://{host}:{port}/api/v1/runs", "secret": SECRET, "types": ["all"]},
            headers=service.auth(),
        )
        assert response.status == 400, host
        error = await response.json()
        assert error["details"][0]["path"] == "url"
        assert "this service" in error["details"][0]["message"]
    async with receiver() as got:
        await create_webhook(service, got.url, ["all"])


async def test_unknown_webhooks_are_404(service: Service) -> None:
    """Show, delete, resume and deliveries of an id that does not exist answer 404."""
    for method, path in (
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/resume"),
        ("GET", "/deliveries"),
    ):
        response = await service.client.request(
            method, f"/api/v1/webhooks/wh_nope{path}", headers=service.auth()
        )
        assert response.status == 404, (method, path)
        assert (await response.json())["code"] == "not_found"


def test_selection_of_the_shorthands() -> None:
    """`run_finished` selects phase changes to an end, `approval_waiting` task changes to
    waiting_approval; `all` and names select by type; the group by path prefix."""
    selection = webhooks.Selection("/a", ("run_finished",))
    assert selection.filter().types == frozenset({"run_phase_changed"})
    assert selection.filter().scope == "/a"
    assert webhooks.Selection("/", ("all",)).filter().is_empty()
    assert msgspec.structs.replace(selection, types=("approval_waiting",)).filter().types == (
        frozenset({"task_status_changed"})
    )
