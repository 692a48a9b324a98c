"""A wait on a channel listener that is cancelled ends, even when a notification wakes it
in the same moment. On Python 3.11 `asyncio.wait_for` returns the result instead
(cpython#86296): the event hub's task, cancelled as an append woke it, went on for ever
and a service's shutdown hung on it (seen as a test teardown that never ended)."""

from __future__ import annotations

import asyncio

import pytest

from eventlog.listener import ChannelListener


async def test_a_cancelled_wait_ends_even_when_woken_at_that_moment() -> None:
    for _ in range(100):
        listener = ChannelListener("postgresql://never-connected", "channel")
        waiter = asyncio.create_task(listener.wait(at_most=60))
        for _ in range(2):  # into the wait
            await asyncio.sleep(0)
        listener.wake()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
