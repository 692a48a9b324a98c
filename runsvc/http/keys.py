"""Typed keys for what the application holds."""

from __future__ import annotations

import collections

from aiohttp import web

from eventlog.fanout import EventHub
from eventlog.listener import ChannelListener
from eventlog.store import EventStore
from projections.runner import ProjectionRunner
from runsvc.http.guessing import FailedAuthLimiter
from runsvc.http.view_cache import RunViewCache
from runsvc.infra.objectstore import ObjectStore
from runsvc.infra.settings import Settings
from runsvc.resources import Database
from runsvc.service.auth import TokenVerifier
from runsvc.service.leases import LeaseService
from runsvc.service.runs import RunService
from runsvc.service.schedules import ScheduleService
from runsvc.service.secrets import SecretStore
from runsvc.service.snapshotter import Snapshotter
from runsvc.service.tokens import RevocationListener


class Projections(list[ProjectionRunner]):
    """The projection runners of this process."""


SETTINGS = web.AppKey("settings", Settings)
DATABASE = web.AppKey("database", Database)
STORE = web.AppKey("store", EventStore)
HUB = web.AppKey("hub", EventHub)
VERIFIER = web.AppKey("verifier", TokenVerifier)
REVOCATIONS = web.AppKey("revocations", RevocationListener)
PROJECTIONS = web.AppKey("projections", Projections)
SERVICE = web.AppKey("service", RunService)
SCHEDULES = web.AppKey("schedules", ScheduleService)
OBJECTS = web.AppKey("objects", ObjectStore)
LEASES = web.AppKey("leases", LeaseService)
LOG_LISTENER = web.AppKey("log_listener", ChannelListener)
SNAPSHOTTER = web.AppKey("snapshotter", Snapshotter)
VIEWS = web.AppKey("views", RunViewCache)


class InFlight(collections.Counter[int]):
    """Requests in progress per connection (keyed by its transport's id)."""


IN_FLIGHT = web.AppKey("in_flight", InFlight)
AUTH_LIMITER = web.AppKey("auth_limiter", FailedAuthLimiter)
SECRETS = web.AppKey("secrets", SecretStore)
