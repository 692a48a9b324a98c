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

from pathlib import Path

from runsvc.client.base import ApiClient, ApiError, ConflictError, NotFoundError, Response
from runsvc.wire.executor import (
    ARTIFACT_PATH,
    CLAIM_PATH,
    COMPLETE_PATH,
    HEARTBEAT_PATH,
    KEEP_GOING,
    LOG_OFFSET_HEADER,
    LOGS_PATH,
    RELEASE_PATH,
    Claim,
    ClaimRequest,
    Completion,
    HeartbeatAnswer,
    format_duration,
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
        self, lease: str, path: str, source: Path, *, deadline: float | None = None
    ) -> None:
        """Upload the file `source` as the artifact `path` (relative, `/`-separated),
        streamed from disk."""
        await self._report(
            "PUT",
            ARTIFACT_PATH,
            lease,
            path=path,
            content=source,
            content_type="application/octet-stream",
            deadline=deadline,
        )

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
