"""`/healthz` (the process is up) and `/readyz` (it can do its work right now)."""

from __future__ import annotations

import asyncio

from aiohttp import web

from runsvc.http.keys import DATABASE, OBJECTS, PROJECTIONS, SETTINGS, SNAPSHOTTER, STORE
from runsvc.http.routing import json_response
from runsvc.infra.deadline import finish_within
from runsvc.wire.api import Check, Health, Readiness

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
