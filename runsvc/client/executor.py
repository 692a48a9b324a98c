"""The executor calls of the API as typed methods (see `runsvc.wire.executor`).

Every report on a lease (heartbeat, log chunk, artifact, completion, release) is safe to
repeat, so each is retried on connection failures and 5xx until the caller's `deadline`:
an executor rides out a server outage while its task keeps running. A 409 is never
retried: it means the lease is no longer current, and surfaces as `LeaseLost` (as does a
404, a lease the server does not know).
The claim is the one call that is not repeated: a claim whose answer was lost may have
leased a task, and claiming again would lease a second one (the first is recovered when
its lease expires).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from yarl import URL

from runsvc.client.base import (
    ApiClient,
    ApiError,
    ConflictError,
    ConnectionFailed,
    NotFoundError,
    Response,
    error_from_response,
)
from runsvc.wire.executor import (
    ARTIFACT_PATH,
    CLAIM_PATH,
    COMPLETE_PATH,
    HEARTBEAT_PATH,
    INPUT_PATH,
    INPUTS_PATH,
    KEEP_GOING,
    LOG_OFFSET_HEADER,
    LOGS_PATH,
    RELEASE_PATH,
    SHA256_HEADER,
    Claim,
    ClaimRequest,
    Completion,
    HeartbeatAnswer,
    InputFiles,
    format_duration,
    input_path,
    lease_path,
)

# The server may hold a claim open for its whole `wait`; the request must outlive that.
_CLAIM_MARGIN_S = 15.0


class LeaseLost(ConflictError):
    """409: the lease is no longer current (lost, expired, replaced or already ended); the
    attempt must be abandoned without reporting anything else. A 404 on a lease route (the
    server does not know the lease at all) means the same and is raised as this too."""

    def __init__(self, lease: str, cause: ApiError) -> None:
        super().__init__(cause.status, cause.code, cause.message, cause.details)
        self.lease = lease


@dataclass(frozen=True)
class InputDownload:
    """An input file's answer, its body not read yet: `chunks` hands it out as it
    arrives. `sha256` is what the server recorded for it (None: nothing was)."""

    size: int | None
    sha256: str | None
    _response: aiohttp.ClientResponse
    _what: str

    async def chunks(self, size: int = 1 << 20) -> AsyncIterator[bytes]:
        """The body in chunks of at most `size` bytes; a transfer cut short raises
        `ConnectionFailed`."""
        try:
            async for chunk in self._response.content.iter_chunked(size):
                yield chunk
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailed(f"{self._what}: {str(exc) or type(exc).__name__}") from exc


class ExecutorClient:
    """The executor endpoints over an open `ApiClient` (which owns the connection).

    `deadline` arguments are `time.monotonic()` values: transient failures are retried
    until then; None retries as the `ApiClient`'s policy says.
    """

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def claim(
        self, executor: str, labels: dict[str, str] | None = None, *, wait_s: float = 20.0
    ) -> Claim | None:
        """One ready task under a new lease, or None when nothing became ready in `wait_s`."""
        request = ClaimRequest(
            executor=executor, labels=dict(labels or {}), wait=format_duration(wait_s)
        )
        response = await self.api.request(
            "POST", CLAIM_PATH, json=request, timeout_s=wait_s + _CLAIM_MARGIN_S
        )
        return None if response.status == 204 else response.decode(Claim)

    async def heartbeat(self, lease: str, *, deadline: float | None = None) -> HeartbeatAnswer:
        """Renew the lease. The answer says whether the task must stop (`KEEP_GOING` for a
        204)."""
        response = await self._report("POST", HEARTBEAT_PATH, lease, deadline=deadline)
        return KEEP_GOING if response.status == 204 else response.decode(HeartbeatAnswer)

    async def append_log(
        self, lease: str, offset: int, text: str, *, deadline: float | None = None
    ) -> None:
        """Append a chunk of output that starts at byte `offset` of the attempt's log."""
        await self._report(
            "PUT",
            LOGS_PATH,
            lease,
            content=text,
            content_type="text/plain; charset=utf-8",
            headers={LOG_OFFSET_HEADER: str(offset)},
            deadline=deadline,
        )

    async def upload_artifact(
        self,
        lease: str,
        path: str,
        source: Path,
        *,
        sha256: str | None = None,
        deadline: float | None = None,
    ) -> None:
        """Upload the file `source` as the artifact `path` (relative, `/`-separated),
        streamed from disk. `sha256`: of the file's bytes, which the server checks what it
        receives against and records (the executors' inputs check it again)."""
        await self._report(
            "PUT",
            ARTIFACT_PATH,
            lease,
            path=path,
            content=source,
            content_type="application/octet-stream",
            headers={SHA256_HEADER: sha256} if sha256 is not None else None,
            deadline=deadline,
        )

    async def input_files(
        self, lease: str, task_id: str, *, deadline: float | None = None
    ) -> InputFiles:
        """The files of the input source `task_id` that the attempt's inputs ask for."""
        try:
            response = await self.api.request(
                "GET", input_path(INPUTS_PATH, lease, task_id), deadline=deadline
            )
        except ConflictError as exc:
            raise LeaseLost(lease, exc) from exc
        return response.decode(InputFiles)

    @contextlib.asynccontextmanager
    async def download_input(
        self, lease: str, task_id: str, path: str
    ) -> AsyncIterator[InputDownload]:
        """Open the input file `path` of the source `task_id` for streaming (one try: a
        download is repeated by the caller, who knows what it has written). 404 raises
        `NotFoundError`: the source uploaded no such file when it succeeded."""
        what = f"GET input {path!r}"
        url = URL(self.api.base_url + input_path(INPUT_PATH, lease, task_id, path), encoded=True)
        timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=self.api.timeout_s, sock_read=self.api.timeout_s
        )
        try:
            async with self.api.session.get(url, timeout=timeout) as answer:
                if answer.status >= 400:
                    error = error_from_response(answer.status, answer.reason, await answer.read())
                    if isinstance(error, ConflictError):
                        raise LeaseLost(lease, error)
                    raise error
                yield InputDownload(
                    size=answer.content_length,
                    sha256=answer.headers.get(SHA256_HEADER),
                    _response=answer,
                    _what=what,
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConnectionFailed(f"{what}: {str(exc) or type(exc).__name__}") from exc

    async def complete(
        self, lease: str, completion: Completion, *, deadline: float | None = None
    ) -> None:
        """Report the attempt's outcome; this ends the lease."""
        await self._report("POST", COMPLETE_PATH, lease, json=completion, deadline=deadline)

    async def release(self, lease: str, *, deadline: float | None = None) -> None:
        """Hand the task back unfinished; the server records the attempt as lost and the
        task's retry policy decides what follows."""
        await self._report("POST", RELEASE_PATH, lease, deadline=deadline)

    async def _report(
        self,
        method: str,
        template: str,
        lease: str,
        *,
        path: str = "",
        json: object = None,
        content: str | Path | None = None,
        content_type: str | None = None,
        headers: dict[str, str] | None = None,
        deadline: float | None,
    ) -> Response:
        try:
            return await self.api.request(
                method,
                lease_path(template, lease, path),
                json=json,
                content=content,
                content_type=content_type,
                headers=headers,
                idempotent=True,
                deadline=deadline,
            )
        except (ConflictError, NotFoundError) as exc:
            raise LeaseLost(lease, exc) from exc
