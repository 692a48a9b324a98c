"""What a create decides across runs, kept beside the log: the group's run number and the
idempotency key's run. Key rows are written in the transaction of the events they belong to.

This module holds the SQL of `group_counters` and `idempotency_keys`."""

from __future__ import annotations

import asyncpg


async def next_counter(pool: asyncpg.Pool, group: str) -> int:
    """The group's next run number (runs of a group are numbered 1, 2, 3, ...)."""
    counter: int = await pool.fetchval(
        """
        INSERT INTO group_counters (group_path, counter) VALUES ($1, 1)
        ON CONFLICT (group_path) DO UPDATE SET counter = group_counters.counter + 1
        RETURNING counter
        """,
        group,
    )
    return counter


async def lock_idempotency_key(connection: asyncpg.Connection, key: str) -> str | None:
    """The run `key` last created, if any, with the key locked until the transaction ends:
    creates with one key are serialised across every process."""
    await connection.execute("SELECT pg_advisory_xact_lock(hashtext('idempotency:' || $1))", key)
    run_id: str | None = await connection.fetchval(
        "SELECT run_id FROM idempotency_keys WHERE key = $1", key
    )
    return run_id


async def record_idempotency_key(connection: asyncpg.Connection, key: str, run_id: str) -> None:
    await connection.execute(
        """
        INSERT INTO idempotency_keys (key, run_id) VALUES ($1, $2)
        ON CONFLICT (key) DO UPDATE SET run_id = excluded.run_id
        """,
        key,
        run_id,
    )
