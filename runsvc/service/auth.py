"""Bearer tokens and roles.

A token reads `rsv_<id>_<secret>`. The id finds the row; the secret is checked against a
SHA-256 hash (the secrets are 32 random bytes, so a slow password hash would add nothing
but latency). Verified tokens are cached for a few seconds so a hot GET path does not pay
a query per request; revocation therefore takes effect within that time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import time
from typing import Literal

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
    """Who is calling: the token's id, its name (recorded as the actor) and role."""

    token_id: str
    name: str
    role: str

    def may(self, permission: Permission) -> bool:
        return permission is Permission.OPEN or permission in GRANTS.get(self.role, frozenset())


class IssuedToken(msgspec.Struct, frozen=True):
    token: str
    id: str
    name: str
    role: str


def _hash(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def _split(token: str) -> tuple[str, str] | None:
    prefix, _, rest = token.partition("_")
    token_id, _, secret = rest.partition("_")
    if prefix != "rsv" or not token_id or not secret:
        return None
    return token_id, secret


async def create_token(
    connection: asyncpg.Connection | asyncpg.Pool, *, role: str, name: str | None = None
) -> IssuedToken:
    if role not in ROLES:
        raise BadRequest(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    name = name or f"{role}-{token_id}"
    await connection.execute(
        "INSERT INTO tokens (id, name, role, secret_hash) VALUES ($1, $2, $3, $4)",
        token_id,
        name,
        role,
        _hash(secret),
    )
    return IssuedToken(token=f"rsv_{token_id}_{secret}", id=token_id, name=name, role=role)


async def count_tokens(connection: asyncpg.Connection | asyncpg.Pool) -> int:
    return int(await connection.fetchval("SELECT count(*) FROM tokens WHERE revoked_at IS NULL"))


async def revoke_token(connection: asyncpg.Connection | asyncpg.Pool, token_id: str) -> bool:
    status = await connection.execute(
        "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id
    )
    return bool(status.endswith(" 1"))


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
        # token -> (principal, fresh until, usable during an outage until)
        self._cache: dict[str, tuple[Principal, float, float]] = {}

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
        if cached is not None and cached[1] > now:
            return cached[0]
        parts = _split(token)
        if parts is None:
            raise Unauthorized("unknown token")
        token_id, secret = parts
        lookup = self._pool.fetchrow(
            "SELECT name, role, secret_hash FROM tokens WHERE id = $1 AND revoked_at IS NULL",
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
        principal = Principal(token_id=token_id, name=row["name"], role=row["role"])
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[token] = (principal, now + self._cache_seconds, now + self._outage_seconds)
        return principal
