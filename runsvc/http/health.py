"""`/healthz` (the process is up), `/readyz` (it can do its work right now), and
`/api/v1/status` (how it is doing: what the dashboard's health page shows)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version

from aiohttp import web

from runsvc.http.events import WEBSOCKETS
from runsvc.http.keys import (
    DATABASE,
    LEASES,
    OBJECTS,
    PROJECTIONS,
    SERVICE,
    SETTINGS,
    SNAPSHOTTER,
    STORE,
)
from runsvc.http.routing import Endpoint, json_response
from runsvc.infra.deadline import finish_within
from runsvc.service.auth import Permission
from runsvc.wire.api import (
    Check,
    Health,
    ProjectionStatus,
    Readiness,
    ServiceStatus,
    SnapshotStatus,
)

# How long a readiness check waits for a store before it counts it as not answering.
CHECK_WAIT_S = 2.0


async def healthz(_request: web.Request) -> web.Response:
    return json_response(Health(status="ok"))


async def readyz(request: web.Request) -> web.Response:
    database, objects = await asyncio.gather(
        _check_database(request.app), _check_object_store(request.app)
    )
    checks = [database]
    store = request.app[STORE]
    checks.append(
        Check(
            name="event_listener",
            ok=store.notifier.connected,
            detail=None if store.notifier.connected else "reconnecting",
        )
    )
    checks.append(objects)
    limit = request.app[SETTINGS].readiness_max_lag
    for runner in request.app[PROJECTIONS]:
        lag = runner.lag
        checks.append(
            Check(
                name=f"projection:{runner.name}",
                ok=lag <= limit,
                detail=None if lag <= limit else f"{lag} positions behind (limit {limit})",
            )
        )
    ready = all(c.ok for c in checks)
    return json_response(Readiness(ready=ready, checks=checks), status=200 if ready else 503)


async def _check_object_store(app: web.Application) -> Check:
    snapshotter = app[SNAPSHOTTER]
    try:
        await finish_within(CHECK_WAIT_S, app[OBJECTS].ping())
    except Exception as exc:  # unreachable or slow: the service runs on, snapshots wait
        return Check(
            name="object_store",
            ok=False,
            detail=f"{type(exc).__name__}; snapshots delayed ({snapshotter.failures} failed)",
        )
    age = snapshotter.age_s
    detail = f"last index dump {age:.0f}s ago" if age is not None else "no index dump yet"
    return Check(name="object_store", ok=True, detail=detail)


async def _check_database(app: web.Application) -> Check:
    try:
        await finish_within(CHECK_WAIT_S, app[DATABASE].pool.fetchval("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the detail says which
        return Check(name="database", ok=False, detail=type(exc).__name__)
    return Check(name="database", ok=True)


def service_version() -> str:
    try:
        return version("runsvc")
    except PackageNotFoundError:
        return "0"


# An executor long-polls its claims a minute at a time at most and renews its leases more
# often than that: one unseen for five minutes is gone.
EXECUTORS_WITHIN = timedelta(minutes=5)


async def status(request: web.Request) -> web.Response:
    app = request.app
    now = app[SERVICE].clock()
    leases = app[LEASES]
    head, running = await asyncio.gather(app[STORE].head(), leases.running_by_executor())
    executors = await leases.seen.recent(now, EXECUTORS_WITHIN, running)
    snapshotter = app[SNAPSHOTTER]
    dump = snapshotter.last
    return json_response(
        ServiceStatus(
            version=service_version(),
            now=now,
            head=head,
            projections=[
                ProjectionStatus(
                    name=runner.name, position=runner.position, lag=max(0, head - runner.position)
                )
                for runner in app[PROJECTIONS]
            ],
            snapshot=SnapshotStatus(
                age_s=snapshotter.age_s,
                position=dump.position if dump else None,
                rows=dump.rows if dump else None,
                created_at=dump.created_at if dump else None,
                failures=snapshotter.failures,
                last_error=snapshotter.last_error,
            ),
            executors_within_s=int(EXECUTORS_WITHIN.total_seconds()),
            executors=executors,
            websocket_subscribers=len(app[WEBSOCKETS]),
            max_subscribers=app[SETTINGS].max_subscribers,
        )
    )


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "GET",
        "/api/v1/status",
        status,
        Permission.READ,
        "The service's status: projections, index dumps, executors, subscribers",
        "operations",
        responses={200: ServiceStatus},
    ),
]
