"""The embedded SeaweedFS against a local intruder. Its listeners are on 127.0.0.1, which
every local user and every task the service runs can reach, so the S3 API is tried
here without the store's keys: unsigned, and signed with wrong keys. Each request must
be refused, and the object the service wrote must be unchanged afterwards."""

from __future__ import annotations

import json
import stat
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
    for name in ("credentials.json", "s3-identities.json"):
        assert stat.S_IMODE((directory / name).stat().st_mode) == 0o600

    async with open_object_store(settings) as objects:
        assert await objects.get(KEY) == LOG
    assert json.loads((directory / "credentials.json").read_text()) == generated
