"""Managing tokens: create, list, revoke, and hearing of revocations made by any process.

A revocation commits with a notification on `TOKENS_CHANNEL` naming the token id; every
service process listens and drops the token from its verifier's cache on hearing it, so a
revoked token is refused at once everywhere instead of when the cache entry would have
gone stale. A process that lost its listening connection forgets every cached token.
"""

from __future__ import annotations

import json
from datetime import datetime

import asyncpg

from eventlog.listener import ChannelListener
from runsvc.domain.config import parse_duration
from runsvc.domain.errors import BadRequest, Problem
from runsvc.domain.validation import MAX_KEY
from runsvc.service.auth import ROLES, IssuedToken, TokenVerifier, create_token
from runsvc.wire.api import CreateTokenRequest, TokenInfo

TOKENS_CHANNEL = "runsvc_tokens"
MAX_NAME = 100
MAX_LABELS = 50


async def issue(pool: asyncpg.Pool, request: CreateTokenRequest, *, now: datetime) -> IssuedToken:
    """Check a create request (400 listing every problem) and create the token."""
    problems: list[Problem] = []
    if request.role not in ROLES:
        problems.append(Problem(path="role", message=f"one of {', '.join(ROLES)}"))
    if request.name is not None and not 1 <= len(request.name.strip()) <= MAX_NAME:
        problems.append(Problem(path="name", message=f"1-{MAX_NAME} characters"))
    if len(request.labels) > MAX_LABELS:
        problems.append(Problem(path="labels", message=f"at most {MAX_LABELS} labels"))
    for key, value in request.labels.items():
        if not 1 <= len(key) <= MAX_KEY or not 1 <= len(value) <= MAX_KEY:
            problems.append(
                Problem(path=f"labels.{key}", message=f"keys and values are 1-{MAX_KEY} characters")
            )
    if request.labels and request.role != "executor":
        problems.append(Problem(path="labels", message="only executor tokens have labels"))
    expires_at = None
    if request.expires_in is not None:
        try:
            expires_at = now + parse_duration(request.expires_in)
        except ValueError as exc:
            problems.append(Problem(path="expires_in", message=str(exc)))
    if problems:
        raise BadRequest("invalid token request", problems)
    return await create_token(
        pool, role=request.role, name=request.name, labels=request.labels, expires_at=expires_at
    )


async def list_tokens(pool: asyncpg.Pool | asyncpg.Connection) -> list[TokenInfo]:
    """Every token, newest first, without secrets."""
    rows = await pool.fetch(
        "SELECT id, name, role, labels::text AS labels, created_at, last_used_at, expires_at,"
        " revoked_at FROM tokens ORDER BY created_at DESC, id"
    )
    return [
        TokenInfo(
            id=row["id"],
            name=row["name"],
            role=row["role"],
            labels=json.loads(row["labels"]),
            created_at=row["created_at"],
            last_used_at=row["last_used_at"],
            expires_at=row["expires_at"],
            revoked_at=row["revoked_at"],
        )
        for row in rows
    ]


async def revoke(pool: asyncpg.Pool | asyncpg.Connection, token_id: str) -> bool | None:
    """Revoke a token and tell every process. True if it was revoked now, False if it
    already was, None if there is no such token."""
    row = await pool.fetchrow(
        """
        WITH target AS (SELECT id, revoked_at FROM tokens WHERE id = $1),
        revoked AS (
            UPDATE tokens SET revoked_at = now()
            WHERE id = $1 AND revoked_at IS NULL
            RETURNING id, pg_notify($2, id)
        )
        SELECT (SELECT count(*) FROM target) AS found, (SELECT count(*) FROM revoked) AS now
        """,
        token_id,
        TOKENS_CHANNEL,
    )
    assert row is not None
    if not row["found"]:
        return None
    return bool(row["now"])


class RevocationListener(ChannelListener):
    """Drops revoked tokens from this process's verifier as their revocations commit."""

    def __init__(self, dsn: str, verifier: TokenVerifier) -> None:
        super().__init__(dsn, TOKENS_CHANNEL)
        self._verifier = verifier

    def on_payload(self, payload: str) -> None:
        self._verifier.forget(payload)

    async def after_connect(self, connection: asyncpg.Connection) -> None:
        # Revocations made while this process was not listening were not heard.
        self._verifier.forget_all()
