"""Migrations and the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from eventlog.postgres import MigrationSet, migrate
from runsvc.infra.postgres import EmbeddedPostgres
from runsvc.service.schema import MIGRATION_SETS
from tests.fixtures.postgres import drop_database, dsn_for, server_directory


@pytest.fixture
async def empty_database(postgres_server: str) -> AsyncIterator[str]:
    """A database with no tables at all (not cloned from the migrated template)."""
    name = f"empty_{uuid.uuid4().hex}"
    admin = await asyncpg.connect(postgres_server)
    try:
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    yield dsn_for(postgres_server, name)
    await drop_database(postgres_server, name)


async def test_migrations_twice_and_concurrently_are_harmless(empty_database: str) -> None:
    """Two processes migrating at once, then a third run: every file applied exactly once."""
    first, second = await asyncpg.connect(empty_database), await asyncpg.connect(empty_database)
    try:
        applied = await asyncio.gather(
            migrate(first, MIGRATION_SETS), migrate(second, MIGRATION_SETS)
        )
        assert sorted(len(a) for a in applied)[0] == 0
        assert sum(len(a) for a in applied) == sum(len(s.files()) for s in MIGRATION_SETS)
        assert await migrate(first, MIGRATION_SETS) == []
        rows = await first.fetch("SELECT set_name, version FROM schema_migrations")
        assert len(rows) == len({(r[0], r[1]) for r in rows})
        assert await first.fetchval("SELECT to_regclass('events') IS NOT NULL")
    finally:
        await first.close()
        await second.close()


async def test_failed_migration_applies_nothing_of_itself(
    empty_database: str, tmp_path: Path
) -> None:
    """A migration file that fails leaves neither its tables nor its record behind."""
    (tmp_path / "0001_ok.sql").write_text("CREATE TABLE ok_table (x int);")
    (tmp_path / "0002_bad.sql").write_text("CREATE TABLE half (x int); SELECT no_such_column;")
    connection = await asyncpg.connect(empty_database)
    try:
        with pytest.raises(asyncpg.PostgresError):
            await migrate(connection, [MigrationSet("t", tmp_path)])
        assert await connection.fetchval("SELECT to_regclass('ok_table') IS NOT NULL")
        assert await connection.fetchval("SELECT to_regclass('half') IS NULL")
        versions = await connection.fetch("SELECT version FROM schema_migrations")
        assert [r[0] for r in versions] == [1]
    finally:
        await connection.close()


async def test_embedded_server_keeps_data_across_restarts() -> None:
    """The data directory survives a stop and start; a second handle attaches to the
    running server and leaves it running when it stops."""
    root = server_directory()
    server = EmbeddedPostgres(root / "data")
    dsn = await asyncio.to_thread(server.start)
    try:
        connection = await asyncpg.connect(dsn)
        await connection.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        await connection.close()

        attached = EmbeddedPostgres(root / "data")
        assert await asyncio.to_thread(attached.start) == dsn
        await asyncio.to_thread(attached.stop)
        connection = await asyncpg.connect(dsn)
        await connection.close()

        await asyncio.to_thread(server.stop)
        with pytest.raises((OSError, asyncpg.PostgresError)):
            await asyncpg.connect(dsn, timeout=5)
        dsn = await asyncio.to_thread(server.start)
        connection = await asyncpg.connect(dsn)
        assert await connection.fetchval("SELECT x FROM kept") == 42
        await connection.close()
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)


async def test_a_deep_data_directory_keeps_its_socket_private() -> None:
    """A data directory too deep for a socket path puts the socket in a fresh directory
    under /tmp that only the server's user can enter (it was 0755 with a 0777 socket:
    with trust authentication, any local user was the database superuser). Another user
    cannot reach the socket."""
    root = server_directory()
    server = EmbeddedPostgres(root / ("deep" * 25) / "data")
    dsn = await asyncio.to_thread(server.start)
    try:
        socket_dir = Path(dsn.rsplit("host=", 1)[1])
        assert socket_dir != server.pgdata
        mode = (await asyncio.to_thread(socket_dir.stat)).st_mode
        assert stat.S_IMODE(mode) == 0o700
        connection = await asyncpg.connect(dsn)
        await connection.close()
        if os.geteuid() == 0:  # as root (CI), try as another user
            attempt = await asyncio.to_thread(
                subprocess.run,
                [
                    "/usr/bin/python3",
                    "-c",
                    "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
                    str(socket_dir / ".s.PGSQL.5432"),
                ],
                user="nobody",
                capture_output=True,
                text=True,
                check=False,
            )
            assert attempt.returncode != 0
            assert "PermissionError" in attempt.stderr
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)
    assert not await asyncio.to_thread(socket_dir.exists)


async def assert_only_the_password_lets_in(dsn: str) -> None:
    """Through the same socket: no password and a wrong one are refused, `dsn`'s works."""
    socket_dir = dsn.rsplit("host=", 1)[1]
    for who in ("postgres", "postgres:guessed"):
        with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError):
            await asyncpg.connect(f"postgresql://{who}@/postgres?host={socket_dir}")
    connection = await asyncpg.connect(dsn)
    await connection.close()


async def test_reaching_the_socket_is_not_enough_to_connect() -> None:
    """The embedded server asks for the superuser's password (SCRAM), kept in a 0600 file
    of the data directory: a process that reaches the socket without it is refused, also
    with a wrong one. A data directory made when the server trusted its socket is given a
    password on its next start."""
    root = server_directory()
    server = EmbeddedPostgres(root / "data")
    dsn = await asyncio.to_thread(server.start)
    try:
        password = server.password_path.read_text().strip()
        assert f"postgres:{password}@" in dsn
        assert stat.S_IMODE(server.password_path.stat().st_mode) == 0o600
        await assert_only_the_password_lets_in(dsn)
    finally:
        await asyncio.to_thread(server.stop)

    # As an older runsvc left it: trusting its socket, no password file.
    hba = server.pgdata / "pg_hba.conf"
    text = hba.read_text()
    hba.write_text(text.replace("scram-sha-256", "trust"))
    server.password_path.unlink()
    dsn = await asyncio.to_thread(server.start)
    try:
        assert "trust" not in hba.read_text().split("# TYPE", 1)[-1]
        await assert_only_the_password_lets_in(dsn)
    finally:
        await asyncio.to_thread(server.stop)
        shutil.rmtree(root, ignore_errors=True)
