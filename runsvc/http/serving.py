"""Listening for connections: `runsvc serve`'s loop, with a cap on open connections.

aiohttp accepts every connection the kernel hands it, and each holds a file descriptor.
Past the process's descriptor limit nothing works any more, `/healthz` included, and every
failed accept logs a line. So connections are capped below that limit: at the cap, the
longest-open connection with no request in progress (an idle keep-alive, a client that
connected and said nothing) is closed to make room; when every connection is busy, the
newcomer gets a 503 and is closed. Idle connections are also closed after the keep-alive
timeout, much shorter than aiohttp's default."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from runsvc.http.keys import IN_FLIGHT
from runsvc.http.middleware import RETRY_AFTER_S
from runsvc.infra.logs import Throttled
from runsvc.infra.settings import Settings

# Descriptors kept for everything that is not a client connection: database pools and
# listeners, object storage, log files, the embedded servers' pipes.
RESERVED_DESCRIPTORS = 512


def connection_limit(wanted: int) -> int:
    """`wanted`, or fewer when the descriptor limit cannot hold that many; the soft limit
    is raised towards the hard one first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = wanted + RESERVED_DESCRIPTORS
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(1, min(wanted, soft - RESERVED_DESCRIPTORS))


_BUSY = (
    b'{"code":"unavailable","message":"the server is at its connection limit; try again",'
    b'"details":[]}'
)
_BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    + f"Retry-After: {RETRY_AFTER_S}\r\n".encode()
    + b"Connection: close\r\n"
    + f"Content-Length: {len(_BUSY)}\r\n\r\n".encode()
    + _BUSY
)


class _Refused(asyncio.Protocol):
    """A connection over the cap while every other one is busy: a 503, then closed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(_BUSY_RESPONSE)
        transport.close()


class ConnectionCap:
    """The protocol factory of the listening socket, in front of aiohttp's."""

    def __init__(self, server: web.Server, app: web.Application, limit: int) -> None:
        self._server = server
        self._in_flight = app[IN_FLIGHT]
        self.limit = limit
        self.evicted = 0
        self.refused = 0
        self._log = Throttled("runsvc.http", interval_s=10.0)

    @property
    def open_connections(self) -> int:
        return len(self._server.connections)

    def __call__(self) -> asyncio.BaseProtocol:
        connections = self._server.connections
        if len(connections) >= self.limit:
            idle = next(
                (
                    c
                    for c in connections
                    if c.transport is not None and id(c.transport) not in self._in_flight
                ),
                None,
            )
            if idle is None:
                self.refused += 1
                self._log.warning("connection refused: every connection is busy", limit=self.limit)
                return _Refused()
            idle.force_close()
            self.evicted += 1
        return self._server()


@contextlib.asynccontextmanager
async def listening(app: web.Application, settings: Settings) -> AsyncIterator[ConnectionCap]:
    """`app` started (its cleanup contexts entered) and accepting connections on the
    configured address; on exit, a graceful shutdown: no new connections, idle ones
    closed, open requests given `shutdown_grace_s`, then the app's resources closed."""
    runner = web.AppRunner(
        app,
        access_log=None,
        keepalive_timeout=settings.keepalive_timeout_s,
        shutdown_timeout=settings.shutdown_grace_s,
        handle_signals=False,
    )
    try:
        await runner.setup()
    except BaseException:
        # A resource that refused to start (the secrets' keys do not fit): close those
        # that did (the embedded servers), which the runner would not.
        await app.cleanup()
        raise
    try:
        assert runner.server is not None
        cap = ConnectionCap(runner.server, app, connection_limit(settings.max_connections))
        listener = await asyncio.get_running_loop().create_server(
            cap, settings.host, settings.port, backlog=1024, reuse_address=True
        )
        try:
            yield cap
        finally:
            listener.close()
    finally:
        await runner.cleanup()


class ThrottledLoopErrors:
    """The event loop's handler for errors nobody awaited (a failed accept when
    descriptors run out, a callback that raised): each distinct message logged at most
    once per interval, with a count of those held back."""

    def __init__(self) -> None:
        self._by_message: dict[str, Throttled] = {}

    def __call__(self, _loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        message = str(context.get("message", "event loop error"))
        throttled = self._by_message.get(message)
        if throttled is None:
            if len(self._by_message) > 1000:
                self._by_message.clear()
            throttled = self._by_message[message] = Throttled("runsvc.loop", interval_s=10.0)
        error = context.get("exception")
        throttled.warning(message, error=repr(error) if error is not None else None)
