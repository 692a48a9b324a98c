"""Following the event log over the websocket (`GET /api/v1/events/ws`), across
disconnects.

The server sends the stored events after `after` and then live ones, in position order,
with no gap and no duplicate. When the connection drops (a restart, the network, a server
closing it for any reason) the follower reconnects with backoff and asks again for what
follows the last position it handed out, so its caller sees every matching event exactly
once, in order, however often the connection breaks. A refusal (bad filter, bad token,
role) is an answer, not a failure: it is raised, not retried.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Final

import aiohttp
import msgspec

from runsvc.client.base import (
    ApiClient,
    ApiError,
    ConnectionFailed,
    InvalidResponse,
    RetryHook,
    RetryPolicy,
    error_from_response,
)
from runsvc.wire.api import EventOut

log = logging.getLogger("runsvc.client")

SUBSCRIBE_PATH: Final = "/api/v1/events/ws"
# Our pings find a dead connection (a vanished server, a silent network) even while no
# events flow; the server pings too, for the same reason on its side.
HEARTBEAT_S: Final = 30.0
# Statuses that are answers about the request itself; retrying cannot change them.
_TRANSIENT_4XX: Final = frozenset({408, 429})

_decoder = msgspec.json.Decoder(EventOut)


async def follow_events(
    api: ApiClient,
    *,
    after: int = 0,
    run: str | None = None,
    group: str | None = None,
    types: Sequence[str] = (),
    retry: RetryPolicy | None = None,
    on_retry: RetryHook | None = None,
    on_connect: Callable[[], None] | None = None,
) -> AsyncGenerator[EventOut, None]:
    """Matching events after position `after`, stored then live, each once and in
    position order, for as long as the caller reads. Break out of the loop (or
    `aclose()` the iterator) to stop; that closes the socket.

    Reconnects never give up: pauses follow `retry` (the client's policy by default),
    growing while attempts fail and starting over once events flow again. `on_retry`
    (the client's hook by default) hears of each reconnect before its pause;
    `on_connect` of each connection made, the first included, so that a caller that
    said the stream was lost can say it is back even when no event follows.
    Raises the typed `ApiError` of a refusal: 400 (a bad filter), 401, 403, 404.
    """
    policy = retry or api.retry
    hook = on_retry or api.on_retry
    position = after
    failures = 0
    while True:
        params = _query(position, run, group, types)
        try:
            async with asyncio.timeout(api.timeout_s):
                socket = await api.session.ws_connect(
                    api.base_url + SUBSCRIBE_PATH,
                    params=params,
                    heartbeat=HEARTBEAT_S,
                    # The server's events are as large as the runs they describe; a size
                    # cap here would refuse the same message on every reconnect.
                    max_msg_size=0,
                )
        except aiohttp.WSServerHandshakeError as exc:
            if 400 <= exc.status < 500 and exc.status not in _TRANSIENT_4XX:
                raise await _refusal(api, params, exc.status) from exc
            reason = f"upgrade answered {exc.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = str(exc) or type(exc).__name__
        else:
            try:
                reason = ""
                if on_connect is not None:
                    on_connect()
                async for message in socket:
                    if message.type is not aiohttp.WSMsgType.TEXT:
                        # An error on the connection (a missed pong, a reset); it is over.
                        reason = f"connection failed: {socket.exception() or message.type.name}"
                        break
                    event = _decode(message.data)
                    # Never hand out a position twice, whatever a server sends again.
                    if event.position <= position:
                        continue
                    position = event.position
                    failures = 0
                    yield event
                reason = reason or f"closed by the server (code {socket.close_code})"
            finally:
                await socket.close()
        failures += 1
        pause = policy.backoff(failures)
        log.info(
            "event stream interrupted; resuming",
            extra={
                "after": position,
                "reason": reason,
                "failures": failures,
                "pause_s": round(pause, 3),
            },
        )
        if hook is not None:
            hook(ConnectionFailed(reason), failures, pause)
        await asyncio.sleep(pause)


def _query(after: int, run: str | None, group: str | None, types: Sequence[str]) -> dict[str, str]:
    params = {"after": str(after)}
    if run is not None:
        params["run"] = run
    if group is not None:
        params["group"] = group
    if types:
        params["types"] = ",".join(types)
    return params


def _decode(text: str) -> EventOut:
    try:
        return _decoder.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidResponse(0, "invalid_response", f"unexpected event message: {exc}") from exc


async def _refusal(api: ApiClient, params: dict[str, str], status: int) -> ApiError:
    """The typed error of a refused upgrade, with the server's code and message.

    aiohttp drops the body of a failed handshake, so the same request is asked once more
    as a plain GET: the refusal (auth, role, query) comes before the upgrade, and the
    answer carries the error body. Should that answer differ, the error is the status's.
    """
    try:
        await api.request("GET", SUBSCRIBE_PATH, params=params)
    except ApiError as answer:
        if answer.status == status:
            return answer
    return error_from_response(status, None, b"")
