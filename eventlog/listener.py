"""A LISTEN connection that wakes waiters when a channel is notified, and that survives a
dropped database connection (it reconnects with backoff and wakes everyone, since a
notification may have been missed meanwhile). Notifications only say *when* to look;
readers always read the tables, so a lost or coalesced notification loses nothing."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from eventlog.appender import CONNECTION_ERRORS

_DISCONNECTED_POLL = 0.25


class ChannelListener:
    def __init__(self, dsn: str, channel: str, *, poll_interval: float = 5.0) -> None:
        self._dsn = dsn
        self._channel = channel
        self._poll_interval = poll_interval
        self._changed: asyncio.Future[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    @property
    def server_pid(self) -> int | None:
        """The PostgreSQL backend listening for this process, while connected."""
        connection = self._connection
        if connection is None or connection.is_closed():
            return None
        return int(connection.get_server_pid())

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name=f"listen-{self._channel}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._connection is not None:
            with contextlib.suppress(*CONNECTION_ERRORS):
                await self._connection.close(timeout=2)
            self._connection = None
        self.wake()

    async def wait(self, at_most: float | None = None) -> None:
        """Return at the next notification, or after `at_most` seconds (by default the poll
        interval; shorter while disconnected, when polling is all there is)."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        limit = self._poll_interval if at_most is None else at_most
        if not self.connected:
            limit = min(limit, _DISCONNECTED_POLL)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for loses a cancellation that
        # arrives as the awaited future completes (cpython#86296), and a hub or runner
        # whose cancellation is lost never ends: a service's shutdown hung on it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(limit):
                await asyncio.shield(self._changed)

    def wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def on_payload(self, payload: str) -> None:
        """Subclasses read payloads here; the base only wakes waiters."""

    async def after_connect(self, connection: asyncpg.Connection) -> None:
        """Subclasses catch up here: it runs once LISTEN is active, so anything committed
        from now on is either seen here or notified."""

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.on_payload(payload)
        self.wake()

    def _on_lost(self, _connection: Any) -> None:
        self._lost.set()
        self.wake()

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        try:
            await connection.add_listener(self._channel, self._on_notify)
            connection.add_termination_listener(self._on_lost)
            await self.after_connect(connection)
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._lost.clear()
        self.wake()

    async def _supervise(self) -> None:
        delay = 0.05
        while True:
            await self._lost.wait()
            if self._connection is not None:
                self._connection.terminate()
                self._connection = None
            try:
                await self._connect()
            except CONNECTION_ERRORS:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                continue
            self.reconnects += 1
            delay = 0.05
