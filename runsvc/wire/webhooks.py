"""The bodies of the webhooks endpoints (`/api/v1/webhooks`). A webhook's signing secret
is in the create request only: no answer carries it."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

WebhookState = Literal["active", "failing"]
DeliveryOutcome = Literal["delivered", "rejected", "timeout", "error"]

# Positions are PostgreSQL bigints.
Position = Annotated[int, msgspec.Meta(ge=0, le=2**63 - 1)]


class CreateWebhookRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`POST /api/v1/webhooks`."""

    url: Annotated[str, msgspec.Meta(description="where events are POSTed: an http or https URL")]
    secret: Annotated[
        str,
        msgspec.Meta(
            description="the key of each delivery's X-Runsvc-Signature (HMAC-SHA256); "
            "write-only: never shown again"
        ),
    ]
    types: Annotated[
        list[str],
        msgspec.Meta(
            description="event types (run_phase_changed, ...) or sets of them: run_finished, "
            "approval_waiting, all"
        ),
    ]
    group: Annotated[
        str, msgspec.Meta(description="the events of runs in this group and below it")
    ] = "/"
    after: Annotated[
        Position | None,
        msgspec.Meta(
            description="deliver the events after this log position; by default the head "
            "of the log at creation (only events written from then on)"
        ),
    ] = None


class WebhookLag(msgspec.Struct, frozen=True):
    """How far the webhook trails the log: log positions between its checkpoint and the
    head, and the age of the oldest matching event not yet delivered (0 when none)."""

    events: int
    seconds: float


class WebhookLease(msgspec.Struct, frozen=True):
    """The service process delivering the webhook, and until when its lease holds."""

    owner: str
    expires_at: datetime


class Webhook(msgspec.Struct, frozen=True, kw_only=True):
    """A webhook as the API shows it: never its secret."""

    id: str
    url: str
    group: str
    types: list[str]
    created_by: str
    created_at: datetime
    state: WebhookState
    position: int
    lag: WebhookLag
    attempts: int
    last_error: str | None
    failing_since: datetime | None
    last_delivered_at: datetime | None
    lease: WebhookLease | None


class WebhookList(msgspec.Struct, frozen=True):
    webhooks: list[Webhook]


class Delivery(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt to deliver one event (the receiver's body is never stored)."""

    position: int
    event_type: str
    attempt: int
    at: datetime
    outcome: DeliveryOutcome
    latency_ms: float
    status_code: int | None
    error: str | None


class DeliveryList(msgspec.Struct, frozen=True):
    """The newest attempts first."""

    deliveries: list[Delivery]
