"""Bearer tokens and roles.

A token reads `rsv_<id>_<secret>`. The id finds the row; the secret is checked against a
SHA-256 hash (the secrets are 32 random bytes, so a slow password hash would add nothing
but latency). Verified tokens are cached for a few seconds so a hot GET path does not pay
a query per request; a revocation is announced on a channel every process listens to
(`runsvc.service.tokens`), which drops the token from its cache at once. A token may
expire; the cache never outlives that.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import hmac
import json
import secrets
import time
from datetime import datetime
from typing import Any, Literal

import asyncpg
import msgspec

from eventlog.appender import CONNECTION_ERRORS
from runsvc.domain.errors import BadRequest, Unauthorized
from runsvc.infra.deadline import NoAnswer, finish_within

Role = Literal["admin", "submitter", "reader", "executor"]
ROLES: tuple[Role, ...] = ("admin", "submitter", "reader", "executor")


class Permission(enum.Enum):
    """What an endpoint needs. OPEN endpoints need no token at all."""

    OPEN = "open"
    READ = "read"
    SUBMIT = "submit"
    EXECUTE = "execute"
    ADMIN = "admin"


GRANTS: dict[str, frozenset[Permission]] = {
    "admin": frozenset({Permission.READ, Permission.SUBMIT, Permission.EXECUTE, Permission.ADMIN}),
    "submitter": frozenset({Permission.READ, Permission.SUBMIT}),
    "reader": frozenset({Permission.READ}),
    "executor": frozenset({Permission.EXECUTE}),
}


class Principal(msgspec.Struct, frozen=True):
    """Who is calling: the token's id, its name (recorded as the actor), role, and the
    labels an executor token is bound to (it claims only tasks they satisfy)."""

    token_id: str
    name: str
    role: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)

    def may(self, permission: Permission) -> bool:
        return permission is Permission.OPEN or permission in GRANTS.get(self.role, frozenset())


class IssuedToken(msgspec.Struct, frozen=True):
    token: str
    id: str
    name: str
    role: str
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    expires_at: datetime | None = None


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _split(token: str) -> tuple[str, str] | None:
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != "rsv" or not token_id or not secret:
        return None
    return token_id, secret


async def create_token(
    connection: asyncpg.Connection | asyncpg.Pool,
    *,
    role: str,
    name: str | None = None,
    labels: dict[str, str] | None = None,
    expires_at: datetime | None = None,
) -> IssuedToken:
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    name = name or f"{role}-{token_id}"
    labels = labels or {}
    await connection.execute(
        "INSERT INTO tokens (id, name, role, secret_hash, labels, expires_at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6)",
        token_id,
        name,
        role,
        _hash(secret),
        json.dumps(labels),
        expires_at,
    )
    return IssuedToken(
        token=f"rsv_{token_id}_{secret}",
        id=token_id,
        name=name,
        role=role,
        labels=labels,
        expires_at=expires_at,
    )


async def count_tokens(connection: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM tokens WHERE revoked_at IS NULL"))


# What makes a known token fall back to its verification from before the outage.
_OUTAGE: tuple[type[BaseException], ...] = (NoAnswer, *CONNECTION_ERRORS)


class TokenVerifier:
    """Checks bearer tokens against the table, with a short-lived cache.

    While the database does not answer, a token verified in the last `outage_seconds` is
    still accepted, so that what the process can serve from memory (a cached run view)
    stays available; anything that needs the database fails with it anyway. A revoked
    token thus keeps working for cached reads until the database answers again."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        cache_seconds: float = 10.0,
        outage_seconds: float = 600.0,
        outage_wait_s: float = 1.0,
    ) -> None:
        self._pool = pool
        self._cache_seconds = cache_seconds
        self._outage_seconds = outage_seconds
        self._outage_wait_s = outage_wait_s
        # token -> (principal, fresh until, usable during an outage until, expires at as a
        # Unix time or None)
        self._cache: dict[str, tuple[Principal, float, float, float | None]] = {}
        # token id -> when this process last recorded its use (monotonic)
        self._recorded_use: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()

    def forget(self, token_id: str) -> None:
        """The token was revoked: drop it from the cache, so the next request with it is
        checked against the table (and refused)."""
        for token, cached in list(self._cache.items()):
            if cached[0].token_id == token_id:
                del self._cache[token]

    def forget_all(self) -> None:
        """Revocations may have been missed (the listening connection was lost)."""
        self._cache.clear()

    @staticmethod
    def well_formed(token: str | None) -> bool:
        """Whether `token` has the shape of an issued token (a guess that is checked
        against the database), rather than none or something else."""
        return bool(token) and _split(token or "") is not None

    def known(self, token: str | None) -> bool:
        """Whether `token` was verified in the last `outage_seconds` (it is still checked
        again as usual; this only says it is no guess)."""
        cached = self._cache.get(token) if token else None
        return cached is not None and cached[2] > time.monotonic()

    async def verify(self, token: str | None) -> Principal:
        if not token:
            raise Unauthorized("missing bearer token")
        cached = self._cache.get(token)
        now = time.monotonic()
        if cached is not None and cached[3] is not None and cached[3] <= time.time():
            del self._cache[token]  # expired: never served from the cache again
            cached = None
        if cached is not None and cached[1] > now:
            return cached[0]
        parts = _split(token)
        if parts is None:
            raise Unauthorized("unknown token")
        token_id, secret = parts
        lookup = self._pool.fetchrow(
            "SELECT name, role, secret_hash, labels::text AS labels,"
            " extract(epoch FROM expires_at)::float8 AS expires"
            " FROM tokens WHERE id = $1 AND revoked_at IS NULL"
            " AND (expires_at IS NULL OR expires_at > now())",
            token_id,
        )
        if cached is not None and cached[2] > now:
            try:
                row = await finish_within(self._outage_wait_s, lookup)
            except _OUTAGE:
                return cached[0]
        else:
            row = await lookup
        if row is None or not hmac.compare_digest(bytes(row["secret_hash"]), _hash(secret)):
            self._cache.pop(token, None)
            raise Unauthorized("unknown token")
        principal = Principal(
            token_id=token_id,
            name=row["name"],
            role=row["role"],
            labels=json.loads(row["labels"]),
        )
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (
            principal,
            now + self._cache_seconds,
            now + self._outage_seconds,
            row["expires"],
        )
        self._record_use(token_id, now)
        return principal

    def _record_use(self, token_id: str, now: float) -> None:
        """Note in the background when the token was last used, at most once a minute per
        process: a request never waits for this write, nor fails with it."""
        if now - self._recorded_use.get(token_id, -_USE_EVERY_S) < _USE_EVERY_S:
            return
        if len(self._recorded_use) > 10_000:
            self._recorded_use.clear()
        self._recorded_use[token_id] = now

        async def record() -> None:
            try:
                await self._pool.execute(
                    "UPDATE tokens SET last_used_at = now() WHERE id = $1", token_id
                )
            except Exception:  # best effort: the next use records it
                self._recorded_use.pop(token_id, None)

        task = asyncio.get_running_loop().create_task(record())
        self._background.add(task)
        task.add_done_callback(self._background.discard)


_USE_EVERY_S = 60.0
