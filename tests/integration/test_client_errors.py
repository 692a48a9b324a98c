"""The typed client against a small aiohttp server: errors parsed from the API's error
body, retries only where a repeat is safe, and surviving an unreachable server."""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from runsvc.client import (
    ApiClient,
    ApiError,
    BadRequestError,
    ConflictError,
    ConnectionFailed,
    ExecutorClient,
    ForbiddenError,
    InvalidResponse,
    LeaseLost,
    NotFoundError,
    RetryPolicy,
    ServerError,
    TooLargeError,
    UnauthorizedError,
)
from runsvc.wire.api import ErrorBody, Problem
from runsvc.wire.executor import Completion

TOKEN = "rsv_test_token"
FAST = RetryPolicy(attempts=3, first_backoff_s=0.01, max_backoff_s=0.02)


class Answers:
    """A server whose routes answer what the tests ask for, counting the hits."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.never = asyncio.Event()
        self.app = web.Application()
        self.app.router.add_route("*", "/errors/{status}", self.error)
        self.app.router.add_route("*", "/plain/{status}", self.plain)
        self.app.router.add_route("*", "/flaky/{failures}", self.flaky)
        self.app.router.add_get("/hang", self.hang)
        self.app.router.add_get("/auth", self.auth)
        self.app.router.add_post("/api/v1/executor/leases/{lease}/{action}", self.lease)

    async def error(self, request: web.Request) -> web.Response:
        status = int(request.match_info["status"])
        self.hits[request.path] += 1
        details = [Problem(path="config.tasks[0].name", message="required")]
        body = ErrorBody(code=f"code_{status}", message=f"message {status}", details=details)
        return web.Response(
            status=status, body=msgspec.json.encode(body), content_type="application/json"
        )

    async def plain(self, request: web.Request) -> web.Response:
        return web.Response(
            status=int(request.match_info["status"]),
            text="<html>oops</html>",
            content_type="text/html",
        )

    async def flaky(self, request: web.Request) -> web.Response:
        key = f"{request.method} {request.path}"
        self.hits[key] += 1
        if self.hits[key] <= int(request.match_info["failures"]):
            return web.Response(status=503, text="busy")
        return web.json_response({"ok": True})

    async def hang(self, _request: web.Request) -> web.Response:
        await self.never.wait()
        return web.Response(status=204)

    async def auth(self, request: web.Request) -> web.Response:
        return web.json_response({"authorization": request.headers.get("Authorization")})

    async def lease(self, request: web.Request) -> web.Response:
        self.hits[request.path] += 1
        status = 404 if request.match_info["lease"] == "unknown" else 409
        body = ErrorBody(code="conflict", message="the lease is not current")
        return web.Response(
            status=status, body=msgspec.json.encode(body), content_type="application/json"
        )


@pytest.fixture
async def answers() -> AsyncIterator[tuple[Answers, ApiClient]]:
    """The server and an open client of it with fast retries."""
    answers = Answers()
    server = TestServer(answers.app)
    await server.start_server()
    try:
        async with ApiClient(str(server.make_url("")), TOKEN, retry=FAST, timeout_s=0.5) as client:
            yield answers, client
    finally:
        answers.never.set()
        await server.close()


class Ok(msgspec.Struct):
    ok: bool


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (400, BadRequestError),
        (401, UnauthorizedError),
        (403, ForbiddenError),
        (404, NotFoundError),
        (409, ConflictError),
        (413, TooLargeError),
        (500, ServerError),
        (503, ServerError),
        (422, ApiError),
    ],
)
async def test_errors_are_typed_from_the_body(
    answers: tuple[Answers, ApiClient], status: int, error_type: type[ApiError]
) -> None:
    """Each status becomes its error class, with code, message and details from the body."""
    _, client = answers
    with pytest.raises(error_type) as caught:
        await client.request("POST", f"/errors/{status}")
    error = caught.value
    assert type(error) is error_type
    assert (error.status, error.code, error.message) == (
        status,
        f"code_{status}",
        f"message {status}",
    )
    assert error.details == [Problem(path="config.tasks[0].name", message="required")]


@pytest.mark.parametrize(
    ("status", "error_type", "code", "message"),
    [
        (400, BadRequestError, "bad_request", "Bad Request"),
        (502, ServerError, "http_502", "Bad Gateway"),
        (418, ApiError, "http_418", "I'm a Teapot"),
    ],
)
async def test_errors_without_a_json_body_fall_back_to_the_status(
    answers: tuple[Answers, ApiClient],
    status: int,
    error_type: type[ApiError],
    code: str,
    message: str,
) -> None:
    """A proxy's HTML error page still yields a typed error, named by the status text."""
    _, client = answers
    with pytest.raises(error_type) as caught:
        await client.request("POST", f"/plain/{status}")
    assert (caught.value.status, caught.value.code) == (status, code)
    assert caught.value.message.lower() == message.lower()


async def test_safe_calls_are_retried(answers: tuple[Answers, ApiClient]) -> None:
    """A GET that meets 503s is retried until it succeeds, within the policy's tries."""
    server, client = answers
    retried: list[int] = []
    client.on_retry = lambda _error, failures, _pause: retried.append(failures)
    assert await client.call("GET", "/flaky/2", into=Ok) == Ok(ok=True)
    assert server.hits["GET /flaky/2"] == 3
    assert retried == [1, 2]


async def test_retries_are_bounded(answers: tuple[Answers, ApiClient]) -> None:
    """Without a deadline a safe call gives up after `attempts` tries in all."""
    server, client = answers
    with pytest.raises(ServerError):
        await client.request("GET", "/flaky/10")
    assert server.hits["GET /flaky/10"] == FAST.attempts


async def test_unsafe_calls_are_not_retried(answers: tuple[Answers, ApiClient]) -> None:
    """A POST not marked idempotent is sent once: a repeat could do its work twice."""
    server, client = answers
    with pytest.raises(ServerError):
        await client.request("POST", "/flaky/1")
    assert server.hits["POST /flaky/1"] == 1


async def test_idempotent_calls_are_retried(answers: tuple[Answers, ApiClient]) -> None:
    """A POST the caller marks idempotent is retried like a GET."""
    server, client = answers
    response = await client.request("POST", "/flaky/1", idempotent=True)
    assert response.status == 200
    assert server.hits["POST /flaky/1"] == 2


async def test_client_errors_are_never_retried(answers: tuple[Answers, ApiClient]) -> None:
    """A 4xx is an answer, not a failure: even a GET is not repeated."""
    server, client = answers
    with pytest.raises(ConflictError):
        await client.request("GET", "/errors/409")
    assert server.hits["/errors/409"] == 1


async def test_lease_conflicts_surface_as_lease_lost(answers: tuple[Answers, ApiClient]) -> None:
    """On a lease route, 409 (and 404, an unknown lease) is `LeaseLost`, never retried
    however long the deadline."""
    server, client = answers
    executor = ExecutorClient(client)
    deadline = time.monotonic() + 30
    with pytest.raises(LeaseLost) as caught:
        await executor.complete("l-1", Completion(status="success", exit_code=0), deadline=deadline)
    assert caught.value.lease == "l-1"
    assert caught.value.code == "conflict"
    with pytest.raises(LeaseLost):
        await executor.heartbeat("unknown", deadline=deadline)
    assert server.hits["/api/v1/executor/leases/l-1/complete"] == 1
    assert server.hits["/api/v1/executor/leases/unknown/heartbeat"] == 1


async def test_a_timeout_is_a_connection_failure(answers: tuple[Answers, ApiClient]) -> None:
    """No answer within the timeout is `ConnectionFailed` (status 0)."""
    _, client = answers
    client.retry = RetryPolicy(attempts=1)
    with pytest.raises(ConnectionFailed, match="no answer within") as caught:
        await client.request("GET", "/hang")
    assert caught.value.status == 0


async def test_the_token_is_sent(answers: tuple[Answers, ApiClient]) -> None:
    """Every request carries the bearer token."""
    _, client = answers

    class Seen(msgspec.Struct):
        authorization: str | None

    assert await client.call("GET", "/auth", into=Seen) == Seen(f"Bearer {TOKEN}")


async def test_an_unexpected_body_is_an_invalid_response(
    answers: tuple[Answers, ApiClient],
) -> None:
    """A successful answer that does not decode as the expected type is `InvalidResponse`."""
    _, client = answers

    class Other(msgspec.Struct):
        name: str

    with pytest.raises(InvalidResponse):
        await client.call("GET", "/flaky/0", into=Other)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_refused_connections_until_the_deadline() -> None:
    """With nothing listening, an idempotent call is retried until its deadline and then
    fails with `ConnectionFailed`; a non-idempotent one fails at once."""
    retried: list[int] = []
    url = f"http://127.0.0.1:{free_port()}"
    async with ApiClient(
        url, TOKEN, retry=FAST, on_retry=lambda *a: retried.append(a[1])
    ) as client:
        with pytest.raises(ConnectionFailed):
            await client.request("POST", "/x")
        assert retried == []
        with pytest.raises(ConnectionFailed):
            await client.request("POST", "/x", idempotent=True, deadline=time.monotonic() + 0.3)
    assert len(retried) > FAST.attempts  # the deadline, not the attempt count, bounded it


async def test_a_report_survives_the_server_being_away() -> None:
    """A completion sent while the server is down arrives once it is back."""
    port = free_port()
    completed = asyncio.Event()
    failures_seen = asyncio.Event()

    async def complete(_request: web.Request) -> web.Response:
        completed.set()
        return web.Response(status=204)

    def on_retry(_error: ApiError, failures: int, _pause: float) -> None:
        if failures >= 3:
            failures_seen.set()

    app = web.Application()
    app.router.add_post("/api/v1/executor/leases/{lease}/complete", complete)
    async with ApiClient(f"http://127.0.0.1:{port}", TOKEN, retry=FAST, on_retry=on_retry) as api:
        report = asyncio.create_task(
            ExecutorClient(api).complete(
                "l-1", Completion(status="success", exit_code=0), deadline=time.monotonic() + 30
            )
        )
        await asyncio.wait_for(failures_seen.wait(), 10)
        assert not report.done()
        server = TestServer(app, port=port)
        await server.start_server()
        try:
            await asyncio.wait_for(report, 10)
            assert completed.is_set()
        finally:
            await server.close()
