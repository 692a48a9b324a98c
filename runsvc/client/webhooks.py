"""The webhooks endpoints as typed calls. A webhook's secret goes out in the create
request only; no answer carries it back."""

from __future__ import annotations

import builtins
from urllib.parse import quote

from runsvc.client.base import ApiClient
from runsvc.wire.webhooks import (
    CreateWebhookRequest,
    Delivery,
    DeliveryList,
    Webhook,
    WebhookList,
)

WEBHOOKS = "/api/v1/webhooks"


def _path(webhook_id: str, rest: str = "") -> str:
    return f"{WEBHOOKS}/{quote(webhook_id, safe='')}{rest}"


class WebhooksClient:
    """Create, read and manage webhooks over an open `ApiClient`. Only reads are retried
    on transient failures; a create whose answer is lost is for the caller to check."""

    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def create(self, request: CreateWebhookRequest) -> Webhook:
        return await self.api.call("POST", WEBHOOKS, into=Webhook, json=request)

    async def list(self) -> builtins.list[Webhook]:
        return (await self.api.call("GET", WEBHOOKS, into=WebhookList)).webhooks

    async def get(self, webhook_id: str) -> Webhook:
        return await self.api.call("GET", _path(webhook_id), into=Webhook)

    async def delete(self, webhook_id: str) -> None:
        await self.api.request("DELETE", _path(webhook_id))

    async def resume(self, webhook_id: str) -> Webhook:
        """Resume a failing webhook from the event it could not deliver (an active one
        is answered as it is)."""
        return await self.api.call(
            "POST", _path(webhook_id, "/resume"), into=Webhook, idempotent=True
        )

    async def deliveries(self, webhook_id: str, limit: int = 50) -> builtins.list[Delivery]:
        """The newest attempts first."""
        found = await self.api.call(
            "GET",
            _path(webhook_id, "/deliveries"),
            into=DeliveryList,
            params={"limit": str(limit)},
        )
        return found.deliveries
