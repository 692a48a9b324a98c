"""Delivering webhooks: each active webhook is delivered by exactly one service process at a
time, the one holding its lease, in a task of its own.

A `WebhookManager` runs in every `runsvc serve` process. It looks at the webhooks table
when told something changed (`WEBHOOKS_CHANNEL`) and every few seconds besides, takes the
lease of every active webhook nobody holds (or whose lease expired), and starts a
`_Worker` for each. A worker reads the log after the webhook's checkpoint, POSTs each
matching event and moves the checkpoint only after a 2xx, so delivery is in position
order and at least once. A failed attempt is retried with exponential backoff until the
retry window is over; then the webhook turns `failing` and waits to be resumed. While it
delivers, the worker renews its lease; when the lease cannot be confirmed before it would
expire, the worker is cancelled (its checkpoint writes are fenced by the lease besides).
Workers wake on the log's notifications, so a new event goes out without polling.

A slow or dead receiver holds up its own worker only: the API and the other webhooks
go on (each attempt is bounded by the timeout; connections are not pooled per host).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import asyncpg
import structlog

from eventlog.listener import ChannelListener
from eventlog.records import RecordedEvent
from eventlog.store import EventStore
from runsvc.service import webhooks
from runsvc.service.event_view import event_json

log = structlog.get_logger("runsvc.webhooks")

FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 300.0
PAGE = 100
# Database failures a worker or the manager outlives: they retry at their next look.
_DATABASE_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)


class _Stop(Exception):
    """The worker must stop: its lease is lost, or the webhook turned failing."""


def _now() -> datetime:
    return datetime.now(UTC)


def sign(secret: str, body: bytes) -> str:
    """The `X-Runsvc-Signature` of a body: `sha256=` and the hex HMAC-SHA256 of its bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class _Lag:
    events: float = 0.0
    seconds: float = 0.0


@dataclass
class WebhookManager:
    store: EventStore
    dsn: str
    timeout_s: float = 10.0
    retry_for_s: float = 86400.0
    lease_s: float = 30.0
    scan_interval_s: float = 2.0
    clock: Callable[[], datetime] = _now
    owner: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    # Attempts by outcome (delivered, rejected, timeout, error), since this process started.
    outcomes: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._workers: dict[str, _Worker] = {}
        self._listener = ChannelListener(
            self.dsn, webhooks.WEBHOOKS_CHANNEL, poll_interval=self.scan_interval_s
        )
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        return self.store.pool

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None
        return self._session

    def lags(self) -> dict[str, _Lag]:
        """How far behind each webhook this process delivers is."""
        head = self.store.notifier.head
        return {
            worker.id: _Lag(max(0, head - worker.position), worker.pending_seconds())
            for worker in self._workers.values()
        }

    async def start(self) -> None:
        # No connection limit: each webhook has at most one request out, and one hung
        # receiver must not hold a place another webhook's delivery waits for.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            headers={"User-Agent": "runsvc-webhooks"},
            auto_decompress=False,
        )
        await self._listener.start()
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def close(self) -> None:
        if self._task is not None:
            await _cancel(self._task)
        await asyncio.gather(*(_cancel(w.task) for w in self._workers.values() if w.task))
        self._workers.clear()
        with contextlib.suppress(*_DATABASE_ERRORS):
            await webhooks.release_leases(self.pool, self.owner)
        await self._listener.close()
        if self._session is not None:
            await self._session.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.scan()
            except _DATABASE_ERRORS as exc:
                log.warning("webhooks: could not look at the webhooks", error=str(exc))
            await self._listener.wait()

    async def scan(self) -> None:
        """Stop workers whose webhook is gone, failing or someone else's; start workers
        for the webhooks whose lease this process takes now."""
        for webhook_id, worker in list(self._workers.items()):
            if worker.task is not None and worker.task.done():
                del self._workers[webhook_id]
        current = await webhooks.states(self.pool)
        for webhook_id, worker in list(self._workers.items()):
            state, owner = current.get(webhook_id, ("gone", None))
            if state != "active" or owner != self.owner:
                del self._workers[webhook_id]
                if worker.task is not None:
                    await _cancel(worker.task)
        taken = await webhooks.take_leases(
            self.pool, self.owner, self.lease_s, running=self._workers
        )
        for leased in taken:
            worker = _Worker(self, leased)
            worker.task = asyncio.create_task(worker.run(), name=f"webhook-{leased.id}")
            self._workers[leased.id] = worker
            log.info("webhooks: delivering", webhook=leased.id, position=leased.position)


async def _cancel(task: asyncio.Task[None]) -> None:
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


class _Worker:
    """Delivers one webhook while this process holds its lease."""

    def __init__(self, manager: WebhookManager, leased: webhooks.Leased) -> None:
        self.manager = manager
        self.leased = leased
        self.id = leased.id
        self.position = leased.position
        self.attempts = leased.attempts
        self.failing_since = leased.failing_since
        self.task: asyncio.Task[None] | None = None
        self.pending: RecordedEvent | None = None
        self._recorded = 0
        # Until when (monotonic clock) the lease is surely ours: its renewal began then
        # plus its length, less a margin for the clocks' rates.
        self._valid_until = time.monotonic() + manager.lease_s * 0.9

    def pending_seconds(self) -> float:
        if self.pending is None:
            return 0.0
        age = self.manager.clock() - self.pending.meta.recorded_at
        return max(0.0, age.total_seconds())

    async def run(self) -> None:
        renewer = asyncio.create_task(self._renew(), name=f"webhook-lease-{self.id}")
        deliverer = asyncio.create_task(self._deliver_all(), name=f"webhook-send-{self.id}")
        try:
            done, _ = await asyncio.wait({renewer, deliverer}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception()
                if error is not None and not isinstance(error, _Stop):
                    log.warning("webhooks: delivery stopped", webhook=self.id, error=repr(error))
        finally:
            for task in (renewer, deliverer):
                await _cancel(task)

    async def _renew(self) -> None:
        """Renew the lease every third of its length; return (ending the delivery) once it
        is lost, or when it could not be renewed before it would expire."""
        manager = self.manager
        while True:
            await asyncio.sleep(manager.lease_s / 3)
            started = time.monotonic()
            try:
                held = await asyncio.wait_for(
                    webhooks.renew_lease(manager.pool, self.id, manager.owner, manager.lease_s),
                    timeout=max(0.1, self._valid_until - started),
                )
            except (*_DATABASE_ERRORS, TimeoutError) as exc:
                if time.monotonic() >= self._valid_until:
                    log.warning("webhooks: lease not renewed in time", webhook=self.id)
                    return
                log.warning("webhooks: lease renewal failed", webhook=self.id, error=str(exc))
                continue
            if not held:
                log.info("webhooks: lease lost", webhook=self.id)
                return
            self._valid_until = started + manager.lease_s * 0.9

    async def _deliver_all(self) -> None:
        manager = self.manager
        store = manager.store
        selection = self.leased.selection
        log_filter = selection.filter()
        while True:
            seen_head = store.notifier.head
            page = await store.read_all(after=self.position, limit=PAGE, filter=log_filter)
            for event in page.events:
                if selection.matches(event):
                    await self._deliver(event)
                    self.position = event.position
            if page.next_after > self.position:
                if not await webhooks.skip_to(
                    manager.pool, self.id, manager.owner, page.next_after
                ):
                    raise _Stop
                self.position = page.next_after
            store.notifier.observe(self.position)
            if self.position >= seen_head:
                await store.notifier.wait_beyond(self.position)

    async def _deliver(self, event: RecordedEvent) -> None:
        """POST the event until a 2xx, then move the checkpoint to it."""
        manager = self.manager
        body = event_json(event)
        headers = {
            "Content-Type": "application/json",
            "X-Runsvc-Signature": sign(self.leased.secret, body),
            "X-Runsvc-Event": event.type,
            "X-Runsvc-Delivery": str(event.position),
        }
        timeout = aiohttp.ClientTimeout(total=manager.timeout_s)
        self.pending = event
        while True:
            if time.monotonic() >= self._valid_until:
                raise _Stop
            at = manager.clock()
            started = time.monotonic()
            status: int | None = None
            error: str | None = None
            try:
                async with manager.session.post(
                    self.leased.url,
                    data=body,
                    headers=headers,
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    status = response.status
                outcome = "delivered" if 200 <= status < 300 else "rejected"
                if outcome == "rejected":
                    error = f"the receiver answered {status}"
            except TimeoutError:
                outcome, error = "timeout", f"no answer within {manager.timeout_s:g} s"
            except aiohttp.ClientError as exc:
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
            latency_ms = (time.monotonic() - started) * 1000
            manager.outcomes[outcome] += 1
            attempt = webhooks.Attempt(
                position=event.position,
                event_type=event.type,
                attempt=self.attempts + 1,
                at=at,
                outcome=outcome,
                latency_ms=round(latency_ms, 3),
                status_code=status,
                error=error,
            )
            held, failing_since = await webhooks.record(
                manager.pool, self.id, manager.owner, attempt
            )
            if not held:
                raise _Stop
            self._recorded += 1
            if self._recorded % 100 == 0:
                await webhooks.trim_deliveries(manager.pool, self.id)
            if outcome == "delivered":
                self.attempts = 0
                self.failing_since = None
                self.pending = None
                return
            self.attempts += 1
            self.failing_since = failing_since
            since = failing_since or at
            elapsed = (manager.clock() - since).total_seconds()
            if elapsed >= manager.retry_for_s:
                log.warning(
                    "webhooks: retries exhausted, the webhook is failing",
                    webhook=self.id,
                    position=event.position,
                    error=error,
                )
                await webhooks.mark_failing(manager.pool, self.id, manager.owner)
                raise _Stop
            backoff = min(MAX_BACKOFF_S, FIRST_BACKOFF_S * 2 ** min(self.attempts - 1, 20))
            await asyncio.sleep(min(backoff, manager.retry_for_s - elapsed))
