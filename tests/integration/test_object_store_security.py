"""The embedded SeaweedFS against a local intruder. Its listeners are on 127.0.0.1, which
every local user and every task the service runs can reach, so each way into the bucket
over HTTP is tried here without the store's keys: the S3 API unsigned or signed with
wrong keys, the filer's and master's HTTP APIs, and the volume server holding the bytes.
Each must refuse, and the object the service wrote must be unchanged afterwards.
(The gRPC listeners stay open; docs/operations.md says what that allows.)"""

from __future__ import annotations

import json
import stat
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import msgspec
import pytest

from runsvc.infra.objectstore import (
    ObjectNotFound,
    ObjectStore,
    ObjectStoreConfig,
    ObjectStoreError,
    ObjectStoreUnavailable,
)
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.infra.settings import load_settings
from runsvc.resources import open_object_store

KEY = "logs/task-1/1.log"
LOG = b"a task's output, for its run's readers only\n"

# How S3 says no to a request without valid credentials.
REFUSED = {401, 403}
# The filer's and master's HTTP APIs are switched off, so their routes are gone.
GONE = REFUSED | {404}


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
