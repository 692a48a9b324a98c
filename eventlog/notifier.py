"""One LISTEN connection per process that tells readers when the log grew.

Appends send at most one `NOTIFY eventlog, '<head>'` per transaction. The notifier keeps
the highest head announced and wakes every waiting reader; readers then read the table.
Notifications carry no events, so one lost while the connection was down loses nothing:
on reconnect the head is read from the table and everyone is woken. While disconnected,
readers fall back to polling at a short interval.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg

from eventlog.appender import CONNECTION_ERRORS

CHANNEL = "eventlog"
_DISCONNECTED_POLL = 0.25


class Notifier:
    def __init__(self, dsn: str, *, poll_interval: float = 5.0) -> None:
        self._dsn = dsn
        self._poll_interval = poll_interval
        self.head = 0
        self._changed: asyncio.Future[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed()

    async def start(self) -> None:
        await self._connect()
        self._task = asyncio.create_task(self._supervise(), name="eventlog-notifier")

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
        self._wake()

    def observe(self, position: int) -> None:
        """A reader saw `position` committed; the head is at least that."""
        self.head = max(self.head, position)

    async def wait_beyond(self, position: int) -> None:
        """Return once the head is past `position`, or after the poll interval."""
        if self.head > position:
            return
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        timeout = self._poll_interval if self.connected else _DISCONNECTED_POLL
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._changed), timeout)

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.observe(int(payload))
        self._wake()

    def _on_lost(self, _connection: Any) -> None:
        self._lost.set()
        self._wake()

    async def _connect(self) -> None:
        connection = await asyncpg.connect(self._dsn)
        try:
            await connection.add_listener(CHANNEL, self._on_notify)
            connection.add_termination_listener(self._on_lost)
            # Read the head only after LISTEN is active: a commit between the two is then
            # either in this read or announced to the listener.
            self.observe(
                int(await connection.fetchval("SELECT coalesce(max(position), 0) FROM events"))
            )
        except BaseException:
            await connection.close()
            raise
        self._connection = connection
        self._lost.clear()
        self._wake()

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
