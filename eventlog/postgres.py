"""PostgreSQL: the connection pool and versioned migrations (the embedded server is
`runsvc.infra.postgres`).

This is, with `eventlog.store`, one of the only modules that talk to asyncpg directly.

Migrations are numbered `.sql` files in a package's `migrations/` folder, grouped into
named sets (`eventlog`, `projections`, `runsvc`) so each layer owns its tables while one
runner applies them all. The runner holds a session advisory lock for its whole run, so two
processes starting at once apply each file exactly once; applying is idempotent because
applied versions are recorded in the same transaction as the file's statements.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

_MIGRATION_LOCK = 7310120240


@dataclass(frozen=True)
class MigrationSet:
    """The numbered SQL files of one package, applied in order of their number."""

    name: str
    directory: Path

    def files(self) -> list[tuple[int, Path]]:
        found = []
        for path in sorted(self.directory.glob("*.sql")):
            number, _, _ = path.name.partition("_")
            if not number.isdigit():
                raise ValueError(f"migration file {path.name} must start with a number")
            found.append((int(number), path))
        numbers = [n for n, _ in found]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"duplicate migration numbers in {self.directory}")
        return found


EVENTLOG_MIGRATIONS = MigrationSet("eventlog", Path(__file__).parent / "migrations")


async def migrate(connection: asyncpg.Connection, sets: Sequence[MigrationSet]) -> list[str]:
    """Apply every migration not yet applied; return the names of those applied now."""
    applied_now: list[str] = []
    await connection.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await connection.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                set_name   text        NOT NULL,
                version    integer     NOT NULL,
                name       text        NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (set_name, version)
            )
            """
        )
        for migration_set in sets:
            rows = await connection.fetch(
                "SELECT version FROM schema_migrations WHERE set_name = $1", migration_set.name
            )
            done = {row["version"] for row in rows}
            for number, path in migration_set.files():
                if number in done:
                    continue
                async with connection.transaction():
                    await connection.execute(path.read_text())
                    await connection.execute(
                        "INSERT INTO schema_migrations (set_name, version, name) "
                        "VALUES ($1, $2, $3)",
                        migration_set.name,
                        number,
                        path.name,
                    )
                applied_now.append(f"{migration_set.name}/{path.name}")
    finally:
        await connection.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
    return applied_now


async def _keep_session(_connection: asyncpg.Connection) -> None:
    """Pool release without asyncpg's default reset query (RESET ALL, UNLISTEN *, advisory
    unlock …): one round trip saved on every pooled operation. Safe because no pooled
    connection changes session state: LISTEN has its own connection, advisory locks are
    transaction-scoped, and asyncpg still rolls back a transaction left open."""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **kwargs: Any
) -> asyncpg.Pool:
    """A connection pool whose connections survive a server-side idle timeout.

    `max_inactive_connection_lifetime` recycles idle connections so that a connection
    killed while idle is replaced rather than handed out.
    """
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_inactive_connection_lifetime=60.0,
        reset=_keep_session,
        **kwargs,
    )
    assert pool is not None
    return pool
