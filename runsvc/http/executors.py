"""Executor endpoints (claim, heartbeat, logs, artifacts, complete, release) and the task
output endpoints readers use (logs, live or archived; artifacts)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
from collections.abc import AsyncIterator
from typing import Annotated

import asyncpg
import msgspec
import structlog
from aiohttp import web

from runsvc.domain.config import parse_duration
from runsvc.domain.errors import BadRequest, Forbidden, NotFound, TooLarge, Unavailable
from runsvc.http.byte_ranges import Unsatisfiable, byte_range
from runsvc.http.keys import LEASES, LOG_LISTENER, OBJECTS, SETTINGS
from runsvc.http.middleware import error_response
from runsvc.http.routing import Endpoint, decode_body, decode_query, json_response, principal
from runsvc.infra.objectstore import InvalidKey, ObjectNotFound, ObjectStore, ObjectStoreError
from runsvc.service.auth import Permission
from runsvc.service.leases import attempt_of
from runsvc.service.task_logs import (
    SHA256_METADATA,
    archive,
    artifact_metadata,
    artifact_prefix,
    attempt_artifacts,
    check_artifact_path,
    has_chunks,
    log_key,
    log_size,
    read_log,
    read_range,
    uploaded_by,
)
from runsvc.wire.api import Artifact, ArtifactList
from runsvc.wire.executor import (
    ARTIFACT_PATH,
    ATTEMPT_HEADER,
    CLAIM_PATH,
    COMPLETE_PATH,
    HEARTBEAT_PATH,
    INPUT_PATH,
    INPUTS_PATH,
    LOG_OFFSET_HEADER,
    LOGS_PATH,
    RELEASE_PATH,
    SHA256_HEADER,
    Claim,
    ClaimRequest,
    Completion,
    HeartbeatAnswer,
    InputFiles,
    wanted,
)

log = structlog.get_logger("runsvc.http")


# How long a reader waits for object storage to start answering before it gets a 503: the
# client's own retries and timeouts stay in the client's hands, not behind a hung request.
STORAGE_WAIT_S = 5.0


@contextlib.asynccontextmanager
async def storage_answering() -> AsyncIterator[None]:
    """Object storage calls made before a response starts: a failure or a hang becomes a
    503 that says so, never an empty 200."""
    try:
        async with asyncio.timeout(STORAGE_WAIT_S):
            yield
    except TimeoutError as exc:
        raise Unavailable("object storage is not answering") from exc
    except (ObjectNotFound, InvalidKey):
        raise
    except ObjectStoreError as exc:
        raise Unavailable(str(exc)) from exc


def _lease(request: web.Request) -> str:
    return request.match_info["lease"]


def _connected(request: web.Request) -> bool:
    """Whether the client still holds the connection this request came on."""
    transport = request.transport
    return transport is not None and not transport.is_closing()


async def claim(request: web.Request) -> web.Response:
    body = await decode_body(request, ClaimRequest)
    try:
        wait = parse_duration(body.wait).total_seconds()
    except ValueError as exc:
        raise BadRequest(str(exc)) from exc
    wait = min(wait, request.app[SETTINGS].max_claim_wait_s)
    who = principal(request)
    # The token decides: its name is recorded as the actor (the announced name is only a
    # host hint), and a token bound to labels claims by those, whatever it announces.
    claimed = await request.app[LEASES].claim(
        body.executor,
        who.labels or body.labels,
        wait,
        answerable=lambda: _connected(request),
        actor=who.name,
    )
    if claimed is None:
        return web.Response(status=204)
    return json_response(claimed)


async def heartbeat(request: web.Request) -> web.Response:
    answer = await request.app[LEASES].heartbeat(_lease(request))
    if answer is None:
        return web.Response(status=204)
    return json_response(answer)


async def append_log(request: web.Request) -> web.Response:
    raw = request.headers.get(LOG_OFFSET_HEADER)
    try:
        offset = int(raw) if raw is not None else -1
    except ValueError:
        offset = -1
    if offset < 0:
        raise BadRequest(f"{LOG_OFFSET_HEADER} must give the chunk's byte offset")
    await request.app[LEASES].append_log(_lease(request), offset, await request.read())
    return web.Response(status=204)


_SHA256 = re.compile(r"^[0-9a-f]{64}$")


async def upload_artifact(request: web.Request) -> web.Response:
    path = check_artifact_path(request.match_info["path"])
    claimed = request.headers.get(SHA256_HEADER)
    if claimed is not None:
        claimed = claimed.strip().lower()
        if not _SHA256.match(claimed):
            raise BadRequest(f"{SHA256_HEADER} must be a SHA-256 in 64 hexadecimal digits")
    lease = await request.app[LEASES].lease_for_upload(_lease(request))
    limit = request.app[SETTINGS].max_artifact_bytes
    too_large = TooLarge(f"an artifact may hold {limit} bytes at most")
    if request.content_length is not None and request.content_length > limit:
        raise too_large

    async def body() -> AsyncIterator[bytes]:
        received = 0
        digest = hashlib.sha256()
        async for chunk in request.content.iter_chunked(1 << 20):
            received += len(chunk)
            if received > limit:  # the upload is aborted: nothing is stored
                raise too_large
            digest.update(chunk)
            yield chunk
        # Before the last part is sent: raising here aborts the upload, so an artifact
        # is stored only with the checksum of the bytes it holds.
        if claimed is not None and digest.hexdigest() != claimed:
            raise BadRequest(
                f"artifact {path!r} not stored: its bytes do not match its {SHA256_HEADER} "
                "(the file changed while it was uploaded?)"
            )

    # The checksum is recorded as sent (it must be known when the upload begins) and
    # holds because the bytes were checked against it above.
    metadata = artifact_metadata(lease.attempt, claimed)
    try:
        await request.app[OBJECTS].put_stream(
            artifact_prefix(lease.task_id) + path, body(), metadata=metadata
        )
    except ObjectStoreError as exc:
        raise Unavailable(f"artifact not stored: {exc}") from exc
    return web.Response(status=204)


async def list_inputs(request: web.Request) -> web.Response:
    """The artifacts of one source of the attempt's inputs that the input asks for,
    from that source's successful attempt only."""
    task_id = request.match_info["task_id"]
    source, paths = await request.app[LEASES].input_source(_lease(request), task_id)
    if source.attempt is None:  # it did not succeed: it gives nothing
        return json_response(InputFiles())
    async with storage_answering():
        files = await attempt_artifacts(request.app[OBJECTS], task_id, source.attempt, paths)
    return json_response(InputFiles(files=files))


async def get_input(request: web.Request) -> web.StreamResponse:
    """One artifact of a source of the attempt's inputs, streamed from object storage,
    with its size, its SHA-256 and the attempt that uploaded it."""
    task_id = request.match_info["task_id"]
    path = check_artifact_path(request.match_info["path"])
    source, paths = await request.app[LEASES].input_source(_lease(request), task_id)
    if not wanted(path, paths):
        raise Forbidden(f"{path!r} is not among the paths this attempt's input asks for")
    missing = NotFound(f"task {source.task!r} uploaded no artifact {path!r} when it succeeded")
    if source.attempt is None:
        raise missing
    key = artifact_prefix(task_id) + path
    objects = request.app[OBJECTS]
    try:
        async with storage_answering():
            info = await objects.head(key)
    except ObjectNotFound:
        raise missing from None
    if not uploaded_by(info, source.attempt):  # left by an attempt that failed
        raise missing
    headers = {"Content-Type": "application/octet-stream", ATTEMPT_HEADER: str(source.attempt)}
    if SHA256_METADATA in info.metadata:
        headers[SHA256_HEADER] = info.metadata[SHA256_METADATA]
    response = web.StreamResponse(headers=headers)
    # A transfer cut short is then one the client can tell from a whole one.
    response.content_length = info.size
    await response.prepare(request)
    try:
        async for data in objects.get_stream(key):
            await response.write(data)
    except ObjectStoreError as exc:
        log.warning("input read failed", task_id=task_id, path=path, error=str(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def complete(request: web.Request) -> web.Response:
    body = await decode_body(request, Completion)
    lease = await request.app[LEASES].complete(_lease(request), body, actor=principal(request).name)
    # The log moves to object storage now; if the store is down the timer loop retries.
    try:
        await archive(request.app[LEASES].pool, request.app[OBJECTS], lease.task_id, lease.attempt)
    except ObjectStoreError as exc:
        log.warning("log archive delayed", task_id=lease.task_id, error=str(exc))
    return web.Response(status=204)


async def release(request: web.Request) -> web.Response:
    await request.app[LEASES].lose(_lease(request), "handed back by its executor", state="released")
    return web.Response(status=204)


# Attempts count from 1 and are PostgreSQL integers: anything else is a 400, not a
# driver error.
Attempt = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]


class LogQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    attempt: Attempt | None = None
    follow: bool = False
    # Where to start reading: a reader that showed the end of a running attempt's log
    # (a Range request) follows on from the byte after it.
    offset: Annotated[int, msgspec.Meta(ge=0)] = 0


async def task_logs(request: web.Request) -> web.StreamResponse:
    """The attempt's output: what has arrived, or with `follow=true` the output as it
    arrives until the attempt ends; one range of it with a `Range` header."""
    query = decode_query(request, LogQuery)
    asked = request.headers.get("Range")
    if asked is not None and (query.follow or query.offset):
        raise BadRequest("a Range header reads a finished part: follow with `offset` instead")
    task_id = request.match_info["task_id"]
    pool = request.app[LEASES].pool
    objects = request.app[OBJECTS]
    attempt, state = await attempt_of(pool, task_id, query.attempt)
    live = await has_chunks(pool, task_id, attempt)
    span = None
    if asked is not None:
        size = await _log_size(pool, objects, task_id, attempt, live)
        try:
            span = byte_range(asked, size)
        except Unsatisfiable as exc:
            refused = error_response(416, "range_not_satisfiable", str(exc))
            refused.headers["Content-Range"] = f"bytes */{size}"
            return refused
    elif not live:
        try:
            async with storage_answering():
                await objects.head(log_key(task_id, attempt))
        except ObjectNotFound:
            pass  # the attempt wrote nothing: an empty log
    headers = {
        "Content-Type": "text/plain; charset=utf-8",
        # Where the bytes come from: the database while the attempt's output is there,
        # object storage once it has been moved.
        "X-Log-Source": "database" if live else "object-storage",
        "X-Log-Attempt": str(attempt),
    }
    if span is None:
        body = _read_on(request, task_id, attempt, state, query)
        return await _send(request, web.StreamResponse(headers=headers), task_id, body)
    first, last = span
    headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    headers["Content-Length"] = str(last - first + 1)
    body = read_range(pool, objects, task_id, attempt, start=first, end=last + 1)
    return await _send(request, web.StreamResponse(status=206, headers=headers), task_id, body)


async def _log_size(
    pool: asyncpg.Pool, objects: ObjectStore, task_id: str, attempt: int, live: bool
) -> int:
    if live:
        return await log_size(pool, objects, task_id, attempt, live=True)
    async with storage_answering():
        return await log_size(pool, objects, task_id, attempt, live=False)


async def _read_on(
    request: web.Request, task_id: str, attempt: int, state: str, query: LogQuery
) -> AsyncIterator[bytes]:
    pool = request.app[LEASES].pool
    objects = request.app[OBJECTS]
    offset = query.offset
    while True:
        async for data in read_log(pool, objects, task_id, attempt, offset):
            yield data
            offset += len(data)
        if not query.follow or state != "active":
            break
        await request.app[LOG_LISTENER].wait(1.0)
        _, state = await attempt_of(pool, task_id, attempt)
    # One last read: output that arrived between the last read and the end.
    if query.follow:
        async for data in read_log(pool, objects, task_id, attempt, offset):
            yield data


async def _send(
    request: web.Request,
    response: web.StreamResponse,
    task_id: str,
    body: AsyncIterator[bytes],
) -> web.StreamResponse:
    await response.prepare(request)
    try:
        async for data in body:
            await response.write(data)
    except ObjectStoreError as exc:
        # The status is sent already: end the connection without finishing the body, so
        # the client sees a cut-off transfer rather than a complete, shorter log.
        log.warning("log read failed", task_id=task_id, error=str(exc))
        if request.transport is not None:
            request.transport.close()
        return response
    await response.write_eof()
    return response


async def list_artifacts(request: web.Request) -> web.Response:
    task_id = request.match_info["task_id"]
    prefix = artifact_prefix(task_id)
    found = []
    try:
        async with storage_answering():
            async for item in request.app[OBJECTS].list(prefix):
                found.append(
                    Artifact(
                        key=item.key[len(prefix) :],
                        size=item.size,
                        last_modified=item.last_modified,
                        etag=item.etag,
                    )
                )
    except InvalidKey:
        # Not the store failing: no task id has what a key may not (control characters).
        raise NotFound(f"no task {task_id!r}") from None
    return json_response(ArtifactList(artifacts=found))


async def get_artifact(request: web.Request) -> web.StreamResponse:
    path = check_artifact_path(request.match_info["path"])
    key = artifact_prefix(request.match_info["task_id"]) + path
    objects = request.app[OBJECTS]
    try:
        async with storage_answering():
            await objects.head(key)
    except (ObjectNotFound, InvalidKey):
        # An invalid key (the path is checked above, so the task id) names no artifact.
        raise NotFound(f"no artifact {path!r}") from None
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    await response.prepare(request)
    async for data in objects.get_stream(key):
        await response.write(data)
    await response.write_eof()
    return response


EXECUTOR_ENDPOINTS = [
    Endpoint(
        "POST",
        CLAIM_PATH,
        claim,
        Permission.EXECUTE,
        "Claim a ready task",
        "executors",
        body=ClaimRequest,
        responses={200: Claim, 204: None},
        bounded=False,
    ),
    Endpoint(
        "POST",
        HEARTBEAT_PATH,
        heartbeat,
        Permission.EXECUTE,
        "Renew a lease",
        "executors",
        responses={204: None, 200: HeartbeatAnswer},
    ),
    Endpoint(
        "PUT",
        LOGS_PATH,
        append_log,
        Permission.EXECUTE,
        "Append a chunk of output",
        "executors",
        responses={204: None},
        body_content_type="text/plain",
    ),
    Endpoint(
        "PUT",
        ARTIFACT_PATH.replace("{path}", "{path:.+}"),
        upload_artifact,
        Permission.EXECUTE,
        "Upload an artifact",
        "executors",
        responses={204: None},
        body_content_type="application/octet-stream",
        bounded=False,
    ),
    Endpoint(
        "GET",
        INPUTS_PATH,
        list_inputs,
        Permission.EXECUTE,
        "The files of one source of an attempt's inputs",
        "executors",
        responses={200: InputFiles},
    ),
    Endpoint(
        "GET",
        INPUT_PATH.replace("{path}", "{path:.+}"),
        get_input,
        Permission.EXECUTE,
        "Download a file of an attempt's inputs",
        "executors",
        responses={200: None},
        response_content_type="application/octet-stream",
        bounded=False,
    ),
    Endpoint(
        "POST",
        COMPLETE_PATH,
        complete,
        Permission.EXECUTE,
        "Report an attempt's outcome",
        "executors",
        body=Completion,
        responses={204: None},
    ),
    Endpoint(
        "POST",
        RELEASE_PATH,
        release,
        Permission.EXECUTE,
        "Hand a task back",
        "executors",
        responses={204: None},
    ),
]

TASK_ENDPOINTS = [
    Endpoint(
        "GET",
        "/api/v1/tasks/{task_id}/logs",
        task_logs,
        Permission.READ,
        "A task attempt's output",
        "tasks",
        query=LogQuery,
        responses={200: None, 206: None},
        response_content_type="text/plain",
        bounded=False,
    ),
    Endpoint(
        "GET",
        "/api/v1/tasks/{task_id}/artifacts",
        list_artifacts,
        Permission.READ,
        "A task's artifacts",
        "tasks",
        responses={200: ArtifactList},
    ),
    Endpoint(
        "GET",
        "/api/v1/tasks/{task_id}/artifacts/{path:.+}",
        get_artifact,
        Permission.READ,
        "Download an artifact",
        "tasks",
        responses={200: None},
        response_content_type="application/octet-stream",
        bounded=False,
    ),
]
