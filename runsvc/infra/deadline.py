"""Waiting for work that may never finish: a hung database or object store.

`asyncio.timeout` is not enough there. It cancels the work and then waits for the work to
end, and a query cancelled on a hung PostgreSQL does not end: asyncpg's pool waits for the
server to acknowledge the cancellation before it takes the connection back. So the work
runs as a task of its own, which is cancelled and left to finish by itself."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import structlog

T = TypeVar("T")

log = structlog.get_logger("runsvc")


class NoAnswer(TimeoutError):
    """The work did not finish within its limit."""


async def finish_within(limit: float, work: Awaitable[T]) -> T:
    """The result of `work`, or NoAnswer after `limit` seconds without waiting for the
    cancelled work to wind down."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=limit)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    task.cancel()
    task.add_done_callback(_ended_late)
    raise NoAnswer(f"no answer within {limit:g} s")


def _ended_late(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("work ended after its deadline", error=repr(task.exception()))
