"""The runs side of the API as typed calls: runs, actions, history and audit, the global
event page, simulation, task logs and artifacts, health. Each returns the msgspec type the
server encodes; failures raise the `ApiError` subclass of the answer's status.

Only calls that are safe to repeat are retried on transient failures: reads, simulation
(it writes nothing), and a create that carries an idempotency key (the server answers a
repeat with the run the first try created). Stop, cancel, approve and recreate are never
repeated behind the caller's back: when their answer is lost, the caller looks and decides.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import AsyncGenerator, Sequence
from typing import Literal, cast
from urllib.parse import quote

import aiohttp
from yarl import URL

from runsvc.client.base import (
    ApiClient,
    ApiError,
    ConnectionFailed,
    InvalidResponse,
    Response,
    ServerError,
    error_from_response,
)
from runsvc.domain.events import Phase, Result
from runsvc.wire.api import (
    ApproveRequest,
    ArtifactList,
    CreateRunRequest,
    EventOut,
    EventPage,
    Health,
    IndexEntry,
    IndexPage,
    Readiness,
    RecreateRequest,
    RunView,
    SimulationRequest,
    SimulationResult,
    StreamEvents,
    Verification,
)

RUNS = "/api/v1/runs"
EVENTS = "/api/v1/events"
TASKS = "/api/v1/tasks"


def _segment(value: str) -> str:
    """One path segment, percent-encoded (a run id or task name never spans segments)."""
    return quote(value, safe="")


def _artifact_path(task_id: str, path: str) -> str:
    encoded = "/".join(_segment(part) for part in path.split("/"))
    return f"{TASKS}/{_segment(task_id)}/artifacts/{encoded}"


def _params(**values: object) -> dict[str, str]:
    return {key: _text(value) for key, value in values.items() if value is not None}


def _text(value: object) -> str:
    if isinstance(value, bool):  # as the server reads them (str() would say True)
        return "true" if value else "false"
    return str(value)


class RunsClient:
    """Runs, their history and their tasks' output, over an open `ApiClient` (which owns
    the connection, the token and the retry policy)."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def create(self, request: CreateRunRequest) -> tuple[RunView, bool]:
        """The new run and True (201); or, when `idempotency_key` matches a run that has
        not ended, that run and False (200, nothing appended).

        With an idempotency key the create is retried on transient failures, so a retry
        whose first try did create the run answers False: the flag says what this answer
        was, and the run is the same either way."""
        response = await self.api.request(
            "POST", RUNS, json=request, idempotent=request.idempotency_key is not None
        )
        return response.decode(RunView), response.status == 201

    async def get(self, run_id: str) -> RunView:
        """The run as it is now."""
        return await self.api.call("GET", f"{RUNS}/{_segment(run_id)}", into=RunView)

    async def list(
        self,
        *,
        group: str | None = None,
        phase: Phase | None = None,
        result: Result | None = None,
        waiting_approval: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> IndexPage:
        """One page of the index, newest first; `group` matches the path and below it,
        `waiting_approval` keeps runs that have (or have not) a task waiting for an
        approval. Pass the page's `next_cursor` back as `cursor` for the next one."""
        params = _params(
            group=group,
            phase=phase,
            result=result,
            waiting_approval=waiting_approval,
            limit=limit,
            cursor=cursor,
        )
        return await self.api.call("GET", RUNS, into=IndexPage, params=params)

    async def iterate(
        self,
        *,
        group: str | None = None,
        phase: Phase | None = None,
        result: Result | None = None,
        waiting_approval: bool | None = None,
        page_size: int = 100,
    ) -> AsyncGenerator[IndexEntry, None]:
        """Every matching run, newest first, page after page. Runs created meanwhile do
        not shift later pages (the cursor is a creation position), so none is seen
        twice."""
        cursor: str | None = None
        while True:
            page = await self.list(
                group=group,
                phase=phase,
                result=result,
                waiting_approval=waiting_approval,
                limit=page_size,
                cursor=cursor,
            )
            for entry in page.runs:
                yield entry
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    async def stop(self, run_id: str) -> None:
        """Stop a running run (`ConflictError` when it is not running)."""
        await self.api.request("POST", f"{RUNS}/{_segment(run_id)}/stop")

    async def cancel(self, run_id: str) -> None:
        """Cancel a queued run (`ConflictError` when it is not queued)."""
        await self.api.request("POST", f"{RUNS}/{_segment(run_id)}/cancel")

    async def approve(self, run_id: str, task: str, comment: str | None = None) -> None:
        """Approve a task waiting for approval; the approver recorded is the token's
        identity."""
        path = f"{RUNS}/{_segment(run_id)}/tasks/{_segment(task)}/approve"
        await self.api.request("POST", path, json=ApproveRequest(comment=comment))

    async def recreate(
        self,
        run_id: str,
        *,
        from_: str = "failed",
        environment: dict[str, str] | None = None,
        tasks: builtins.list[str] | None = None,
    ) -> RunView:
        """A new run from an ended one's config: from `scratch`, from its `failed` tasks,
        or from the named `tasks` (and what depends on them). `environment`, when given,
        replaces the run's environment. A `from_` other than the two modes is refused by
        the server (`BadRequestError`)."""
        request = RecreateRequest(
            from_=cast(Literal["scratch", "failed"], from_), environment=environment, tasks=tasks
        )
        path = f"{RUNS}/{_segment(run_id)}/recreate"
        return await self.api.call("POST", path, into=RunView, json=request)

    async def history(self, run_id: str) -> builtins.list[EventOut]:
        """The run's events in stream order."""
        path = f"{RUNS}/{_segment(run_id)}/events"
        return (await self.api.call("GET", path, into=StreamEvents)).events

    async def state(
        self, run_id: str, *, at_version: int | None = None, at_position: int | None = None
    ) -> RunView:
        """The run as it was at a stream version or a global log position (give one)."""
        params = _params(at_version=at_version, at_position=at_position)
        path = f"{RUNS}/{_segment(run_id)}/state"
        return await self.api.call("GET", path, into=RunView, params=params)

    async def verify(self, run_id: str) -> Verification:
        """The server's check of the run's hash chain and stored state."""
        path = f"{RUNS}/{_segment(run_id)}/verify"
        return await self.api.call("GET", path, into=Verification)

    async def events(
        self,
        *,
        after: int = 0,
        limit: int | None = None,
        run: str | None = None,
        group: str | None = None,
        types: Sequence[str] = (),
    ) -> EventPage:
        """A page of the global log after position `after`; continue from `next_after`.
        To follow the log live, use `follow_events`."""
        params = _params(
            after=after, limit=limit, run=run, group=group, types=",".join(types) or None
        )
        return await self.api.call("GET", EVENTS, into=EventPage, params=params)

    async def simulate(self, request: SimulationRequest) -> SimulationResult:
        """A preview of a config; nothing is written, so it is retried like a read."""
        return await self.api.call(
            "POST", "/api/v1/simulations", into=SimulationResult, json=request, idempotent=True
        )

    async def task_logs(
        self, task_id: str, *, attempt: int | None = None, follow: bool = False
    ) -> AsyncGenerator[bytes, None]:
        """The attempt's output (the latest attempt unless `attempt` is given) in chunks
        as they arrive; with `follow`, until the attempt ends.

        Opening the stream is retried like any read; once output has been handed out, a
        dropped connection raises `ConnectionFailed` (the caller knows how much it got)."""
        params = _params(attempt=attempt, follow="true" if follow else None)
        path = f"{TASKS}/{_segment(task_id)}/logs"
        # A followed log stays quiet while the task prints nothing.
        async for chunk in self._stream("task logs", path, params, quiet=follow):
            yield chunk

    async def _stream(
        self, what: str, path: str, params: dict[str, str], *, quiet: bool = False
    ) -> AsyncGenerator[bytes, None]:
        """A GET's body in chunks as they arrive. Opening it is retried like any read;
        once a chunk has been handed out, a dropped connection raises `ConnectionFailed`
        (the caller knows how much it got). The wait between chunks is bounded unless
        the body may stay `quiet` for long."""
        url = URL(f"{self.api.base_url}{path}", encoded=True)
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self.api.timeout_s,
            sock_read=None if quiet else self.api.timeout_s,
        )
        failures = 0
        while True:
            started = False
            try:
                async with self.api.session.get(url, params=params, timeout=timeout) as answer:
                    if answer.status >= 400:
                        raise error_from_response(answer.status, answer.reason, await answer.read())
                    async for chunk in answer.content.iter_any():
                        started = True
                        yield chunk
                return
            except (aiohttp.ClientError, TimeoutError) as exc:
                error: ApiError = ConnectionFailed(f"GET {what}: {str(exc) or type(exc).__name__}")
                cause: BaseException = exc
            except ServerError as exc:
                error, cause = exc, exc
            failures += 1
            if started or failures >= self.api.retry.attempts:
                raise error from cause
            pause = self.api.retry.backoff(failures)
            if self.api.on_retry is not None:
                self.api.on_retry(error, failures, pause)
            await asyncio.sleep(pause)

    async def artifacts(self, task_id: str) -> ArtifactList:
        """The task's artifacts, keys relative to its artifact folder."""
        path = f"{TASKS}/{_segment(task_id)}/artifacts"
        return await self.api.call("GET", path, into=ArtifactList)

    async def download_artifact(self, task_id: str, path: str) -> bytes:
        """The artifact `path` (as listed by `artifacts`), whole."""
        response = await self.api.request("GET", _artifact_path(task_id, path))
        return response.body

    async def artifact_chunks(self, task_id: str, path: str) -> AsyncGenerator[bytes, None]:
        """The artifact `path` in chunks as they arrive: for files too big to hold whole
        (up to the server's 1 GiB). A dropped transfer raises `ConnectionFailed`."""
        async for chunk in self._stream("artifact", _artifact_path(task_id, path), {}):
            yield chunk

    async def health(self) -> Health:
        """Liveness: the process is up."""
        return await self.api.call("GET", "/healthz", into=Health)

    async def ready(self) -> Readiness:
        """Readiness with each check's outcome, whether ready (200) or not (503); asked
        once, not retried, since the answer is about this moment."""
        url = URL(f"{self.api.base_url}/readyz", encoded=True)
        timeout = aiohttp.ClientTimeout(total=self.api.timeout_s)
        try:
            async with self.api.session.get(url, timeout=timeout) as answer:
                response = Response(answer.status, answer.headers, await answer.read())
                reason = answer.reason
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailed(f"GET /readyz: {str(exc) or type(exc).__name__}") from exc
        if response.status not in (200, 503):
            raise error_from_response(response.status, reason, response.body)
        try:
            return response.decode(Readiness)
        except InvalidResponse:
            # A 503 that is not the service's own (a proxy's) carries no checks.
            if response.status == 503:
                raise error_from_response(503, reason, response.body) from None
            raise
