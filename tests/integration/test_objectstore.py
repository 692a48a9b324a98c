"""The object store against a real SeaweedFS: round trips, streaming, listing, deletion
and key validation. Every test gets a bucket of its own."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator

import msgspec
import pytest

from runsvc.infra.objectstore import (
    InvalidKey,
    MiB,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
    ObjectStoreUnavailable,
)


async def generated(total: int, chunk_size: int, seed: int = 7) -> AsyncIterator[bytes]:
    """`total` pseudo-random bytes in chunks of `chunk_size` (the last may be shorter),
    made one chunk at a time so the whole never exists in memory."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        size = min(chunk_size, total - sent)
        yield rng.randbytes(size)
        sent += size


async def sha256_of(chunks: AsyncIterator[bytes]) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    async for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


async def test_put_then_get_round_trips(object_store: ObjectStore) -> None:
    """What is put under a key is what get returns, and head reports its size."""
    data = b"\x00binary\xffdata" * 100
    await object_store.put("logs/task-1/1.log", data, content_type="text/plain")

    assert await object_store.get("logs/task-1/1.log") == data
    info = await object_store.head("logs/task-1/1.log")
    assert info.key == "logs/task-1/1.log"
    assert info.size == len(data)
    assert info.etag == hashlib.md5(data).hexdigest()  # a single put's etag is its MD5


async def test_put_replaces_an_existing_object(object_store: ObjectStore) -> None:
    """A second put under the same key replaces the object."""
    await object_store.put("pointer", b"old")
    await object_store.put("pointer", b"new")
    assert await object_store.get("pointer") == b"new"


async def test_missing_key_raises_object_not_found(object_store: ObjectStore) -> None:
    """get, head, get_range and get_stream of a missing key raise ObjectNotFound naming
    the key; delete of a missing key is not an error."""
    with pytest.raises(ObjectNotFound) as caught:
        await object_store.get("no/such/key")
    assert caught.value.key == "no/such/key"
    with pytest.raises(ObjectNotFound):
        await object_store.head("no/such/key")
    with pytest.raises(ObjectNotFound):
        await object_store.get_range("no/such/key", 0, 10)
    chunks = object_store.get_stream("no/such/key")
    with pytest.raises(ObjectNotFound):
        await anext(chunks)
    await chunks.aclose()
    await object_store.delete("no/such/key")


async def test_put_stream_round_trips_a_large_object(object_store: ObjectStore) -> None:
    """About 20 MiB streamed in uneven chunks goes up as a multipart upload and comes
    back byte for byte."""
    total = 20 * MiB + 12345
    expected, _ = await sha256_of(generated(total, 1_000_003))

    stored = await object_store.put_stream("dumps/big.bin", generated(total, 1_000_003))

    assert stored == total
    info = await object_store.head("dumps/big.bin")
    assert info.size == total
    assert info.etag.endswith("-3")  # three parts: 8 MiB, 8 MiB and the rest
    digest, size = await sha256_of(object_store.get_stream("dumps/big.bin", chunk_size=MiB))
    assert (digest, size) == (expected, total)
    assert await object_store.incomplete_uploads() == []


async def test_put_stream_of_small_or_empty_sources(object_store: ObjectStore) -> None:
    """Sources below one part go up in one request; an empty source stores an empty
    object."""
    assert await object_store.put_stream("small", generated(3000, 1000)) == 3000
    assert await object_store.get("small") == b"".join([c async for c in generated(3000, 1000)])

    assert await object_store.put_stream("empty", generated(0, 1000)) == 0
    assert await object_store.get("empty") == b""


async def test_metadata_is_kept_by_single_and_multipart_uploads(
    object_store: ObjectStore,
) -> None:
    """User metadata given to `put_stream` comes back from `head`, whether the object
    went up in one request or in parts; a listing leaves it out."""
    metadata = {"sha256": "ab" * 32, "attempt": "2"}
    await object_store.put_stream("meta/small", generated(3000, 1000), metadata=metadata)
    await object_store.put_stream("meta/big", generated(9 * MiB, 1_000_003), metadata=metadata)
    assert (await object_store.head("meta/small")).metadata == metadata
    assert (await object_store.head("meta/big")).metadata == metadata
    await object_store.put("meta/plain", b"x")
    assert (await object_store.head("meta/plain")).metadata == {}
    assert {i.key: i.metadata for i in [i async for i in object_store.list("meta/")]} == {
        "meta/big": {},
        "meta/plain": {},
        "meta/small": {},
    }


async def test_put_stream_failing_source_leaves_nothing(object_store: ObjectStore) -> None:
    """When the source raises after parts were uploaded, its exception propagates, no
    object appears and no multipart upload is left behind."""

    async def failing() -> AsyncIterator[bytes]:
        async for chunk in generated(18 * MiB, MiB):
            yield chunk
        raise RuntimeError("the dump query failed")

    with pytest.raises(RuntimeError, match="the dump query failed"):
        await object_store.put_stream("dumps/partial.bin", failing())

    with pytest.raises(ObjectNotFound):
        await object_store.head("dumps/partial.bin")
    assert await object_store.incomplete_uploads() == []
    assert [item async for item in object_store.list()] == []


async def test_put_stream_cancelled_leaves_nothing(object_store: ObjectStore) -> None:
    """Cancelling a put_stream in the middle (shutdown) aborts its multipart upload."""
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        async for chunk in generated(9 * MiB, MiB):
            yield chunk
        stalled.set()
        await asyncio.Event().wait()  # never set: the producer hangs
        yield b"never"

    task = asyncio.create_task(object_store.put_stream("dumps/cancelled.bin", stalling()))
    await stalled.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert await object_store.incomplete_uploads() == []
    with pytest.raises(ObjectNotFound):
        await object_store.head("dumps/cancelled.bin")


async def test_get_range_reads_parts_and_tails(object_store: ObjectStore) -> None:
    """get_range reads [start, end), a suffix for a negative start, and empty bytes past
    the end of the object."""
    await object_store.put("logs/t/1.log", b"0123456789")

    assert await object_store.get_range("logs/t/1.log", 2, 5) == b"234"
    assert await object_store.get_range("logs/t/1.log", 7) == b"789"
    assert await object_store.get_range("logs/t/1.log", -3) == b"789"
    assert await object_store.get_range("logs/t/1.log", 4, 4) == b""
    assert await object_store.get_range("logs/t/1.log", 10) == b""
    assert await object_store.get_range("logs/t/1.log", 20, 30) == b""
    with pytest.raises(ValueError, match="before its start"):
        await object_store.get_range("logs/t/1.log", 5, 2)


async def test_list_paginates_over_more_than_a_thousand_keys(object_store: ObjectStore) -> None:
    """list returns every key under a prefix in key order across several pages, and
    delete_prefix removes them all in batches."""
    keys = [f"artifacts/task-{i // 100}/file-{i:04d}" for i in range(1050)]
    gate = asyncio.Semaphore(32)

    async def put(key: str) -> None:
        async with gate:
            await object_store.put(key, key.encode())

    await asyncio.gather(*(put(key) for key in keys))
    await object_store.put("logs/other", b"x")

    listed = [item async for item in object_store.list("artifacts/")]
    assert [item.key for item in listed] == sorted(keys)
    assert all(item.size == len(item.key) for item in listed)
    small_pages = [item.key async for item in object_store.list("artifacts/task-1", page_size=7)]
    assert small_pages == sorted(k for k in keys if k.startswith("artifacts/task-1"))

    assert await object_store.delete_prefix("artifacts/") == 1050
    assert [item.key async for item in object_store.list()] == ["logs/other"]


async def test_delete_prefix_deletes_only_matching_keys(object_store: ObjectStore) -> None:
    """delete_prefix removes exactly the keys starting with the prefix and refuses the
    empty prefix (the whole bucket)."""
    for key in ["logs/t1/1.log", "logs/t1/2.log", "logs/t10/1.log", "artifacts/t1/out"]:
        await object_store.put(key, b"x")

    assert await object_store.delete_prefix("logs/t1/") == 2
    assert await object_store.delete_prefix("logs/t1/") == 0
    assert [item.key async for item in object_store.list()] == [
        "artifacts/t1/out",
        "logs/t10/1.log",
    ]
    with pytest.raises(InvalidKey):
        await object_store.delete_prefix("")


@pytest.fixture
async def offline_store() -> AsyncIterator[ObjectStore]:
    """A store whose endpoint nobody listens on: a check that let a bad key through would
    fail as ObjectStoreUnavailable instead of InvalidKey."""
    async with ObjectStore.connect(ObjectStoreConfig(endpoint="http://127.0.0.1:9")) as store:
        yield store


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/absolute",
        "..",
        "a/../b",
        "a/./b",
        "a//b",
        "trailing/",
        "nul\x00byte",
        "tab\tkey",
        "line\nbreak",
        "x" * 1025,
    ],
)
async def test_invalid_keys_are_refused(offline_store: ObjectStore, key: str) -> None:
    """Keys that are empty, absolute, climb, would be folded by the store, hold control
    characters or are too long are refused before any request, as InvalidKey (a
    ValueError)."""
    with pytest.raises(InvalidKey):
        await offline_store.put(key, b"x")
    with pytest.raises(InvalidKey):
        await offline_store.put_stream(key, generated(10, 10))
    with pytest.raises(ValueError):  # noqa: PT011 - the ValueError side is the point
        await offline_store.get(key)
    with pytest.raises(InvalidKey):
        await offline_store.get_range(key, 0, 1)
    with pytest.raises(InvalidKey):
        await anext(offline_store.get_stream(key))
    with pytest.raises(InvalidKey):
        await offline_store.head(key)
    with pytest.raises(InvalidKey):
        await offline_store.delete(key)


@pytest.mark.parametrize("prefix", ["/logs", "logs//", "a/../", "\x01"])
async def test_invalid_prefixes_are_refused(offline_store: ObjectStore, prefix: str) -> None:
    """Listing and deleting by prefix apply the key rules to all but the last, partial
    segment."""
    with pytest.raises(InvalidKey):
        _ = [item async for item in offline_store.list(prefix)]
    with pytest.raises(InvalidKey):
        await offline_store.delete_prefix(prefix)


async def test_ensure_bucket_is_idempotent_and_ping_checks_the_bucket(
    object_store: ObjectStore, object_store_config: ObjectStoreConfig
) -> None:
    """ensure_bucket on an existing bucket keeps its objects; ping passes on it and
    raises ObjectStoreUnavailable for a bucket that does not exist."""
    await object_store.put("kept", b"1")
    await object_store.ensure_bucket()
    await object_store.ensure_bucket()
    assert await object_store.get("kept") == b"1"
    await object_store.ping()

    missing = msgspec.structs.replace(object_store_config, bucket="no-such-bucket")
    async with ObjectStore.connect(missing) as store:
        with pytest.raises(ObjectStoreUnavailable, match="no-such-bucket"):
            await store.ping()
        with pytest.raises(ObjectStoreError) as caught:
            await store.get("key")
        assert not isinstance(caught.value, ObjectNotFound | ObjectStoreUnavailable)


def test_config_validates_and_hides_the_secret() -> None:
    """A part size below S3's minimum is refused, and the secret key never shows in the
    config's repr (configs end up in logs)."""
    with pytest.raises(ValueError, match="part_size"):
        ObjectStoreConfig(part_size=MiB)
    config = ObjectStoreConfig(secret_key="hunter2")
    assert "hunter2" not in repr(config)
    assert "access_key='runsvc'" in repr(config)
