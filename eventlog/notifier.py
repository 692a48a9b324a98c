"""The log's listener: one per process, told the new head after every append transaction
(`NOTIFY eventlog, '<head>'`). It keeps the highest head announced and wakes readers,
which then read the table. On reconnect the head is read from the table."""

from __future__ import annotations

import contextlib

import asyncpg

from eventlog.listener import ChannelListener

CHANNEL = "eventlog"


class Notifier(ChannelListener):
    def __init__(self, dsn: str, *, poll_interval: float = 5.0) -> None:
        super().__init__(dsn, CHANNEL, poll_interval=poll_interval)
        self.head = 0

    def observe(self, position: int) -> None:
        """A reader saw `position` committed; the head is at least that."""
        self.head = max(self.head, position)

    async def wait_beyond(self, position: int) -> None:
        """Return once the head is past `position`, or after the poll interval."""
        if self.head > position:
            return
        await self.wait()

    def on_payload(self, payload: str) -> None:
        with contextlib.suppress(ValueError):
            self.observe(int(payload))

    async def after_connect(self, connection: asyncpg.Connection) -> None:
        head = await connection.fetchval("SELECT coalesce(max(position), 0) FROM events")
        self.observe(int(head))
