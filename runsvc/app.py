"""The aiohttp application: resources owned by cleanup_ctx (started in order, stopped in
reverse), middlewares, and every endpoint declared in one list."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import structlog
from aiohttp import web

from eventlog.fanout import EventHub
from eventlog.listener import ChannelListener
from projections.registry import all_projections
from projections.run_state import READY_CHANNEL, RunStateProjection
from projections.runner import ProjectionRunner, checkpoint_of, ensure_tables, run_forever
from projections.snapshot import restore_newest
from runsvc.http import dashboard, events, executors, health, runs, schedules, tokens, webhooks
from runsvc.http import secrets as secret_endpoints
from runsvc.http.guessing import FailedAuthLimiter
from runsvc.http.keys import (
    AUTH_LIMITER,
    DATABASE,
    HUB,
    IN_FLIGHT,
    LEASES,
    LOG_LISTENER,
    OBJECTS,
    PROJECTIONS,
    REVOCATIONS,
    SCHEDULES,
    SECRETS,
    SERVICE,
    SETTINGS,
    SNAPSHOTTER,
    STORE,
    VERIFIER,
    VIEWS,
    InFlight,
    Projections,
)
from runsvc.http.metrics import METRICS, Metrics, metrics_handler
from runsvc.http.middleware import body_limit, errors, request_context, track_in_flight
from runsvc.http.openapi import OPENAPI, build_document, openapi_handler
from runsvc.http.routing import Endpoint, register
from runsvc.http.view_cache import RunViewCache
from runsvc.infra.objectstore import ObjectStoreError
from runsvc.infra.settings import Settings
from runsvc.resources import open_database, open_event_store, open_object_store
from runsvc.service.auth import Permission, TokenVerifier, count_tokens, create_token
from runsvc.service.leases import LeaseService
from runsvc.service.runs import RunService
from runsvc.service.schedules import ScheduleService, schedule_loop
from runsvc.service.snapshotter import Snapshotter
from runsvc.service.task_logs import LOG_CHANNEL, archive_pending
from runsvc.service.timers import timer_loop
from runsvc.service.tokens import RevocationListener
from runsvc.service.webhook_delivery import WebhookManager
from runsvc.wire.api import Health, Readiness

log = structlog.get_logger("runsvc")


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_database(app[SETTINGS]) as database:
        app[DATABASE] = database
        # A known token is accepted again after a quarter of the request timeout without an
        # answer from the database: the request still has time to be served from memory.
        wait = min(1.0, app[SETTINGS].request_timeout_s / 4)
        verifier = TokenVerifier(
            database.pool, cache_seconds=app[SETTINGS].token_cache_s, outage_wait_s=wait
        )
        revocations = RevocationListener(database.dsn, verifier)
        await revocations.start()
        app[VERIFIER] = verifier
        app[REVOCATIONS] = revocations
        try:
            yield
        finally:
            await revocations.close()


async def cancel_and_wait(task: asyncio.Task[Any]) -> None:
    """Cancel a background task and wait until it has ended. A cancellation can be lost
    inside a library (seen with the S3 client in the middle of a request: the dump
    finished and the snapshotter went back to sleeping for ten minutes, holding up the
    shutdown), so it is sent again every second until the task is done."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)
    if not task.cancelled() and task.exception() is not None:
        log.warning("background task failed", task=task.get_name(), error=repr(task.exception()))


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_event_store(app[SETTINGS], app[DATABASE]) as store:
        app[STORE] = store
        components = app[METRICS].components
        components.counters["runsvc_events_appended"] = (
            "Events appended by this process.",
            lambda: float(store.appender.events_written),
        )
        yield


async def _objects_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_object_store(app[SETTINGS]) as objects:
        app[OBJECTS] = objects
        yield


async def _snapshotter_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    snapshotter = Snapshotter(
        app[DATABASE].pool,
        app[OBJECTS],
        interval_s=settings.snapshot_interval_s,
        keep=settings.snapshot_keep,
    )
    app[SNAPSHOTTER] = snapshotter
    app[METRICS].components.gauges["runsvc_snapshot_age_seconds"] = (
        "Seconds since the newest index dump in object storage was written.",
        lambda: snapshotter.age_s,
    )
    app[METRICS].components.gauges["runsvc_snapshot_failures"] = (
        "Index dumps failed in a row (the object store may be unreachable).",
        lambda: float(snapshotter.failures),
    )
    task = asyncio.create_task(snapshotter.run(), name="snapshotter")
    yield
    await cancel_and_wait(task)


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    """The command side, executors' leases, and in the background the timer loop."""
    settings = app[SETTINGS]
    database = app[DATABASE]
    service = RunService(
        app[STORE], max_tasks=settings.max_tasks, max_foreach_items=settings.max_foreach_items
    )
    ready = ChannelListener(database.dsn, READY_CHANNEL)
    logs = ChannelListener(database.dsn, LOG_CHANNEL)
    await ready.start()
    await logs.start()
    leases = LeaseService(
        service,
        ready,
        lease_ttl_s=settings.lease_ttl_s,
        heartbeat_interval_s=settings.heartbeat_interval_s,
        max_log_bytes=settings.max_log_bytes,
        max_output_bytes=settings.max_output_bytes,
        secrets=app[SECRETS],
    )
    app[SERVICE] = service
    app[LEASES] = leases
    schedule_service = app[SCHEDULES] = ScheduleService(
        app[STORE], service, grace=timedelta(seconds=settings.schedule_grace_s)
    )
    _count_schedule_work(app[METRICS], schedule_service)
    app[LOG_LISTENER] = logs
    objects = app[OBJECTS]
    jobs = [
        (1, leases.expire),
        (10, leases.forget_settled),
        (5, lambda: archive_pending(database.pool, objects)),
    ]
    timers = asyncio.create_task(
        timer_loop(service, jobs=jobs, interval=settings.timer_interval_s), name="timers"
    )
    firing = asyncio.create_task(
        schedule_loop(schedule_service, interval=settings.timer_interval_s), name="schedules"
    )
    yield
    await cancel_and_wait(firing)
    await cancel_and_wait(timers)
    await ready.close()
    await logs.close()


def _count_schedule_work(metrics: Metrics, service: ScheduleService) -> None:
    counts = service.counts
    metrics.components.labelled["runsvc_schedule_firings"] = (
        "Runs this process created for schedules, by trigger (clock or manual).",
        "trigger",
        lambda: {k: float(v) for k, v in counts.fired.items()},
    )
    metrics.components.labelled["runsvc_schedule_skipped_firings"] = (
        "Fire times this process let go without a run, by reason (missed or overlap).",
        "reason",
        lambda: {k: float(v) for k, v in counts.skipped.items()},
    )


async def _hub_ctx(app: web.Application) -> AsyncIterator[None]:
    hub = EventHub(app[STORE], buffer=app[SETTINGS].subscriber_buffer)
    await hub.start()
    app[HUB] = hub
    app[METRICS].components.gauges["runsvc_subscribers"] = (
        "Websocket subscribers connected to this process.",
        lambda: float(hub.subscribers),
    )
    app[METRICS].components.counters["runsvc_subscriber_overflows"] = (
        "Times a slow subscriber's buffer overflowed and it was served from storage.",
        lambda: float(hub.overflows),
    )
    yield
    await hub.close()


async def _webhooks_ctx(app: web.Application) -> AsyncIterator[None]:
    """Delivering webhooks: the ones whose lease this process holds, each in its task."""
    settings = app[SETTINGS]
    manager = WebhookManager(
        app[STORE],
        app[DATABASE].dsn,
        timeout_s=settings.webhook_timeout_s,
        retry_for_s=settings.webhook_retry_for_s,
        lease_s=settings.webhook_lease_s,
    )
    components = app[METRICS].components
    components.labelled_counters["runsvc_webhook_deliveries"] = (
        "Webhook delivery attempts by this process, by outcome.",
        "outcome",
        lambda: {k: float(v) for k, v in manager.outcomes.items()},
    )
    components.labelled["runsvc_webhook_lag_events"] = (
        "Log positions between the head and the checkpoint of each webhook this process delivers.",
        "webhook",
        lambda: {k: lag.events for k, lag in manager.lags().items()},
    )
    components.labelled["runsvc_webhook_lag_seconds"] = (
        "Age of the oldest event not yet delivered, per webhook this process delivers.",
        "webhook",
        lambda: {k: lag.seconds for k, lag in manager.lags().items()},
    )
    await manager.start()
    yield
    await manager.close()


async def _restore_empty_index(app: web.Application) -> None:
    """A new or wiped index on a log that is not empty: start from the newest dump in
    object storage, so only the events after it need replaying."""
    pool = app[DATABASE].pool
    position = await checkpoint_of(pool, "index")
    if position or not await app[STORE].head():
        return
    try:
        restored = await restore_newest(pool, app[OBJECTS])
    except ObjectStoreError as exc:
        log.warning("no dump restored; the index rebuilds from the log", error=str(exc))
        return
    if restored is not None:
        dump, at = restored
        log.info("index restored from dump", key=dump.key, position=at)


async def _projections_ctx(app: web.Application) -> AsyncIterator[None]:
    """Every projection, caught up and then followed live in the background."""
    async with app[DATABASE].pool.acquire() as connection:
        for projection in all_projections():
            await ensure_tables(connection, projection)
    await _restore_empty_index(app)
    views = app[VIEWS] = RunViewCache()
    runners = Projections(
        ProjectionRunner(
            app[STORE],
            p,
            on_applied=views.invalidate if p.name == RunStateProjection.name else None,
        )
        for p in all_projections()
    )
    for runner in runners:
        await runner.start()
    tasks = [asyncio.create_task(run_forever(r), name=f"projection-{r.name}") for r in runners]
    app[PROJECTIONS] = runners
    app[METRICS].components.labelled["runsvc_projection_lag"] = (
        "Log positions between the newest event and the projection's checkpoint.",
        "projection",
        lambda: {r.name: float(r.lag) for r in runners},
    )
    yield
    await asyncio.gather(*(cancel_and_wait(task) for task in tasks))


async def _first_token_ctx(app: web.Application) -> AsyncIterator[None]:
    """On first start with no tokens, create an admin token and write it, readable by the
    owner only, to the data directory, where the CLI finds it when talking to this local
    server. It is shown once on the terminal, and only on one: output that is not a
    terminal ends up in log files and collectors, where a token must never be."""
    settings = app[SETTINGS]
    pool = app[DATABASE].pool
    if settings.bootstrap_admin_token and await count_tokens(pool) == 0:
        issued = await create_token(pool, role="admin", name="admin")
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path = settings.data_dir / "admin.token"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(issued.token + "\n")
        if sys.stdout.isatty():
            print(f"\n  runsvc admin token (shown once): {issued.token}\n  (also in {path})\n")
        else:
            log.info(
                "admin token created; it is in the file, readable by its owner only", path=str(path)
            )
    yield


async def _end_long_polls(app: web.Application) -> None:
    if LEASES in app:
        app[LEASES].shut_down()


OPERATIONS = [
    Endpoint(
        "GET",
        "/healthz",
        health.healthz,
        Permission.OPEN,
        "Liveness",
        "operations",
        responses={200: Health},
        bounded=False,
    ),
    Endpoint(
        "GET",
        "/readyz",
        health.readyz,
        Permission.OPEN,
        "Readiness",
        "operations",
        responses={200: Readiness, 503: Readiness},
        # Each check has its own short bound; the answer must be the readiness body.
        bounded=False,
    ),
    Endpoint(
        "GET",
        "/metrics",
        metrics_handler,
        Permission.OPEN,
        "Prometheus metrics",
        "operations",
        responses={200: None},
        response_content_type="text/plain",
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        openapi_handler,
        Permission.OPEN,
        "This API's OpenAPI document",
        "operations",
        responses={200: None},
    ),
]


def all_endpoints() -> list[Endpoint]:
    return [
        *OPERATIONS,
        *runs.ENDPOINTS,
        *health.ENDPOINTS,
        *tokens.ENDPOINTS,
        *events.ENDPOINTS,
        *executors.EXECUTOR_ENDPOINTS,
        *executors.TASK_ENDPOINTS,
        *dashboard.ENDPOINTS,
        *schedules.ENDPOINTS,
        *webhooks.ENDPOINTS,
        *secret_endpoints.ENDPOINTS,
    ]


def create_app(settings: Settings, *, extra: Sequence[Endpoint] = ()) -> web.Application:
    """The service. `extra` endpoints exist for tests (e.g. a route made to fail)."""
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[track_in_flight, request_context, errors, body_limit],
    )
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[events.WEBSOCKETS] = events.OpenSockets()
    app[IN_FLIGHT] = InFlight()
    app[AUTH_LIMITER] = FailedAuthLimiter(limit=settings.auth_failure_limit)
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_first_token_ctx)
    app.cleanup_ctx.append(_secrets_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_objects_ctx)
    app.cleanup_ctx.append(_projections_ctx)
    app.cleanup_ctx.append(_snapshotter_ctx)
    app.cleanup_ctx.append(_service_ctx)
    app.cleanup_ctx.append(_hub_ctx)
    app.cleanup_ctx.append(_webhooks_ctx)
    app.on_shutdown.append(events.close_websockets)
    app.on_shutdown.append(_end_long_polls)
    endpoints = [*all_endpoints(), *extra]
    register(app, endpoints)
    app[OPENAPI] = build_document(endpoints, version=health.service_version())
    return app


async def _secrets_ctx(app: web.Application) -> AsyncIterator[None]:
    """The key ring that seals secrets, checked against the database: keys that cannot
    open what is sealed there stop the start (KeyRingError) rather than hand out
    garbage later."""
    from runsvc.infra.sealing import load_ring
    from runsvc.service.secrets import SecretStore, check_ring

    settings = app[SETTINGS]
    ring = await asyncio.to_thread(
        load_ring,
        key=settings.secrets_key,
        key_file=settings.secrets_key_file,
        data_dir=settings.data_dir,
    )
    await check_ring(app[DATABASE].pool, ring)
    app[SECRETS] = SecretStore(app[DATABASE].pool, ring)
    log.info("secrets keys checked", key_id=ring.newest, keys=len(ring.ids))
    yield
