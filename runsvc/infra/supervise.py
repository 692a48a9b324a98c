"""Keeping the embedded servers up: a server that dies under a running service is started
again on the same data directory and address, so clients of the service see an outage
of seconds (503s that say so) rather than one that lasts until someone restarts it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

log = structlog.get_logger("runsvc")

CHECK_INTERVAL_S = 1.0
MAX_BACKOFF_S = 30.0


async def keep_alive(
    name: str,
    alive: Callable[[], bool],
    restart: Callable[[], Awaitable[object]],
    *,
    interval: float = CHECK_INTERVAL_S,
) -> None:
    """Check `alive` every `interval` seconds; when it says no, `restart`. A restart that
    fails is tried again, waiting twice as long each time (up to 30 s). Runs until
    cancelled."""
    delay = interval
    while True:
        await asyncio.sleep(delay)
        if await asyncio.to_thread(alive):
            delay = interval
            continue
        log.warning("embedded server is down; starting it again", server=name)
        try:
            await _uncancelled(restart())
        except Exception as exc:  # whatever the cause: log it, back off, try again
            delay = min(delay * 2, MAX_BACKOFF_S)
            log.error("embedded server did not start", server=name, error=str(exc), retry_s=delay)
            continue
        log.info("embedded server started again", server=name)
        delay = interval


async def _uncancelled(start: Awaitable[object]) -> None:
    """Await `start` to its end even when cancelled (then re-raise): a start runs in a
    worker thread that a cancellation does not stop, and would start the server after
    the owner, done cancelling its supervisor, stopped it."""
    starting = asyncio.ensure_future(start)
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await starting
        raise
