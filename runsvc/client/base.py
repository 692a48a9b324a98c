"""The typed HTTP client core: one aiohttp session, a base URL and a bearer token; JSON in
and out through msgspec; every failure as an `ApiError` subclass.

Retries are only ever automatic for calls that are safe to repeat: GET/HEAD/OPTIONS, and
calls the caller marks `idempotent` because the protocol makes a repeat harmless (a log
chunk names its offset, a completion repeated is answered the same). A POST that creates
something is never repeated behind the caller's back: if its answer is lost, the caller
decides. Only transient failures are retried (no connection, timeouts, 5xx, 429); a 4xx is
an answer and retrying cannot change it.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Final, Self, TypeVar

import aiohttp
import msgspec
from yarl import URL

from runsvc.wire.api import ErrorBody, Problem

T = TypeVar("T")

log = logging.getLogger("runsvc.client")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})


class ApiError(Exception):
    """The service refused the request or could not be reached.

    `status` is the HTTP status (0 when no answer came at all), `code` and `message` come
    from the API's error body, `details` lists validation problems with their paths.
    """

    def __init__(
        self, status: int, code: str, message: str, details: Sequence[Problem] = ()
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message
        self.details = list(details)


class BadRequestError(ApiError):
    """400: the request is malformed or invalid."""


class UnauthorizedError(ApiError):
    """401: the token is missing or unknown."""


class ForbiddenError(ApiError):
    """403: the token's role may not do this."""


class NotFoundError(ApiError):
    """404: no such resource or route."""


class ConflictError(ApiError):
    """409: the action does not fit the current state."""


class TooLargeError(ApiError):
    """413: the body is over the server's limit."""


class ServerError(ApiError):
    """5xx: the server failed or is unavailable; worth retrying for safe calls."""


class ConnectionFailed(ApiError):
    """No answer: the connection was refused or dropped, or the request timed out."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "connection_failed", message)


class InvalidResponse(ApiError):
    """The server answered, but not with what the protocol says it answers."""


_ERRORS: Final[dict[int, type[ApiError]]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: TooLargeError,
}
_FALLBACK_CODES: Final = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    500: "internal",
}
_error_decoder = msgspec.json.Decoder(ErrorBody)


def error_from_response(status: int, reason: str | None, body: bytes) -> ApiError:
    """The typed error for an error answer, from its JSON error body; when the body is not
    one (a proxy's HTML page, an empty 502), from the status and its text."""
    error_type = _ERRORS.get(status) or (ServerError if status >= 500 else ApiError)
    try:
        parsed = _error_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        try:
            phrase = reason or HTTPStatus(status).phrase
        except ValueError:
            phrase = f"HTTP {status}"
        return error_type(status, _FALLBACK_CODES.get(status, f"http_{status}"), phrase)
    return error_type(status, parsed.code, parsed.message, parsed.details)


@dataclass(frozen=True)
class RetryPolicy:
    """How safe calls are retried: exponential backoff with jitter (so that many clients
    coming back after an outage do not arrive in lockstep), capped; `attempts` bounds the
    tries of a call that has no deadline of its own."""

    attempts: int = 4
    first_backoff_s: float = 0.2
    max_backoff_s: float = 5.0
    factor: float = 2.0

    def backoff(self, failures: int) -> float:
        """The pause after the `failures`-th failed try: between half and all of the
        exponential step."""
        step = min(self.max_backoff_s, self.first_backoff_s * self.factor ** (failures - 1))
        return step / 2 + random.uniform(0, step / 2)


RetryHook = Callable[[ApiError, int, float], None]
"""Called before each automatic retry with the error, the number of failed tries so far
and the pause about to be taken."""


@dataclass(frozen=True)
class Response:
    """A successful (status < 400) answer, body read."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def decode(self, type_: type[T]) -> T:
        """The JSON body as `type_`; `InvalidResponse` when it is not one."""
        try:
            return msgspec.json.decode(self.body, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise InvalidResponse(
                self.status, "invalid_response", f"unexpected response body: {exc}"
            ) from exc


Body = bytes | str | Path
"""A raw request body: bytes, text (sent as UTF-8), or a file streamed from disk (opened
again on every try, so a retried upload sends the whole file)."""

_encoder = msgspec.json.Encoder()


class ApiClient:
    """An async client of the runsvc HTTP API.

        async with ApiClient("http://127.0.0.1:8080", token) as client:
            run = await client.call("GET", f"/api/v1/runs/{run_id}", into=RunOut)

    `timeout_s` bounds each try of a request (connecting, sending and reading the answer).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 30.0,
        retry: RetryPolicy | None = None,
        user_agent: str = "runsvc-client",
        on_retry: RetryHook | None = None,
    ) -> None:
        base = URL(base_url)
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.base_url = str(base).rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._headers = {"User-Agent": user_agent}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.on_retry = on_retry
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(headers=self._headers)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The open session (with the token in its headers), for streams and websockets."""
        if self._session is None:
            raise RuntimeError("ApiClient is not open; use `async with ApiClient(...)`")
        return self._session

    async def close(self) -> None:
        """Close the session and its connections."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(
        self,
        method: str,
        path: str,
        *,
        into: type[T],
        json: object = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = False,
        deadline: float | None = None,
    ) -> T:
        """A JSON request whose answer has a JSON body, decoded as `into`."""
        response = await self.request(
            method, path, json=json, params=params, idempotent=idempotent, deadline=deadline
        )
        return response.decode(into)

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: object = None,
        content: Body | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        idempotent: bool = False,
        deadline: float | None = None,
        timeout_s: float | None = None,
    ) -> Response:
        """Send one request (`path` already percent-encoded) and return its successful
        answer; raise the typed `ApiError` for anything else.

        Transient failures are retried when the method is safe or `idempotent` is set: until
        `deadline` (a `time.monotonic()` value after which no new try starts) when one is
        given, otherwise for `retry.attempts` tries in all. With a deadline each try's
        timeout is also cut to the time left (but at least a second).
        """
        retryable = idempotent or method.upper() in SAFE_METHODS
        send_headers = dict(headers or {})
        if json is not None:
            content = _encoder.encode(json)
            content_type = "application/json"
        if content_type is not None:
            send_headers["Content-Type"] = content_type
        outgoing = _Outgoing(
            method=method,
            url=URL(self.base_url + path, encoded=True),
            content=content.encode() if isinstance(content, str) else content,
            headers=send_headers,
            params=params,
        )
        failures = 0
        while True:
            per_try = timeout_s or self.timeout_s
            if deadline is not None:
                per_try = min(per_try, max(deadline - time.monotonic(), 1.0))
            try:
                return await self._send_once(outgoing, per_try)
            except (ConnectionFailed, ServerError) as exc:
                error: ApiError = exc
            except ApiError as exc:
                if exc.status != 429:
                    raise
                error = exc
            failures += 1
            pause = self.retry.backoff(failures)
            out_of_tries = (
                failures >= self.retry.attempts
                if deadline is None
                else time.monotonic() + pause >= deadline
            )
            if not retryable or out_of_tries:
                raise error
            log.info(
                "retrying request",
                extra={
                    "method": method,
                    "path": outgoing.url.path,
                    "error": str(error),
                    "failures": failures,
                    "pause_s": round(pause, 3),
                },
            )
            if self.on_retry is not None:
                self.on_retry(error, failures, pause)
            await asyncio.sleep(pause)

    async def _send_once(self, outgoing: _Outgoing, timeout_s: float) -> Response:
        session = self._session
        if session is None:
            raise RuntimeError("ApiClient is not open; use `async with ApiClient(...)`")
        try:
            if isinstance(outgoing.content, Path):
                with outgoing.content.open("rb") as stream:
                    return await _exchange(session, outgoing, stream, timeout_s)
            return await _exchange(session, outgoing, outgoing.content, timeout_s)
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
            if isinstance(exc, TimeoutError):
                reason = f"no answer within {timeout_s:g}s"
            raise ConnectionFailed(f"{outgoing.method} {outgoing.url.path}: {reason}") from exc


@dataclass(frozen=True)
class _Outgoing:
    """A request as prepared once and sent on every try."""

    method: str
    url: URL
    content: bytes | Path | None
    headers: Mapping[str, str]
    params: Mapping[str, str] | None


async def _exchange(
    session: aiohttp.ClientSession, outgoing: _Outgoing, data: object, timeout_s: float
) -> Response:
    async with session.request(
        outgoing.method,
        outgoing.url,
        data=data,
        headers=outgoing.headers,
        params=outgoing.params,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    ) as answer:
        body = await answer.read()
        if answer.status >= 400:
            raise error_from_response(answer.status, answer.reason, body)
        return Response(answer.status, answer.headers, body)
