"""The aiohttp application: resources owned by cleanup_ctx, routes registered per area."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from eventlog.store import EventStore
from runsvc.http import health
from runsvc.http.keys import DATABASE, SETTINGS, STORE
from runsvc.resources import open_database, open_event_store
from runsvc.settings import Settings


async def _database_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_database(app[SETTINGS]) as database:
        app[DATABASE] = database
        yield


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    async with open_event_store(app[SETTINGS], app[DATABASE]) as store:
        app[STORE] = store
        yield


def create_app(settings: Settings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes)
    app[SETTINGS] = settings
    app.cleanup_ctx.append(_database_ctx)
    app.cleanup_ctx.append(_store_ctx)
    health.add_routes(app)
    return app


__all__ = ["EventStore", "create_app"]
