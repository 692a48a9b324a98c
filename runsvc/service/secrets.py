"""Secrets: set, list, delete, look up for a claim, and re-seal under a new key. All the
SQL of the `secrets` and `secrets_canary` tables (migration 0011).

A secret is a value under a name in a group; it is visible to the runs of its group and
of the groups beneath it, and the most specific group that has the name wins. Values are
sealed by `runsvc.infra.sealing` with the name, group and version as associated data, so
a ciphertext copied to another row does not open. Every set gives the name a new
version (a deleted secret keeps its row without a value, so that a name set again goes
on counting): the log records the version an attempt was given, never the value.

The canary is a known text sealed under the ring's key when the first process starts;
`check_ring` opens it (and makes sure every secret names a key of the ring), so a process
given the wrong keys refuses to start instead of handing out garbage or failing later.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import asyncpg
import structlog

from runsvc.domain.errors import BadRequest, Problem, TooLarge
from runsvc.domain.expressions.checks import SECRET_NAME
from runsvc.domain.validation import valid_group
from runsvc.infra.sealing import KeyRing, KeyRingError, Sealed, SealError
from runsvc.wire.api import SecretInfo

log = structlog.get_logger("runsvc.secrets")

MAX_VALUE_BYTES = 64 * 1024
_CANARY = b"runsvc secrets canary"
_CANARY_DATA = b"runsvc secrets canary\0"


def associated(name: str, group: str, version: int) -> bytes:
    """What a value is bound to: its row and version."""
    return f"runsvc secret\0{group}\0{name}\0{version}".encode()


def visible_groups(group: str) -> list[str]:
    """The groups whose secrets a run in `group` sees, most specific first: `/a/b`, `/a`,
    `/`."""
    found = [group]
    while group != "/":
        group = group.rsplit("/", 1)[0] or "/"
        found.append(group)
    return found


def _refusal(ring: KeyRing, key_id: str) -> KeyRingError:
    return KeyRingError(
        f"{ring.source} does not hold the key that sealed this database's secrets "
        f"(key id {key_id}; this process has {', '.join(ring.ids)}): values sealed under "
        "another key cannot be read. Give every process the same keys "
        "(RUNSVC_SECRETS_KEY_FILE or RUNSVC_SECRETS_KEY); see docs/secrets.md"
    )


async def check_ring(pool: asyncpg.Pool | asyncpg.Connection, ring: KeyRing) -> None:
    """Refuse (KeyRingError) a ring that cannot open this database's secrets: the canary
    (sealed here on the first start) and the key of every secret must be in it."""
    row = await pool.fetchrow("SELECT key_id, nonce, ciphertext FROM secrets_canary")
    if row is None:
        sealed = ring.seal(_CANARY, _CANARY_DATA)
        await pool.execute(
            "INSERT INTO secrets_canary (key_id, nonce, ciphertext) VALUES ($1, $2, $3) "
            "ON CONFLICT (id) DO NOTHING",
            sealed.key_id,
            sealed.nonce,
            sealed.ciphertext,
        )
        row = await pool.fetchrow("SELECT key_id, nonce, ciphertext FROM secrets_canary")
        assert row is not None
    try:
        opened = ring.open(
            Sealed(row["key_id"], bytes(row["nonce"]), bytes(row["ciphertext"])), _CANARY_DATA
        )
    except SealError:
        raise _refusal(ring, row["key_id"]) from None
    if opened != _CANARY:
        raise _refusal(ring, row["key_id"])
    for record in await pool.fetch(
        "SELECT DISTINCT key_id FROM secrets WHERE key_id IS NOT NULL AND key_id <> ALL($1)",
        ring.ids,
    ):
        # A key the file gained since this process read it (a rotation under way)?
        ring.reread(force=True)
        if record["key_id"] not in ring.ids:
            raise _refusal(ring, record["key_id"])


def check_secret(name: str, group: str, value: str | None = None) -> None:
    """400 listing every problem of a name, group and value; 413 for a value too big."""
    problems: list[Problem] = []
    if not SECRET_NAME.fullmatch(name):
        problems.append(
            Problem(
                path="name",
                message="a letter or _, then letters, digits or _ (at most 200), "
                "like a variable of the environment",
            )
        )
    if not valid_group(group):
        problems.append(
            Problem(
                path="group", message="an absolute path of names (not . or ..), like /org/project"
            )
        )
    if value is not None:
        if not value:
            problems.append(Problem(path="value", message="must not be empty"))
        elif "\0" in value:
            problems.append(Problem(path="value", message="must not hold a NUL character"))
    if problems:
        summary = problems[0].message if len(problems) == 1 else f"{len(problems)} problems"
        raise BadRequest(f"invalid secret: {summary}", problems)
    if value is not None and len(value.encode()) > MAX_VALUE_BYTES:
        raise TooLarge(f"a secret's value may hold at most {MAX_VALUE_BYTES} bytes")


class SecretStore:
    """The secrets of one database, sealed and opened with `ring`."""

    def __init__(self, pool: asyncpg.Pool, ring: KeyRing) -> None:
        self.pool = pool
        self.ring = ring

    async def put(self, name: str, group: str, value: str, *, actor: str, now: datetime) -> int:
        """Set the secret (a new version of it); returns the version."""
        check_secret(name, group, value)
        async with self.pool.acquire() as connection, connection.transaction():
            # One set of a name at a time: the version is sealed into the value.
            await connection.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 77))", f"{group} {name}"
            )
            current = await connection.fetchval(
                "SELECT version FROM secrets WHERE secret_group = $1 AND name = $2", group, name
            )
            version = (current or 0) + 1
            sealed = self.ring.seal(value.encode(), associated(name, group, version))
            await connection.execute(
                """
                INSERT INTO secrets AS s (name, secret_group, version, key_id, nonce,
                                          ciphertext, updated_by, updated_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (secret_group, name) DO UPDATE SET
                    version = excluded.version, key_id = excluded.key_id,
                    nonce = excluded.nonce, ciphertext = excluded.ciphertext,
                    updated_by = excluded.updated_by, updated_at = excluded.updated_at
                """,
                name,
                group,
                version,
                sealed.key_id,
                sealed.nonce,
                sealed.ciphertext,
                actor,
                now,
            )
        log.info("secret set", name=name, group=group, version=version, by=actor)
        return version

    async def delete(self, name: str, group: str, *, actor: str, now: datetime) -> bool:
        """Forget the value (the row stays, for the versions); False when it was not set."""
        check_secret(name, group)
        deleted = await self.pool.fetchval(
            """
            UPDATE secrets SET key_id = NULL, nonce = NULL, ciphertext = NULL,
                               updated_by = $3, updated_at = $4
            WHERE secret_group = $1 AND name = $2 AND ciphertext IS NOT NULL
            RETURNING version
            """,
            group,
            name,
            actor,
            now,
        )
        if deleted is not None:
            log.info("secret deleted", name=name, group=group, version=deleted, by=actor)
        return deleted is not None

    async def list(self, group: str | None = None) -> list[SecretInfo]:
        """The secrets set (in `group` and the groups beneath it, when given): names,
        groups, versions, who set them and when; never a value."""
        if group is not None:
            check_secret("x", group)
        rows = await self.pool.fetch(
            """
            SELECT name, secret_group, version, key_id, updated_by, updated_at FROM secrets
            WHERE ciphertext IS NOT NULL
              AND ($1::text IS NULL OR secret_group = $1 OR $1 = '/'
                   OR starts_with(secret_group, $1 || '/'))
            ORDER BY secret_group, name
            """,
            group,
        )
        return [
            SecretInfo(
                name=row["name"],
                group=row["secret_group"],
                version=row["version"],
                key_id=row["key_id"],
                updated_by=row["updated_by"],
                updated_at=row["updated_at"],
            )
            for row in rows
        ]

    async def _visible(self, group: str, names: Sequence[str]) -> dict[str, asyncpg.Record]:
        rows = await self.pool.fetch(
            """
            SELECT DISTINCT ON (name) name, secret_group, version, key_id, nonce, ciphertext
            FROM secrets
            WHERE name = ANY($1) AND secret_group = ANY($2) AND ciphertext IS NOT NULL
            ORDER BY name, length(secret_group) DESC
            """,
            list(names),
            visible_groups(group),
        )
        return {row["name"]: row for row in rows}

    async def existing(self, group: str, names: Sequence[str]) -> set[str]:
        """Which of `names` a run in `group` would be given."""
        return set(await self._visible(group, names)) if names else set()

    async def lookup(self, group: str, names: Sequence[str]) -> dict[str, tuple[int, str]]:
        """The version and value of each of `names` a run in `group` sees (the most
        specific group's); a name not set is left out."""
        found = {}
        for name, row in (await self._visible(group, names)).items():
            sealed = Sealed(row["key_id"], bytes(row["nonce"]), bytes(row["ciphertext"]))
            try:
                value = self.ring.open(
                    sealed, associated(name, row["secret_group"], row["version"])
                ).decode()
            except SealError as exc:
                # Given to no one: the attempt fails, naming it as not set.
                log.error(
                    "a secret does not open", name=name, group=row["secret_group"], error=str(exc)
                )
                continue
            found[name] = (int(row["version"]), value)
        return found


async def reseal(pool: asyncpg.Pool, ring: KeyRing) -> int:
    """Seal every secret (and the canary) that is not under the ring's newest key again
    under it; returns how many were. Each row is replaced only if it is still what was
    read (a set meanwhile already sealed it under a key of its own), and the rows are
    read again until none is left under another key, so sets during the rotation are
    caught too."""
    total = 0
    while True:
        newest = ring.newest
        rows = await pool.fetch(
            "SELECT name, secret_group, version, key_id, nonce, ciphertext FROM secrets "
            "WHERE ciphertext IS NOT NULL AND key_id <> $1 ORDER BY secret_group, name "
            "LIMIT 500",
            newest,
        )
        canary = await pool.fetchrow(
            "SELECT key_id, nonce, ciphertext FROM secrets_canary WHERE key_id <> $1", newest
        )
        if not rows and canary is None:
            return total
        for row in rows:
            data = associated(row["name"], row["secret_group"], row["version"])
            value = ring.open(
                Sealed(row["key_id"], bytes(row["nonce"]), bytes(row["ciphertext"])), data
            )
            sealed = ring.seal(value, data)
            total += int(
                await pool.execute(
                    """
                    UPDATE secrets SET key_id = $5, nonce = $6, ciphertext = $7
                    WHERE secret_group = $1 AND name = $2 AND version = $3 AND key_id = $4
                    """,
                    row["secret_group"],
                    row["name"],
                    row["version"],
                    row["key_id"],
                    sealed.key_id,
                    sealed.nonce,
                    sealed.ciphertext,
                )
                == "UPDATE 1"
            )
        if canary is not None:
            ring.open(
                Sealed(canary["key_id"], bytes(canary["nonce"]), bytes(canary["ciphertext"])),
                _CANARY_DATA,
            )
            sealed = ring.seal(_CANARY, _CANARY_DATA)
            await pool.execute(
                "UPDATE secrets_canary SET key_id = $2, nonce = $3, ciphertext = $4 "
                "WHERE key_id = $1",
                canary["key_id"],
                sealed.key_id,
                sealed.nonce,
                sealed.ciphertext,
            )


async def unused_keys(pool: asyncpg.Pool, ring: KeyRing) -> set[str]:
    """The ids of the ring's keys, other than its newest, that no secret (nor the
    canary) is sealed under: they can leave the key file."""
    used = {
        row["key_id"]
        for row in await pool.fetch(
            "SELECT key_id FROM secrets WHERE key_id IS NOT NULL "
            "UNION SELECT key_id FROM secrets_canary"
        )
    }
    return {identifier for identifier in ring.ids[1:] if identifier not in used}
