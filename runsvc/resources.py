"""The long-lived resources of a service process, each an async context manager so that
`runsvc serve` (through aiohttp's cleanup_ctx) and the operator commands (rebuild,
snapshot, token) open and close them the same way."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import asyncpg
import structlog

from eventlog.postgres import create_pool, migrate
from eventlog.store import EventStore
from runsvc.infra.objectstore import ObjectStore, ObjectStoreConfig, ObjectStoreError
from runsvc.infra.postgres import EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.infra.settings import Settings
from runsvc.infra.supervise import keep_alive
from runsvc.service.schema import MIGRATION_SETS

log = structlog.get_logger("runsvc")


@dataclass(frozen=True)
class Database:
    dsn: str
    pool: asyncpg.Pool


@asynccontextmanager
async def open_database(settings: Settings) -> AsyncIterator[Database]:
    """A migrated database: the configured one, or the embedded server under the data
    directory (started here, stopped on exit unless another process was using it)."""
    embedded: EmbeddedPostgres | None = None
    dsn = settings.database_url
    if dsn is None:
        embedded = EmbeddedPostgres(settings.data_dir)
        log.info("starting embedded postgresql", data_dir=str(embedded.pgdata))
        dsn = await embedded.astart()
    supervisor = _supervise("postgresql", embedded)
    try:
        connection = await asyncpg.connect(dsn)
        try:
            applied = await migrate(connection, MIGRATION_SETS)
        finally:
            await connection.close()
        if applied:
            log.info("migrations applied", migrations=applied)
        pool = await create_pool(
            dsn,
            max_size=settings.db_pool_size,
            server_settings={"statement_timeout": f"{int(settings.statement_timeout_s * 1000)}"},
        )
        try:
            yield Database(dsn, pool)
        finally:
            await pool.close()
    finally:
        await _end(supervisor)
        if embedded is not None:
            log.info("stopping embedded postgresql")
            await asyncio.to_thread(embedded.stop)
            log.info("embedded postgresql stopped")


@asynccontextmanager
async def open_event_store(settings: Settings, database: Database) -> AsyncIterator[EventStore]:
    store = EventStore(database.pool, dsn=database.dsn, max_payload_bytes=settings.max_event_bytes)
    await store.start()
    try:
        yield store
    finally:
        await store.close()


@asynccontextmanager
async def open_object_store(settings: Settings) -> AsyncIterator[ObjectStore]:
    """The configured object store, or an embedded SeaweedFS under the data directory
    (started here, stopped on exit) with the keys it generated, not the settings' ones.
    An unreachable store does not stop the service: what needs it (snapshots, log
    archiving) retries later."""
    embedded: EmbeddedSeaweed | None = None
    endpoint = settings.s3_endpoint
    access_key, secret_key = settings.s3_access_key, settings.s3_secret_key
    if endpoint is None:
        embedded = EmbeddedSeaweed(settings.data_dir / "s3")
        log.info("starting embedded object store", data_dir=str(embedded.data_dir))
        endpoint = await embedded.astart()
        access_key, secret_key = embedded.credentials.access_key, embedded.credentials.secret_key
    supervisor = _supervise("seaweedfs", embedded)
    try:
        config = ObjectStoreConfig(
            endpoint=endpoint,
            bucket=settings.s3_bucket,
            region=settings.s3_region,
            access_key=access_key,
            secret_key=secret_key,
        )
        async with ObjectStore.connect(config) as objects:
            try:
                await objects.ensure_bucket()
            except ObjectStoreError as exc:
                log.warning("object store not reachable yet", error=str(exc))
            yield objects
    finally:
        await _end(supervisor)
        if embedded is not None:
            log.info("stopping embedded object store")
            await embedded.astop()


def _supervise(
    name: str, embedded: EmbeddedPostgres | EmbeddedSeaweed | None
) -> asyncio.Task[None] | None:
    """Start the server again whenever it dies, until the service closes it."""
    if embedded is None:
        return None
    return asyncio.create_task(
        keep_alive(name, embedded.alive, embedded.astart), name=f"supervise-{name}"
    )


async def _end(supervisor: asyncio.Task[None] | None) -> None:
    if supervisor is not None:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
