"""Webhooks: their configuration, checkpoints, leases and recent deliveries, and every
statement on the `webhooks` and `webhook_deliveries` tables.

A webhook is a checkpointed consumer of the log (`runsvc.service.webhook_delivery` does the
delivering). Its row lives beside the log, not in it, because the signing secret must never
reach the log; the secret is stored as given (encrypting secrets at rest is a later
change) and read only by the process delivering the webhook.

The checkpoint (`position`) and the attempt bookkeeping move only under the delivering
process's lease: every such statement names the owner and requires the lease to be
unexpired, so a process that lost its lease (paused, partitioned, taken over) cannot move
the checkpoint. Create, delete and resume announce themselves on `WEBHOOKS_CHANNEL` so that
every process looks at the table at once instead of at its next poll.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import socket
from collections.abc import Iterable
from datetime import datetime
from urllib.parse import urlsplit

import asyncpg
import msgspec

from eventlog.filter import EventFilter
from eventlog.records import RecordedEvent
from eventlog.store import EventStore
from runsvc.domain.errors import BadRequest, Problem
from runsvc.domain.events import KNOWN_TYPES, RunPhaseChanged, TaskStatusChanged
from runsvc.domain.fold import TERMINAL_PHASES
from runsvc.domain.validation import valid_group
from runsvc.wire.webhooks import CreateWebhookRequest, Delivery, WebhookLease

WEBHOOKS_CHANNEL = "runsvc_webhooks"

# Sets of events a webhook may ask for by one name.
RUN_FINISHED = "run_finished"  # run_phase_changed to finished, cancelled or setuperror
APPROVAL_WAITING = "approval_waiting"  # task_status_changed to waiting_approval
ALL = "all"
SHORTHANDS = (RUN_FINISHED, APPROVAL_WAITING, ALL)

MAX_URL = 2000
MIN_SECRET, MAX_SECRET = 16, 1000
MAX_TYPES = 50
# Attempts kept per webhook; older ones are deleted as new ones are recorded.
KEEP_DELIVERIES = 500
MAX_ERROR = 500


class Selection(msgspec.Struct, frozen=True):
    """Which events a webhook delivers: those of runs in `group` (or below it) whose type
    is one of `types` (names or shorthands)."""

    group: str
    types: tuple[str, ...]

    def filter(self) -> EventFilter:
        """What the log can select in SQL: a superset of `matches` (the shorthands also
        look at the event's payload)."""
        if ALL in self.types:
            names = None
        else:
            mapped = {
                RUN_FINISHED: "run_phase_changed",
                APPROVAL_WAITING: "task_status_changed",
            }
            names = frozenset(mapped.get(t, t) for t in self.types)
        return EventFilter(types=names, scope=None if self.group == "/" else self.group)

    def matches(self, event: RecordedEvent) -> bool:
        if not self.filter().matches(event):
            return False
        if ALL in self.types or event.type in self.types:
            return True
        payload = event.event
        if RUN_FINISHED in self.types and isinstance(payload, RunPhaseChanged):
            return payload.phase in TERMINAL_PHASES
        if APPROVAL_WAITING in self.types and isinstance(payload, TaskStatusChanged):
            return payload.status == "waiting_approval"
        return False


class WebhookRow(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook as stored, without its secret."""

    id: str
    url: str
    group: str
    types: list[str]
    created_by: str
    created_at: datetime
    state: str
    position: int
    attempts: int
    failing_since: datetime | None
    last_error: str | None
    last_delivered_at: datetime | None
    lease: WebhookLease | None

    @property
    def selection(self) -> Selection:
        return Selection(self.group, tuple(self.types))


class Leased(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook this process has just taken the lease of: what delivering it needs."""

    id: str
    url: str
    secret: str
    selection: Selection
    position: int
    attempts: int
    failing_since: datetime | None


_COLUMNS = (
    "id, url, group_prefix, types, created_by, created_at, state, position, attempts,"
    " failing_since, last_error, last_delivered_at, lease_owner, lease_expires_at"
)


def _row(row: asyncpg.Record) -> WebhookRow:
    lease = None
    if row["lease_owner"] is not None and row["lease_expires_at"] is not None:
        lease = WebhookLease(owner=row["lease_owner"], expires_at=row["lease_expires_at"])
    return WebhookRow(
        id=row["id"],
        url=row["url"],
        group=row["group_prefix"],
        types=list(row["types"]),
        created_by=row["created_by"],
        created_at=row["created_at"],
        state=row["state"],
        position=row["position"],
        attempts=row["attempts"],
        failing_since=row["failing_since"],
        last_error=row["last_error"],
        last_delivered_at=row["last_delivered_at"],
        lease=lease,
    )


# -- checking a create request


async def check_request(
    request: CreateWebhookRequest, *, head: int, own: Iterable[tuple[str, int]]
) -> list[str]:
    """The request's types, deduplicated in order; a BadRequest listing every problem.
    `own` are the (host, port) pairs this service listens on: a URL that leads back to
    one of them is refused (a webhook would POST its own events to the service)."""
    problems: list[Problem] = []
    problems += await check_url(request.url, own)
    if not MIN_SECRET <= len(request.secret) <= MAX_SECRET:
        problems.append(
            Problem(
                path="secret",
                message=f"{MIN_SECRET}-{MAX_SECRET} characters (e.g. 32 random bytes in hex)",
            )
        )
    if not valid_group(request.group):
        problems.append(
            Problem(path="group", message="an absolute path of names, like /org/project")
        )
    types: list[str] = []
    if not request.types:
        problems.append(Problem(path="types", message="at least one type"))
    if len(request.types) > MAX_TYPES:
        problems.append(Problem(path="types", message=f"at most {MAX_TYPES} types"))
    known = sorted(KNOWN_TYPES)
    for index, name in enumerate(request.types):
        if name not in KNOWN_TYPES and name not in SHORTHANDS:
            problems.append(
                Problem(
                    path=f"types[{index}]",
                    message=f"unknown type {name!r}: one of {', '.join([*SHORTHANDS, *known])}",
                )
            )
        elif name not in types:
            types.append(name)
    if request.after is not None and request.after > head:
        problems.append(Problem(path="after", message=f"beyond the head of the log ({head})"))
    if problems:
        raise BadRequest(f"invalid webhook: {problems[0].path}: {problems[0].message}", problems)
    return types


async def check_url(url: str, own: Iterable[tuple[str, int]]) -> list[Problem]:
    def problem(message: str) -> list[Problem]:
        return [Problem(path="url", message=message)]

    if len(url) > MAX_URL:
        return problem(f"at most {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return problem(f"not a URL: {exc}")
    if parts.scheme not in ("http", "https"):
        return problem("an http or https URL")
    if not parts.hostname:
        return problem("a URL with a host")
    if parts.username is not None or parts.password is not None:
        # The URL is shown in every answer about the webhook; credentials belong in the secret.
        return problem("no credentials in the URL: the receiver checks the signature instead")
    if any(c.isspace() for c in url):
        return problem("no whitespace")
    port = port or (443 if parts.scheme == "https" else 80)
    if port == 0:
        return problem("a port between 1 and 65535")
    try:
        addresses = await _addresses(parts.hostname, port)
    except OSError as exc:
        return problem(f"the host {parts.hostname} does not resolve: {exc}")
    for host, own_port in own:
        if own_port != port:
            continue
        try:
            own_addresses = await _addresses(host, port)
        except OSError:
            own_addresses = set()
        for address in addresses:
            if _local(address) or address in own_addresses:
                return problem(f"this service itself listens at {parts.hostname}:{port}")
    return []


async def _addresses(host: str, port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            found.add(address.ipv4_mapped)
        found.add(address)
    return found


def _local(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address that reaches this machine whatever interface the service listens on."""
    return address.is_loopback or address.is_unspecified


# -- managing


async def create(
    pool: asyncpg.Pool,
    request: CreateWebhookRequest,
    types: list[str],
    *,
    created_by: str,
    position: int,
    now: datetime,
) -> WebhookRow:
    webhook_id = "wh_" + secrets.token_hex(8)
    row = await pool.fetchrow(
        f"""
        WITH created AS (
            INSERT INTO webhooks (id, url, group_prefix, types, secret, created_by, created_at,
                                  position)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            RETURNING {_COLUMNS}
        )
        SELECT *, pg_notify($9, id) FROM created
        """,
        webhook_id,
        request.url,
        request.group,
        types,
        request.secret,
        created_by,
        now,
        position,
        WEBHOOKS_CHANNEL,
    )
    assert row is not None
    return _row(row)


async def get(pool: asyncpg.Pool, webhook_id: str) -> WebhookRow | None:
    row = await pool.fetchrow(f"SELECT {_COLUMNS} FROM webhooks WHERE id = $1", webhook_id)
    return None if row is None else _row(row)


async def list_all(pool: asyncpg.Pool) -> list[WebhookRow]:
    rows = await pool.fetch(f"SELECT {_COLUMNS} FROM webhooks ORDER BY created_at, id")
    return [_row(row) for row in rows]


async def delete(pool: asyncpg.Pool, webhook_id: str) -> bool:
    """Delete a webhook and its deliveries; False when there is none. The process
    delivering it stops at its next look at the table (told at once)."""
    deleted = await pool.fetchval(
        "WITH gone AS (DELETE FROM webhooks WHERE id = $1 RETURNING id)"
        " SELECT count(*) FROM (SELECT pg_notify($2, id) FROM gone) AS told",
        webhook_id,
        WEBHOOKS_CHANNEL,
    )
    return bool(deleted)


async def resume(pool: asyncpg.Pool, webhook_id: str) -> WebhookRow | None:
    """Make a failing webhook active again from its checkpoint (the event it could not
    deliver comes first), with a fresh retry window. An active one is left as it is."""
    async with pool.acquire() as connection, connection.transaction():
        row = await connection.fetchrow(
            f"""
            UPDATE webhooks
            SET state = 'active', attempts = 0, failing_since = NULL,
                lease_owner = NULL, lease_expires_at = NULL
            WHERE id = $1 AND state = 'failing'
            RETURNING {_COLUMNS}
            """,
            webhook_id,
        )
        if row is not None:
            await connection.execute("SELECT pg_notify($1, $2)", WEBHOOKS_CHANNEL, webhook_id)
            return _row(row)
    return await get(pool, webhook_id)


async def deliveries(pool: asyncpg.Pool, webhook_id: str, limit: int) -> list[Delivery]:
    rows = await pool.fetch(
        "SELECT position, event_type, attempt, at, outcome, latency_ms, status_code, error"
        " FROM webhook_deliveries WHERE webhook_id = $1 ORDER BY id DESC LIMIT $2",
        webhook_id,
        limit,
    )
    return [
        Delivery(
            position=r["position"],
            event_type=r["event_type"],
            attempt=r["attempt"],
            at=r["at"],
            outcome=r["outcome"],
            latency_ms=r["latency_ms"],
            status_code=r["status_code"],
            error=r["error"],
        )
        for r in rows
    ]


# -- delivering (under a lease)


async def states(pool: asyncpg.Pool) -> dict[str, tuple[str, str | None]]:
    """Every webhook's state and lease owner: what a delivery manager compares its
    workers against."""
    rows = await pool.fetch("SELECT id, state, lease_owner FROM webhooks")
    return {row["id"]: (row["state"], row["lease_owner"]) for row in rows}


async def take_leases(
    pool: asyncpg.Pool, owner: str, lease_s: float, *, running: Iterable[str]
) -> list[Leased]:
    """Take the lease of every active webhook that nobody holds (or whose lease expired,
    or that `owner` holds but runs no worker for), for `lease_s` seconds."""
    rows = await pool.fetch(
        """
        UPDATE webhooks
        SET lease_owner = $1, lease_expires_at = now() + make_interval(secs => $2)
        WHERE state = 'active' AND NOT (id = ANY($3))
          AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < now())
        RETURNING id, url, secret, group_prefix, types, position, attempts, failing_since
        """,
        owner,
        lease_s,
        list(running),
    )
    return [
        Leased(
            id=row["id"],
            url=row["url"],
            secret=row["secret"],
            selection=Selection(row["group_prefix"], tuple(row["types"])),
            position=row["position"],
            attempts=row["attempts"],
            failing_since=row["failing_since"],
        )
        for row in rows
    ]


async def renew_lease(pool: asyncpg.Pool, webhook_id: str, owner: str, lease_s: float) -> bool:
    """Extend the lease; False when `owner` no longer holds it (taken over, deleted,
    failing)."""
    renewed = await pool.fetchval(
        "UPDATE webhooks SET lease_expires_at = now() + make_interval(secs => $3)"
        " WHERE id = $1 AND lease_owner = $2 AND state = 'active' RETURNING true",
        webhook_id,
        owner,
        lease_s,
    )
    return bool(renewed)


async def release_leases(pool: asyncpg.Pool, owner: str) -> None:
    """On shutdown: give every lease `owner` holds back, and say so, so that another
    process takes the webhooks over now rather than when the leases expire."""
    await pool.execute(
        "WITH released AS (UPDATE webhooks SET lease_owner = NULL, lease_expires_at = NULL"
        " WHERE lease_owner = $1 RETURNING id) SELECT pg_notify($2, id) FROM released",
        owner,
        WEBHOOKS_CHANNEL,
    )


_FENCE = "id = $1 AND lease_owner = $2 AND lease_expires_at > now() AND state = 'active'"


async def skip_to(pool: asyncpg.Pool, webhook_id: str, owner: str, position: int) -> bool:
    """Move the checkpoint over events that do not match; False when the lease is lost."""
    moved = await pool.fetchval(
        f"UPDATE webhooks SET position = greatest(position, $3) WHERE {_FENCE} RETURNING true",
        webhook_id,
        owner,
        position,
    )
    return bool(moved)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_type: str
    attempt: int
    at: datetime
    outcome: str
    latency_ms: float
    status_code: int | None = None
    error: str | None = None


async def record(
    pool: asyncpg.Pool, webhook_id: str, owner: str, attempt: Attempt
) -> tuple[bool, datetime | None]:
    """Record an attempt: a delivered one moves the checkpoint to its event and ends a
    streak of failures; a failed one counts towards the streak. Returns whether the lease
    was still held (if not, nothing was recorded) and when the streak began."""
    delivered = attempt.outcome == "delivered"
    row = await pool.fetchrow(
        f"""
        WITH updated AS (
            UPDATE webhooks SET
                position = CASE WHEN $3 THEN greatest(position, $4) ELSE position END,
                attempts = CASE WHEN $3 THEN 0 ELSE attempts + 1 END,
                failing_since = CASE WHEN $3 THEN NULL ELSE coalesce(failing_since, $6) END,
                last_error = CASE WHEN $3 THEN last_error ELSE $11 END,
                last_delivered_at = CASE WHEN $3 THEN $6 ELSE last_delivered_at END
            WHERE {_FENCE}
            RETURNING id, failing_since
        ), recorded AS (
            INSERT INTO webhook_deliveries (webhook_id, position, event_type, attempt, at,
                                            outcome, latency_ms, status_code, error)
            SELECT id, $4, $5, $7, $6, $8, $9, $10, $11 FROM updated
        )
        SELECT failing_since FROM updated
        """,
        webhook_id,
        owner,
        delivered,
        attempt.position,
        attempt.event_type,
        attempt.at,
        attempt.attempt,
        attempt.outcome,
        attempt.latency_ms,
        attempt.status_code,
        None if attempt.error is None else attempt.error[:MAX_ERROR],
    )
    if row is None:
        return False, None
    return True, row["failing_since"]


async def mark_failing(pool: asyncpg.Pool, webhook_id: str, owner: str) -> bool:
    """The retry window is over: stop delivering until resumed, and give the lease up."""
    marked = await pool.fetchval(
        f"UPDATE webhooks SET state = 'failing', lease_owner = NULL, lease_expires_at = NULL"
        f" WHERE {_FENCE} RETURNING true",
        webhook_id,
        owner,
    )
    return bool(marked)


async def trim_deliveries(pool: asyncpg.Pool, webhook_id: str) -> None:
    """Keep the newest `KEEP_DELIVERIES` attempts of a webhook."""
    await pool.execute(
        """
        DELETE FROM webhook_deliveries WHERE webhook_id = $1 AND id <= (
            SELECT id FROM webhook_deliveries WHERE webhook_id = $1
            ORDER BY id DESC OFFSET $2 LIMIT 1
        )
        """,
        webhook_id,
        KEEP_DELIVERIES,
    )


# -- showing


async def lag_of(
    store: EventStore, row: WebhookRow, *, head: int, now: datetime
) -> tuple[int, float]:
    """Log positions between the checkpoint and the head, and the age in seconds of the
    oldest matching event not yet delivered (0 when there is none)."""
    events = max(0, head - row.position)
    if not events:
        return 0, 0.0
    selection = row.selection
    page = await store.read_all(after=row.position, limit=100, filter=selection.filter())
    first = next((e for e in page.events if selection.matches(e)), None)
    if first is None:
        return events, 0.0
    return events, max(0.0, (now - first.meta.recorded_at).total_seconds())
