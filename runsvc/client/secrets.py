"""Secrets over HTTP (admin tokens only): set, list, delete. No call returns a value."""

from __future__ import annotations

import builtins
from urllib.parse import quote

from runsvc.client.base import ApiClient
from runsvc.wire.api import SecretInfo, SecretList, SetSecretRequest

SECRETS = "/api/v1/secrets"


class SecretsClient:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def set(self, name: str, value: str, group: str = "/") -> None:
        body = SetSecretRequest(value=value, group=group)
        await self.api.request("PUT", f"{SECRETS}/{quote(name, safe='')}", json=body)

    async def list(self, group: str | None = None) -> builtins.list[SecretInfo]:
        params = {"group": group} if group else None
        found = await self.api.call("GET", SECRETS, params=params, into=SecretList)
        return found.secrets

    async def delete(self, name: str, group: str = "/") -> None:
        await self.api.request(
            "DELETE", f"{SECRETS}/{quote(name, safe='')}", params={"group": group}
        )
