"""The typed runs client and the event follower against the real service: every call
round-trips to the server's own types, each error row of docs/api.md arrives as its typed error
with the server's code and message, and a follower whose server goes away and comes back
resumes without loss or duplicates. (How errors are parsed and which calls are retried is
tested against a small double in test_client_errors.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path

import msgspec
import pytest
from aiohttp.test_utils import TestServer

from runsvc.app import create_app
from runsvc.client import (
    ApiClient,
    ApiError,
    BadRequestError,
    ConflictError,
    ExecutorClient,
    ForbiddenError,
    NotFoundError,
    RetryPolicy,
    RunsClient,
    TooLargeError,
    UnauthorizedError,
    follow_events,
)
from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.requests import CreateRunRequest, SimulationRequest
from runsvc.http.keys import HUB, PROJECTIONS
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.settings import Settings
from runsvc.wire.api import ErrorBody, EventOut
from runsvc.wire.executor import Completion
from tests.fixtures.service import Service, service_settings

FAST = RetryPolicy(attempts=3, first_backoff_s=0.01, max_backoff_s=0.05)
BODY_LIMIT = 64 * 1024
GATED = RunConfig(
    tasks=[
        TaskConfig(name="build", run="make", artifacts=["out/report.txt"]),
        TaskConfig(name="deploy", run="./deploy", depends=["build"], approval=True),
    ]
)
ONE_TASK = RunConfig(tasks=[TaskConfig(name="build", run="make")])


@pytest.fixture
async def service_config(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> Settings:
    """The service's settings with a small body limit, so that a 413 is cheap to provoke."""
    return service_settings(database_dsn, tmp_path, object_store_config, max_body_bytes=BODY_LIMIT)


def base_url(service: Service) -> str:
    return str(service.client.make_url(""))


@asynccontextmanager
async def open_client(service: Service, role: str = "admin") -> AsyncIterator[ApiClient]:
    async with ApiClient(base_url(service), service.tokens[role], retry=FAST) as api:
        yield api


@pytest.fixture
async def runs(service: Service) -> AsyncIterator[RunsClient]:
    """A runs client of the service with the admin token."""
    async with open_client(service) as api:
        yield RunsClient(api)


def create_request(group: str = "/acme/shop", **fields: object) -> CreateRunRequest:
    config = fields.pop("config", GATED)
    return msgspec.convert(
        {"group": group, "name": "ci", "config": msgspec.to_builtins(config), **fields},
        CreateRunRequest,
    )


async def caught_up(service: Service) -> None:
    for runner in service.app[PROJECTIONS]:
        await runner.catch_up()


async def test_create_get_list_and_iterate(runs: RunsClient, service: Service) -> None:
    """A create answers 201 and its repeat with the same idempotency key 200 with the same
    run; `list` filters by group prefix, phase and result and pages newest first;
    `iterate` follows the cursors and yields every matching run exactly once."""
    first, created = await runs.create(create_request(idempotency_key="k1"))
    again, created_again = await runs.create(create_request(idempotency_key="k1"))
    assert (created, created_again) == (True, False)
    assert again.id == first.id
    assert again.version == first.version  # the repeat appended nothing
    fetched = await runs.get(first.id)
    assert (fetched.id, fetched.group, fetched.idempotency_key) == (first.id, "/acme/shop", "k1")
    assert fetched.tasks["build"].status == "scheduled"

    below = [(await runs.create(create_request(f"/acme/shop/b{i}")))[0].id for i in range(4)]
    await runs.create(create_request("/acme/shopping"))  # a sibling, not below /acme/shop
    await runs.create(create_request("/other"))
    held, _ = await runs.create(create_request(concurrency_key="deploy"))
    queued, _ = await runs.create(create_request(concurrency_key="deploy"))
    assert (await runs.get(queued.id)).phase == "queued"
    await runs.cancel(queued.id)
    await caught_up(service)

    newest_first = [queued.id, held.id, *reversed(below), first.id]
    page = await runs.list(group="/acme/shop", limit=2)
    assert [entry.id for entry in page.runs] == newest_first[:2]
    assert page.next_cursor is not None
    second = await runs.list(group="/acme/shop", limit=2, cursor=page.next_cursor)
    assert [entry.id for entry in second.runs] == newest_first[2:4]
    listed = [entry.id async for entry in runs.iterate(group="/acme/shop", page_size=2)]
    assert listed == newest_first
    gone = await runs.get(queued.id)
    assert gone.phase == "cancelled"
    cancelled = await runs.list(group="/acme", phase="cancelled", result=gone.result)
    assert [entry.id for entry in cancelled.runs] == [queued.id]
    assert cancelled.next_cursor is None


async def test_actions_history_audit_and_task_output(
    runs: RunsClient, service: Service, tmp_path: Path
) -> None:
    """An executor runs `build` (output, an artifact); the client reads the log as it
    arrives and after, lists and downloads the artifact, approves `deploy`, stops the run,
    reads its history, its state at a version and at a position, verifies it, pages the
    global log, recreates the run, previews a config and asks for health."""
    run, _ = await runs.create(create_request("/audit"))
    report = tmp_path / "report.txt"
    report.write_bytes(b"all green\n")
    async with open_client(service, "executor") as executor_api:
        executor = ExecutorClient(executor_api)
        claim = await executor.claim("exec-1", wait_s=10)
        assert claim is not None
        assert claim.task.run_id == run.id
        task_id = claim.task.task_id
        chunks: list[bytes] = []
        first_chunk = asyncio.Event()

        async def read_live() -> None:
            async for chunk in runs.task_logs(task_id, follow=True):
                chunks.append(chunk)
                first_chunk.set()

        reader = asyncio.create_task(read_live())
        await executor.append_log(claim.lease, 0, "compiling\n")
        # The followed log hands out the first chunk while the attempt still runs.
        await asyncio.wait_for(first_chunk.wait(), 20)
        assert b"".join(chunks) == b"compiling\n"
        await executor.append_log(claim.lease, 10, "built\n")
        await executor.upload_artifact(claim.lease, "out/report.txt", report)
        await executor.complete(claim.lease, Completion(status="success", exit_code=0))
        await asyncio.wait_for(reader, 20)  # the stream ends with the attempt
    assert b"".join(chunks) == b"compiling\nbuilt\n"
    archived = [chunk async for chunk in runs.task_logs(task_id, attempt=1)]
    assert b"".join(archived) == b"compiling\nbuilt\n"
    listing = await runs.artifacts(task_id)
    assert [(a.key, a.size) for a in listing.artifacts] == [("out/report.txt", 10)]
    assert await runs.download_artifact(task_id, "out/report.txt") == b"all green\n"

    await caught_up(service)  # a read of a run comes from the run_state projection
    assert (await runs.get(run.id)).tasks["deploy"].status == "waiting_approval"
    await runs.approve(run.id, "deploy", comment="ship it")
    await runs.stop(run.id)
    await caught_up(service)
    stopped = await runs.get(run.id)
    assert stopped.stop_requested
    assert stopped.phase == "finished"
    assert stopped.tasks["deploy"].approved_by == "admin-token"

    history = await runs.history(run.id)
    assert [e.version for e in history] == list(range(1, len(history) + 1))
    assert {e.stream for e in history} == {f"run-{run.id}"}
    approvals = [e for e in history if e.type == "task_approved"]
    assert len(approvals) == 1
    assert approvals[0].data["comment"] == "ship it"
    assert (await runs.state(run.id, at_version=1)).version == 1
    at_position = await runs.state(run.id, at_position=approvals[0].position)
    assert at_position.version == approvals[0].version
    assert at_position.tasks["deploy"].approved_by == "admin-token"
    assert not at_position.stop_requested
    verification = await runs.verify(run.id)
    assert (verification.ok, verification.events, verification.problems) == (
        True,
        len(history),
        [],
    )

    page = await runs.events(run=run.id, types=["task_approved", "run_stop_requested"])
    assert [e.position for e in page.events] == [
        e.position for e in history if e.type in ("task_approved", "run_stop_requested")
    ]
    first_two = await runs.events(run=run.id, limit=2)
    assert first_two.events == history[:2]
    rest = await runs.events(run=run.id, after=first_two.next_after)
    assert first_two.events + rest.events == history

    again = await runs.recreate(run.id, environment={"RELEASE": "2"})
    assert again.recreated_from == run.id
    assert again.environment == {"RELEASE": "2"}
    assert again.tasks["build"].id == task_id  # the success is carried over
    assert again.tasks["deploy"].status != "success"

    preview = await runs.simulate(SimulationRequest(config=GATED, outcomes={"build": "failure"}))
    assert preview.result == "failed"
    assert {t.name: t.status for t in preview.tasks} == {"build": "would_run", "deploy": "skipped"}
    assert (await runs.health()).status == "ok"
    readiness = await runs.ready()
    assert readiness.ready
    assert {"database", "object_store"} <= {check.name for check in readiness.checks}


async def test_not_ready_is_an_answer(service: Service, service_config: Settings) -> None:
    """A 503 from /readyz is the service's readiness with its checks, returned (not
    raised) at the first ask, without retries."""
    strict = msgspec.structs.replace(service_config, readiness_max_lag=-1)
    server = await started(strict)
    retries: list[ApiError] = []
    try:
        async with ApiClient(
            str(server.make_url("")), retry=FAST, on_retry=lambda e, _n, _p: retries.append(e)
        ) as api:
            readiness = await RunsClient(api).ready()
    finally:
        await server.close()
    assert not readiness.ready
    failing = {check.name for check in readiness.checks if not check.ok}
    assert failing
    assert all(name.startswith("projection:") for name in failing)
    assert retries == []


async def server_error(
    service: Service,
    method: str,
    path: str,
    *,
    role: str = "admin",
    token: str | None = None,
    body: object = None,
) -> tuple[int, ErrorBody]:
    """What the server itself answers to a request (with the role's token, or `token`
    when given; "" for none): its status and error body."""
    headers = service.auth(role) if token is None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = None
    if body is not None:
        data = msgspec.json.encode(body)
        headers["Content-Type"] = "application/json"
    response = await service.client.request(method, path, headers=headers, data=data)
    return response.status, msgspec.json.decode(await response.read(), type=ErrorBody)


def assert_carries(error: ApiError, answer: tuple[int, ErrorBody]) -> None:
    """The typed error holds what the server answered, word for word."""
    status, body = answer
    assert (error.status, error.code, error.message) == (status, body.code, body.message)
    assert error.details == body.details


async def test_each_error_row_is_its_typed_error(runs: RunsClient, service: Service) -> None:
    """400 (with detail paths), 401, 403, 404, 409 and 413 each raise their own error
    class carrying exactly the code, message and details the server answered."""
    invalid = CreateRunRequest(
        group="/acme",
        name="ci",
        config=RunConfig(
            tasks=[
                TaskConfig(name="a", run="x", depends=["missing"]),
                TaskConfig(name="a", run="y"),
            ]
        ),
    )
    with pytest.raises(BadRequestError) as bad:
        await runs.create(invalid)
    assert bad.value.code == "bad_request"
    assert {d.path for d in bad.value.details} >= {"config.tasks[0].depends[0]"}
    assert_carries(bad.value, await server_error(service, "POST", "/api/v1/runs", body=invalid))
    with pytest.raises(BadRequestError) as bad_query:
        await runs.list(group="acme")
    assert_carries(bad_query.value, await server_error(service, "GET", "/api/v1/runs?group=acme"))

    run, _ = await runs.create(create_request())
    for token in ("rsv_not_a_token", ""):
        async with ApiClient(base_url(service), token, retry=FAST) as stranger:
            with pytest.raises(UnauthorizedError) as unauthorized:
                await RunsClient(stranger).get(run.id)
        assert unauthorized.value.code == "unauthorized"
        answer = await server_error(service, "GET", f"/api/v1/runs/{run.id}", token=token)
        assert_carries(unauthorized.value, answer)

    async with open_client(service, "reader") as reader:
        with pytest.raises(ForbiddenError) as forbidden:
            await RunsClient(reader).stop(run.id)
    assert forbidden.value.code == "forbidden"
    assert_carries(
        forbidden.value,
        await server_error(service, "POST", f"/api/v1/runs/{run.id}/stop", role="reader"),
    )

    with pytest.raises(NotFoundError) as missing:
        await runs.history("no-such-run")
    assert missing.value.code == "not_found"
    assert_carries(
        missing.value, await server_error(service, "GET", "/api/v1/runs/no-such-run/events")
    )
    with pytest.raises(NotFoundError) as no_task:
        await anext(runs.task_logs("no-such-task"))
    assert_carries(
        no_task.value, await server_error(service, "GET", "/api/v1/tasks/no-such-task/logs")
    )

    with pytest.raises(ConflictError) as conflict:
        await runs.approve(run.id, "deploy")
    assert conflict.value.code == "conflict"
    assert_carries(
        conflict.value,
        await server_error(service, "POST", f"/api/v1/runs/{run.id}/tasks/deploy/approve"),
    )

    huge = create_request(annotations={"blob": "x" * BODY_LIMIT})
    with pytest.raises(TooLargeError) as too_large:
        await runs.create(huge)
    assert too_large.value.code == "too_large"
    assert_carries(too_large.value, await server_error(service, "POST", "/api/v1/runs", body=huge))


class Followed:
    """The positions a follower handed out, and waiting until there are enough."""

    def __init__(self) -> None:
        self.positions: list[int] = []
        self._changed = asyncio.Condition()

    async def add(self, event: EventOut) -> None:
        async with self._changed:
            self.positions.append(event.position)
            self._changed.notify_all()

    async def until(self, count: int) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(lambda: len(self.positions) >= count), 30)


async def eventually(predicate: Callable[[], bool], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the condition was not reached in time"
        await asyncio.sleep(0.01)


async def started(settings: Settings, port: int | None = None) -> TestServer:
    """Another service process on the same database and bucket, on a real TCP port."""
    server = TestServer(create_app(settings), port=port)
    await server.start_server()
    return server


async def test_follower_resumes_across_a_server_restart(
    runs: RunsClient, service: Service, service_config: Settings
) -> None:
    """A follower of one service instance reads the stored events, loses its connection
    when that instance shuts down, retries while it is down (events are written through
    another instance meanwhile) and, once the instance is back on the same port, resumes
    after its last position: it yields exactly the log's matching positions, in order,
    each once."""

    async def matching() -> list[int]:
        page = await runs.events(group="/follow", limit=1000)
        return [e.position for e in page.events]

    backlog = [(await runs.create(create_request("/follow", config=ONE_TASK)))[0] for _ in range(3)]
    followed = Followed()
    interruptions: list[str] = []
    retrying = asyncio.Event()

    def on_retry(error: ApiError, failures: int, _pause: float) -> None:
        interruptions.append(error.message)
        if failures >= 2:  # the drop, then a reconnect that found nobody listening
            retrying.set()

    first = await started(service_config)
    port = first.port
    async with ApiClient(str(first.make_url("")), service.tokens["reader"], retry=FAST) as api:

        async def follow() -> None:
            async for event in follow_events(api, group="/follow", on_retry=on_retry):
                await followed.add(event)

        follower = asyncio.create_task(follow())
        try:
            await followed.until(len(await matching()))
            await first.close()
            await asyncio.wait_for(retrying.wait(), 20)

            # Written while the follower's instance is down.
            stopped, _ = await runs.create(create_request("/follow", config=ONE_TASK))
            await runs.stop(stopped.id)
            deeper, _ = await runs.create(create_request("/follow/deeper", config=ONE_TASK))
            await runs.create(create_request("/followers", config=ONE_TASK))  # not below
            await runs.create(create_request("/elsewhere", config=ONE_TASK))

            restarted = await started(service_config, port)
            try:
                after, _ = await runs.create(create_request("/follow", config=ONE_TASK))
                want = await matching()
                await followed.until(len(want))
                assert followed.positions == want
                ours = [*backlog, stopped, deeper, after]
                histories = [e.position for r in ours for e in await runs.history(r.id)]
                assert set(want) == set(histories)
                # Nothing else arrives: the next event is the next one written.
                sentinel, _ = await runs.create(create_request("/follow", config=ONE_TASK))
                want = await matching()
                await followed.until(len(want))
                assert followed.positions == want
                assert sentinel.position == want[-1]
            finally:
                await restarted.close()
        finally:
            follower.cancel()
            with suppress(asyncio.CancelledError):
                await follower
    assert interruptions[0].startswith("closed by the server (code 1001)")
    assert len(interruptions) >= 2


async def test_follower_refusals_are_raised_and_closing_it_closes_the_socket(
    runs: RunsClient, service: Service
) -> None:
    """A bad filter (400), an unknown token (401) and a role that may not read (403) are
    raised at once, never retried, with the server's code and message; closing a follower
    ends its subscription on the server."""
    retries: list[ApiError] = []

    def on_retry(error: ApiError, _failures: int, _pause: float) -> None:
        retries.append(error)

    with pytest.raises(BadRequestError) as bad:
        await anext(follow_events(runs.api, group="relative", on_retry=on_retry))
    assert_carries(
        bad.value, await server_error(service, "GET", "/api/v1/events/ws?group=relative")
    )
    async with ApiClient(base_url(service), "rsv_not_a_token", retry=FAST) as stranger:
        with pytest.raises(UnauthorizedError) as unauthorized:
            await anext(follow_events(stranger, on_retry=on_retry))
    assert_carries(
        unauthorized.value,
        await server_error(service, "GET", "/api/v1/events/ws", token="rsv_not_a_token"),
    )
    async with open_client(service, "executor") as executor:
        with pytest.raises(ForbiddenError) as forbidden:
            await anext(follow_events(executor, on_retry=on_retry))
    assert_carries(
        forbidden.value,
        await server_error(service, "GET", "/api/v1/events/ws", role="executor"),
    )
    assert retries == []

    run, _ = await runs.create(create_request("/closing", config=ONE_TASK))
    stream = follow_events(runs.api, run=run.id)
    first = await anext(stream)
    assert (first.stream, first.version, first.type) == (f"run-{run.id}", 1, "run_created")
    hub = service.app[HUB]
    assert hub.subscribers == 1
    await stream.aclose()
    await eventually(lambda: hub.subscribers == 0)
