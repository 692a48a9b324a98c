"""Index dumps in object storage: create, list, restore.

A dump is one object: zstandard-compressed MessagePack, written as a stream of frames so
neither a dump nor a restore ever holds the whole index in memory:

    header   {"format": 1, "projection": "index", "version": V, "position": P, ...}
    batches  [[row], [row], ...]        (up to `batch_rows` rows each)
    trailer  {"rows": N, "sha256": H}   (sha256 over the encoded header and batches)

The dump is read in one REPEATABLE READ transaction together with the index checkpoint,
so its rows are exactly the index at log position P. Publishing is atomic: the dump is
uploaded under its own key first (multipart; an aborted upload leaves nothing), then the
small `latest.json` pointer is replaced. A restore verifies the trailer's row count and
checksum before it commits anything: a corrupt or truncated dump is refused and the caller
falls back to the previous one.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import msgspec
import structlog
import zstandard

from projections.index import IndexProjection
from runsvc.infra.objectstore import ObjectNotFound, ObjectStore

log = structlog.get_logger("runsvc.snapshot")

PREFIX = "snapshots/index/"
POINTER = PREFIX + "latest.json"
FORMAT = 1
_COLUMNS = (
    "run_id, group_path, name, counter, phase, result, created_at, started_at, finished_at, "
    "created_position, updated_position"
)


class DumpHeader(msgspec.Struct, frozen=True):
    format: int
    projection: str
    version: int
    position: int
    created_at: datetime


class DumpTrailer(msgspec.Struct, frozen=True):
    rows: int
    sha256: str


class DumpInfo(msgspec.Struct, frozen=True):
    """A published dump, as the pointer and `snapshot list` describe it."""

    key: str
    position: int
    rows: int
    size: int
    sha256: str
    created_at: datetime


Progress = Callable[[int, int | None], None]
"""Called after each batch with the rows done so far and the total when it is known."""


class CorruptDump(Exception):
    """The dump does not match its checksum or is cut short; nothing was restored."""


_encoder = msgspec.msgpack.Encoder()
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime | None) -> int | None:
    if value is None:
        return None
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromtimestamp(value / 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def _frame(payload: bytes) -> bytes:
    """A length-prefixed frame, so the reader can split the decompressed stream."""
    return len(payload).to_bytes(4, "big") + payload


class _DumpState:
    def __init__(self, progress: Progress | None, total: int | None) -> None:
        self.rows = 0
        self.progress = progress
        self.total = total

    def advance(self, rows: int) -> None:
        self.rows = rows
        if self.progress is not None:
            self.progress(rows, self.total)


async def _dump_frames(
    connection: asyncpg.Connection, position: int, batch_rows: int, state: _DumpState
) -> AsyncIterator[bytes]:
    digest = hashlib.sha256()
    projection = IndexProjection()
    header = _frame(
        _encoder.encode(
            DumpHeader(
                format=FORMAT,
                projection=projection.name,
                version=projection.version,
                position=position,
                created_at=datetime.now(UTC),
            )
        )
    )
    digest.update(header)
    yield header
    rows = 0
    batch: list[tuple[object, ...]] = []
    async for record in connection.cursor(
        f"SELECT {_COLUMNS} FROM runs_index ORDER BY created_position", prefetch=batch_rows
    ):
        batch.append(
            (
                record[0],
                record[1],
                record[2],
                record[3],
                record[4],
                record[5],
                _micros(record[6]),
                _micros(record[7]),
                _micros(record[8]),
                record[9],
                record[10],
            )
        )
        if len(batch) >= batch_rows:
            frame = _frame(_encoder.encode(batch))
            digest.update(frame)
            rows += len(batch)
            batch = []
            yield frame
            state.advance(rows)
    if batch:
        frame = _frame(_encoder.encode(batch))
        digest.update(frame)
        rows += len(batch)
        yield frame
    state.advance(rows)
    yield _frame(b"")  # an empty frame ends the batches
    yield _frame(_encoder.encode(DumpTrailer(rows=rows, sha256=digest.hexdigest())))


async def _compressed(frames: AsyncIterator[bytes], chunk: int = 1 << 20) -> AsyncIterator[bytes]:
    compressor = zstandard.ZstdCompressor(level=6).compressobj()
    pending = bytearray()
    async for frame in frames:
        pending += compressor.compress(frame)
        if len(pending) >= chunk:
            yield bytes(pending)
            pending.clear()
    pending += compressor.flush()
    if pending:
        yield bytes(pending)


class _Counting:
    """Counts and hashes the compressed bytes on their way to storage."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self.size = 0
        self.digest = hashlib.sha256()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._chunks:
            self.size += len(chunk)
            self.digest.update(chunk)
            yield chunk


async def create_dump(
    pool: asyncpg.Pool,
    objects: ObjectStore,
    *,
    keep: int = 5,
    batch_rows: int = 5000,
    progress: Progress | None = None,
) -> DumpInfo:
    """Stream the index to a new dump, publish it as `latest`, and prune to `keep` dumps."""
    async with (
        pool.acquire() as connection,
        connection.transaction(isolation="repeatable_read", readonly=True),
    ):
        position = await connection.fetchval(
            "SELECT position FROM projection_checkpoints WHERE name = 'index'"
        )
        if position is None:
            raise RuntimeError("the index projection has not been created yet")
        created = datetime.now(UTC)
        key = f"{PREFIX}{int(position):020d}-{created:%Y%m%dT%H%M%S%fZ}.msgpack.zst"
        # Counting costs a scan, so only when someone watches the progress.
        total = await connection.fetchval("SELECT count(*) FROM runs_index") if progress else None
        state = _DumpState(progress, total)
        body = _Counting(_compressed(_dump_frames(connection, int(position), batch_rows, state)))
        await objects.put_stream(key, aiter(body))
    info = DumpInfo(
        key=key,
        position=int(position),
        rows=state.rows,
        size=body.size,
        sha256=body.digest.hexdigest(),
        created_at=created,
    )
    await objects.put(POINTER, msgspec.json.encode(info), content_type="application/json")
    await prune(objects, keep)
    return info


async def list_dumps(objects: ObjectStore) -> list[DumpInfo]:
    """Published dumps, newest first (by the log position they reflect)."""
    found = []
    async for item in objects.list(PREFIX):
        name = item.key[len(PREFIX) :]
        if not name.endswith(".msgpack.zst"):
            continue
        position = int(name.split("-", 1)[0])
        found.append(
            DumpInfo(
                key=item.key,
                position=position,
                rows=-1,
                size=item.size,
                sha256="",
                created_at=item.last_modified,
            )
        )
    return sorted(found, key=lambda d: (d.position, d.key), reverse=True)


async def latest_pointer(objects: ObjectStore) -> DumpInfo | None:
    try:
        return msgspec.json.decode(await objects.get(POINTER), type=DumpInfo)
    except ObjectNotFound:
        return None


async def prune(objects: ObjectStore, keep: int) -> list[str]:
    """Delete all but the newest `keep` dumps (never the one `latest` points to)."""
    pointer = await latest_pointer(objects)
    dumps = await list_dumps(objects)
    doomed = [d.key for d in dumps[keep:] if pointer is None or d.key != pointer.key]
    for key in doomed:
        await objects.delete(key)
    return doomed


class _FrameReader:
    """Splits the decompressed byte stream back into frames."""

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._decompressor = zstandard.ZstdDecompressor().decompressobj()
        self._buffer = bytearray()
        self._ended = False

    async def next(self) -> bytes:
        while True:
            if len(self._buffer) >= 4:
                size = int.from_bytes(self._buffer[:4], "big")
                if len(self._buffer) >= 4 + size:
                    frame = bytes(self._buffer[: 4 + size])
                    del self._buffer[: 4 + size]
                    return frame
            if self._ended:
                raise CorruptDump("the dump ends in the middle of a frame")
            try:
                chunk = await anext(self._chunks)
            except StopAsyncIteration:
                self._ended = True
                continue
            try:
                self._buffer += self._decompressor.decompress(chunk)
            except zstandard.ZstdError as exc:
                raise CorruptDump(f"the dump does not decompress: {exc}") from exc


class IncompatibleDump(CorruptDump):
    """The dump was written for another version of the index; nothing was restored."""


async def _load(
    objects: ObjectStore, key: str, sink: asyncpg.Connection, state: _DumpState
) -> DumpHeader:
    """Read dump `key` end to end, copying its rows into `sink`'s `runs_index`, and check
    it against its trailer. Raises CorruptDump; the caller's transaction then rolls back."""
    chunks = objects.get_stream(key)
    try:
        return await _load_frames(_FrameReader(aiter(chunks)), sink, state)
    finally:
        # Closing the stream releases the HTTP response even when reading stopped early.
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()


async def _load_frames(
    reader: _FrameReader, sink: asyncpg.Connection, state: _DumpState
) -> DumpHeader:
    digest = hashlib.sha256()
    header_frame = await reader.next()
    digest.update(header_frame)
    try:
        header = msgspec.msgpack.decode(header_frame[4:], type=DumpHeader)
    except msgspec.DecodeError as exc:
        raise CorruptDump(f"unreadable dump header: {exc}") from exc
    version = IndexProjection.version
    if header.format != FORMAT or header.version != version:
        raise IncompatibleDump(
            f"dump format {header.format}, index version {header.version}; "
            f"this service reads format {FORMAT}, index version {version}"
        )
    rows = 0
    end = _frame(b"")
    while (frame := await reader.next()) != end:
        digest.update(frame)
        try:
            batch = msgspec.msgpack.decode(frame[4:])
        except msgspec.DecodeError as exc:
            raise CorruptDump(f"unreadable batch: {exc}") from exc
        rows += len(batch)
        await sink.copy_records_to_table(
            "runs_index",
            records=[
                (
                    *row[:6],
                    _from_micros(row[6]),
                    _from_micros(row[7]),
                    _from_micros(row[8]),
                    row[9],
                    row[10],
                )
                for row in batch
            ],
        )
        state.advance(rows)
    try:
        trailer = msgspec.msgpack.decode((await reader.next())[4:], type=DumpTrailer)
    except msgspec.DecodeError as exc:
        raise CorruptDump(f"unreadable trailer: {exc}") from exc
    if trailer.rows != rows or trailer.sha256 != digest.hexdigest():
        raise CorruptDump("the dump does not match its checksum")
    return header


async def restore_dump(
    pool: asyncpg.Pool,
    objects: ObjectStore,
    key: str,
    *,
    progress: Progress | None = None,
    total_rows: int | None = None,
) -> int:
    """Replace the index with dump `key` and move the index checkpoint to its position, in
    one transaction; the projection runner then replays only the events after it. Returns
    that position. Raises CorruptDump, changing nothing, on a bad dump."""
    async with pool.acquire() as connection, connection.transaction():
        await connection.execute(
            "SELECT 1 FROM projection_checkpoints WHERE name = 'index' FOR UPDATE"
        )
        await connection.execute("TRUNCATE runs_index")
        header = await _load(objects, key, connection, _DumpState(progress, total_rows))
        await connection.execute(
            """
            INSERT INTO projection_checkpoints (name, position, version) VALUES ('index', $1, $2)
            ON CONFLICT (name) DO UPDATE SET position = $1, version = $2, updated_at = now()
            """,
            header.position,
            header.version,
        )
        return header.position


async def restore_newest(
    pool: asyncpg.Pool, objects: ObjectStore, *, progress: Progress | None = None
) -> tuple[DumpInfo, int] | None:
    """Restore the newest dump that reads back whole: the one `latest` points to, else the
    next older ones. Returns the dump and its position, or None when there is none."""
    pointer = await latest_pointer(objects)
    candidates = await list_dumps(objects)
    if pointer is not None:
        candidates.sort(key=lambda d: d.key != pointer.key)
    for dump in candidates:
        try:
            rows = pointer.rows if pointer is not None and pointer.key == dump.key else None
            position = await restore_dump(
                pool, objects, dump.key, progress=progress, total_rows=rows
            )
            return dump, position
        except CorruptDump as exc:
            log.warning("dump refused; trying an older one", key=dump.key, reason=str(exc))
    return None
