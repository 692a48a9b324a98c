"""Object storage: dumps, logs and artifacts in one S3 bucket.

This is the only module that talks to aiobotocore/botocore. Every driver error is
translated here (`raise ... from exc`) into `ObjectStoreError` and its subclasses, so no
caller ever handles a botocore exception: `ObjectNotFound` for a missing key,
`ObjectStoreUnavailable` for what may pass with time (connection refused, timeouts, 5xx,
throttling) and is retried by the caller with backoff, the root class for the rest.

botocore's own retries are kept to one quick second attempt (it absorbs a connection the
server closed while idle in the pool); anything longer belongs to the caller, which knows
how long waiting is worth it.

The client speaks to AWS S3 and to S3-compatible servers such as the embedded SeaweedFS:
path-style addressing (no per-bucket DNS names), signature v4, and checksums only where
an operation requires them (the newer default checksum headers are not understood by
every S3 implementation).
"""

from __future__ import annotations

import builtins
import contextlib
import functools
import re
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterator
from datetime import datetime
from typing import Any

import aiohttp
import msgspec
from aiobotocore.session import get_session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError
from botocore.exceptions import ConnectionError as BotoConnectionError

MiB = 1024 * 1024
# S3 refuses multipart parts below 5 MiB, except the last one.
MIN_PART_SIZE = 5 * MiB
# The most keys one DeleteObjects request may name.
_DELETE_BATCH = 1000
# S3 limits keys to 1024 bytes of UTF-8.
_MAX_KEY_BYTES = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NotFound", "404"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "Throttling"}
)


class ObjectStoreError(Exception):
    """The object store refused or could not complete an operation."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ObjectNotFound(ObjectStoreError):
    """No object is stored under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(f"object {key!r} does not exist")
        self.key = key


class ObjectStoreUnavailable(ObjectStoreError):
    """The object store could not be reached or is failing; the operation may be retried."""


class InvalidKey(ObjectStoreError, ValueError):
    """An object key must be non-empty relative path segments without '.', '..' or
    control characters."""


class ObjectStoreConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where the bucket is and how patiently to talk to it. `endpoint` None means AWS S3
    (the region then picks the endpoint). The default keys are placeholders: the
    embedded SeaweedFS accepts only the keys it generated (`EmbeddedSeaweed.credentials`)."""

    endpoint: str | None = None
    bucket: str = "runsvc"
    region: str = "us-east-1"
    access_key: str = "runsvc"
    secret_key: str = "runsvc"
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    max_attempts: int = 2
    max_connections: int = 16
    part_size: int = 8 * MiB

    def __post_init__(self) -> None:
        if self.part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")

    def __repr__(self) -> str:
        # Configs end up in logs and tracebacks; the secret must not.
        shown = {name: getattr(self, name) for name in self.__struct_fields__}
        shown["secret_key"] = "***"
        return f"ObjectStoreConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


class ObjectInfo(msgspec.Struct, frozen=True):
    """One stored object as listed or headed. `metadata` (the user metadata it was stored
    with, names in lower case) is known only to `head`: a listing leaves it empty."""

    key: str
    size: int
    last_modified: datetime
    etag: str = ""
    metadata: dict[str, str] = {}


def check_key(key: str) -> str:
    """Return `key` if it is a valid object key, else raise InvalidKey.

    Besides S3's own limits, keys are refused when a filesystem-backed store (SeaweedFS's
    filer) would not keep them apart: it folds `a//b` into `a/b` and refuses `.`
    segments, so such keys would alias other objects or fail late.
    """
    if not key:
        raise InvalidKey("an object key must not be empty")
    _check_path(key, "key", key.split("/"))
    return key


def check_prefix(prefix: str) -> str:
    """Return `prefix` if keys can start with it (the empty prefix included), else raise
    InvalidKey. Its last segment may be partial (`logs/ab` matches `logs/abc`)."""
    _check_path(prefix, "prefix", prefix.split("/")[:-1])
    return prefix


def _check_path(path: str, what: str, segments: list[str]) -> None:
    if _CONTROL.search(path):
        raise InvalidKey(f"object {what} {path!r} contains control characters")
    if path.startswith("/"):
        raise InvalidKey(f"object {what} {path!r} must not start with '/'")
    if len(path.encode()) > _MAX_KEY_BYTES:
        raise InvalidKey(f"object {what} is longer than {_MAX_KEY_BYTES} bytes")
    if any(segment in ("", ".", "..") for segment in segments):
        raise InvalidKey(f"object {what} {path!r} has an empty, '.' or '..' segment")


class ObjectStore:
    """An open S3 client on one bucket. Create it with `async with ObjectStore.connect(
    config) as store:`, or pair `await ObjectStore.open(config)` with `await
    store.close()` (an aiohttp cleanup_ctx). One instance serves any number of
    concurrent calls and survives outages of the store: calls fail meanwhile and work
    again once it is back."""

    def __init__(
        self, client: Any, config: ObjectStoreConfig, exits: contextlib.AsyncExitStack
    ) -> None:
        """Use `open()` or `connect()`."""
        self._client = client
        self._exits = exits
        self.config = config
        self.bucket = config.bucket

    @classmethod
    async def open(cls, config: ObjectStoreConfig) -> ObjectStore:
        """Create the client (no request is made yet; see `ping()`)."""
        botocore_config = Config(
            region_name=config.region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            connect_timeout=config.connect_timeout,
            read_timeout=config.read_timeout,
            retries={"mode": "standard", "total_max_attempts": config.max_attempts},
            max_pool_connections=config.max_connections,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            # The endpoint comes from runsvc's settings only, never from AWS_ENDPOINT_URL*.
            ignore_configured_endpoint_urls=True,
        )
        exits = contextlib.AsyncExitStack()
        client = await exits.enter_async_context(
            _session().create_client(
                "s3",
                endpoint_url=config.endpoint,
                region_name=config.region,
                aws_access_key_id=config.access_key,
                aws_secret_access_key=config.secret_key,
                config=botocore_config,
            )
        )
        return cls(client, config, exits)

    async def close(self) -> None:
        """Close the client and its connection pool."""
        await self._exits.aclose()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, config: ObjectStoreConfig) -> AsyncIterator[ObjectStore]:
        """An open store, closed on leaving the block."""
        store = await cls.open(config)
        try:
            yield store
        finally:
            await store.close()

    async def ensure_bucket(self) -> None:
        """Create the bucket unless it exists. Looks first, so that credentials without
        the right to create buckets work on a bucket that was provisioned for them."""
        with self._errors("look up the bucket"):
            try:
                await self._client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _status(exc) != 404:
                    raise
        options: dict[str, Any] = {}
        if self.config.region != "us-east-1":  # the one region S3 refuses to be named
            options["CreateBucketConfiguration"] = {"LocationConstraint": self.config.region}
        with self._errors("create the bucket"):
            try:
                await self._client.create_bucket(Bucket=self.bucket, **options)
            except ClientError as exc:
                if _code(exc) != "BucketAlreadyOwnedByYou":  # a concurrent creator won
                    raise

    async def ping(self) -> None:
        """Check that the bucket can be used now, for readiness probes: any failure, a
        missing bucket included, raises ObjectStoreUnavailable. Bounded by the configured
        timeouts; wrap it in `asyncio.timeout` for a tighter bound."""
        try:
            with self._errors("ping"):
                await self._client.head_bucket(Bucket=self.bucket)
        except ObjectStoreUnavailable:
            raise
        except ObjectStoreError as exc:
            raise ObjectStoreUnavailable(f"bucket {self.bucket!r} is not usable: {exc}") from exc

    async def put(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> None:
        """Store `data` under `key`, replacing any object there. `metadata`: user metadata
        (ASCII names and values) kept with the object, which `head` returns."""
        check_key(key)
        with self._errors("put", key):
            await self._client.put_object(
                Bucket=self.bucket,
                Key=key,
                Body=data,
                ContentType=content_type,
                Metadata=metadata or {},
            )

    async def put_stream(
        self,
        key: str,
        chunks: AsyncIterable[bytes],
        *,
        content_type: str = "application/octet-stream",
        metadata: dict[str, str] | None = None,
    ) -> int:
        """Store the concatenated `chunks` under `key` and return the total size.
        `metadata` as for `put`: it is given when the upload begins, so it cannot depend
        on the bytes that follow (check them in `chunks` instead: raising there aborts).

        Only one part (`config.part_size`, plus one chunk at most) is held in memory at a
        time: beyond that the object goes up as a multipart upload. The object appears
        only when complete; on any failure, the source's own included, the upload is
        aborted and the exception propagates. Should the abort fail too (the store went
        away), the parts stay invisible to readers until `abort_incomplete_uploads()`.
        """
        check_key(key)
        part_size = self.config.part_size
        buffer = bytearray()
        total = 0
        upload_id: str | None = None
        parts: builtins.list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                buffer += chunk
                total += len(chunk)
                if len(buffer) < part_size:
                    continue
                if upload_id is None:
                    upload_id = await self._begin_upload(key, content_type, metadata)
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, buffer))
                buffer.clear()
            if upload_id is None:  # small enough for one request
                await self.put(key, bytes(buffer), content_type=content_type, metadata=metadata)
                return total
            if buffer:
                parts.append(await self._upload_part(key, upload_id, len(parts) + 1, buffer))
            with self._errors("complete the upload of", key):
                await self._client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                await self._abort_upload(key, upload_id)
            raise
        return total

    async def get(self, key: str) -> bytes:
        """The whole object under `key`; raises ObjectNotFound."""
        return await self._read(key)

    async def get_range(self, key: str, start: int, end: int | None = None) -> bytes:
        """Bytes `start` to `end` (exclusive; None: to the end) of the object. A negative
        `start` means the last `-start` bytes (a log tail). A range past the end of the
        object reads as empty."""
        if start < 0:
            if end is not None:
                raise ValueError("a range from the end cannot also have an end")
            spec = f"bytes={start}"
        elif end is None:
            spec = f"bytes={start}-"
        elif end < start:
            raise ValueError(f"range end {end} is before its start {start}")
        elif end == start:
            return b""
        else:
            spec = f"bytes={start}-{end - 1}"
        return await self._read(key, Range=spec)

    async def get_stream(self, key: str, *, chunk_size: int = MiB) -> AsyncGenerator[bytes, None]:
        """The object's bytes in chunks of at most `chunk_size`, read as they arrive. The
        request is made on the first iteration, which raises ObjectNotFound. Close the
        iterator (`aclose()`) when stopping early, to free the connection at once."""
        check_key(key)
        with self._errors("get", key):
            response = await self._client.get_object(Bucket=self.bucket, Key=key)
        body = response["Body"]
        try:
            while True:
                with self._errors("read", key):
                    chunk = await body.read(chunk_size)
                if not chunk:
                    return
                yield bytes(chunk)
        finally:
            body.close()

    async def head(self, key: str) -> ObjectInfo:
        """Size, etag and modification time of the object; raises ObjectNotFound."""
        check_key(key)
        with self._errors("head", key):
            response = await self._client.head_object(Bucket=self.bucket, Key=key)
        info = _info(key, response["ContentLength"], response)
        metadata = {str(k).lower(): str(v) for k, v in (response.get("Metadata") or {}).items()}
        return msgspec.structs.replace(info, metadata=metadata)

    async def delete(self, key: str) -> None:
        """Delete the object; deleting a missing object is not an error."""
        check_key(key)
        with self._errors("delete", key):
            await self._client.delete_object(Bucket=self.bucket, Key=key)

    async def delete_prefix(self, prefix: str) -> int:
        """Delete every object whose key starts with `prefix` (which must not be empty:
        that would be the whole bucket) and return how many there were."""
        check_prefix(prefix)
        if not prefix:
            raise InvalidKey("delete_prefix needs a prefix; refusing to empty the bucket")
        return await self._delete_matching(prefix)

    async def drop_bucket(self) -> None:
        """Delete every object and pending upload in the bucket, then the bucket. For
        test teardown and decommissioning; nothing checks whether the bucket is in use."""
        await self.abort_incomplete_uploads()
        await self._delete_matching("")
        with self._errors("delete the bucket"):
            try:
                await self._client.delete_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if _code(exc) != "NoSuchBucket":
                    raise

    async def abort_incomplete_uploads(self, prefix: str = "") -> int:
        """Abort every multipart upload under `prefix` that was neither completed nor
        aborted (left behind when the store failed during `put_stream`'s own abort);
        return how many. Do not run it while uploads under `prefix` are in progress."""
        check_prefix(prefix)
        aborted = 0
        for key, upload_id in await self.incomplete_uploads(prefix):
            with self._errors("abort the upload of", key):
                await self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            aborted += 1
        return aborted

    async def incomplete_uploads(self, prefix: str = "") -> builtins.list[tuple[str, str]]:
        """(key, upload id) of every multipart upload under `prefix` still in progress."""
        check_prefix(prefix)
        found: builtins.list[tuple[str, str]] = []
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            with self._errors("list uploads under", prefix):
                page = await self._client.list_multipart_uploads(**options)
            found.extend((u["Key"], u["UploadId"]) for u in page.get("Uploads") or [])
            if not page.get("IsTruncated"):
                return found
            options["KeyMarker"] = page["NextKeyMarker"]
            options["UploadIdMarker"] = page["NextUploadIdMarker"]

    async def list(self, prefix: str = "", *, page_size: int = 1000) -> AsyncIterator[ObjectInfo]:
        """Every object whose key starts with `prefix`, in key order, fetched a page of
        `page_size` at a time."""
        check_prefix(prefix)
        options: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": page_size}
        while True:
            with self._errors("list", prefix):
                page = await self._client.list_objects_v2(**options)
            for item in page.get("Contents") or []:
                yield _info(item["Key"], item["Size"], item)
            if not page.get("IsTruncated"):
                return
            options["ContinuationToken"] = page["NextContinuationToken"]

    # -- internals

    async def _read(self, key: str, **options: Any) -> bytes:
        check_key(key)
        with self._errors("get", key):
            try:
                response = await self._client.get_object(Bucket=self.bucket, Key=key, **options)
            except ClientError as exc:
                if _code(exc) == "InvalidRange":  # only asked for with a Range
                    return b""
                raise
            async with response["Body"] as body:
                return bytes(await body.read())

    async def _begin_upload(
        self, key: str, content_type: str, metadata: dict[str, str] | None
    ) -> str:
        with self._errors("begin the upload of", key):
            response = await self._client.create_multipart_upload(
                Bucket=self.bucket, Key=key, ContentType=content_type, Metadata=metadata or {}
            )
        return str(response["UploadId"])

    async def _upload_part(
        self, key: str, upload_id: str, number: int, data: bytearray
    ) -> dict[str, Any]:
        with self._errors("upload a part of", key):
            response = await self._client.upload_part(
                Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(data)
            )
        return {"PartNumber": number, "ETag": response["ETag"]}

    async def _abort_upload(self, key: str, upload_id: str) -> None:
        # Best effort: the error that made us abort is the one the caller must see.
        with contextlib.suppress(ObjectStoreError), self._errors("abort the upload of", key):
            await self._client.abort_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id
            )

    async def _delete_matching(self, prefix: str) -> int:
        deleted = 0
        batch: builtins.list[str] = []
        # Deleting keys already listed does not disturb the listing's continuation.
        async for item in self.list(prefix):
            batch.append(item.key)
            if len(batch) == _DELETE_BATCH:
                deleted += await self._delete_batch(batch)
                batch = []
        if batch:
            deleted += await self._delete_batch(batch)
        return deleted

    async def _delete_batch(self, keys: builtins.list[str]) -> int:
        with self._errors("delete objects under", keys[0]):
            response = await self._client.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in keys], "Quiet": True},
            )
        errors = response.get("Errors") or []
        if errors:
            first = errors[0]
            raise ObjectStoreError(
                f"{len(errors)} of {len(keys)} objects were not deleted; "
                f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}"
            )
        return len(keys)

    @contextlib.contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Translate driver errors raised inside the block; `key` is the object (or
        prefix) the action is about, for the message and ObjectNotFound."""
        subject = f"{action} {key!r}" if key is not None else action
        try:
            yield
        except ClientError as exc:
            code, status = _code(exc), _status(exc)
            message = f"could not {subject} in bucket {self.bucket!r}: {code or status} {exc}"
            if code in _NOT_FOUND_CODES and key is not None:
                raise ObjectNotFound(key) from exc
            if status >= 500 or code in _TRANSIENT_CODES:
                raise ObjectStoreUnavailable(message) from exc
            raise ObjectStoreError(message) from exc
        except (
            HTTPClientError,
            BotoConnectionError,
            IncompleteReadError,
            aiohttp.ClientError,
            OSError,  # TimeoutError included
        ) as exc:
            raise ObjectStoreUnavailable(
                f"could not {subject}: the object store did not answer ({exc})"
            ) from exc
        except BotoCoreError as exc:
            raise ObjectStoreError(f"could not {subject}: {exc}") from exc


@functools.cache
def _session() -> Any:
    """One botocore session per process: parsing the S3 service model costs about 50 ms
    per session, and a session holds no connections or event-loop state."""
    return get_session()


def _info(key: str, size: int, fields: dict[str, Any]) -> ObjectInfo:
    etag = str(fields.get("ETag", "")).strip('"')
    return ObjectInfo(key=key, size=int(size), last_modified=fields["LastModified"], etag=etag)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
