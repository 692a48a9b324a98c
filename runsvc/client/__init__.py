"""Typed async clients of the runsvc HTTP API."""

from __future__ import annotations

from runsvc.client.base import (
    ApiClient,
    ApiError,
    BadRequestError,
    ConflictError,
    ConnectionFailed,
    ForbiddenError,
    InvalidResponse,
    NotFoundError,
    Response,
    RetryPolicy,
    ServerError,
    TooLargeError,
    UnauthorizedError,
)
from runsvc.client.executor import ExecutorClient, LeaseLost
from runsvc.client.follow import follow_events
from runsvc.client.runs import RunsClient
from runsvc.client.webhooks import WebhooksClient

__all__ = [
    "ApiClient",
    "ApiError",
    "BadRequestError",
    "ConflictError",
    "ConnectionFailed",
    "ExecutorClient",
    "ForbiddenError",
    "InvalidResponse",
    "LeaseLost",
    "NotFoundError",
    "Response",
    "RetryPolicy",
    "RunsClient",
    "ServerError",
    "TooLargeError",
    "UnauthorizedError",
    "WebhooksClient",
    "follow_events",
]
