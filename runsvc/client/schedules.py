"""Schedules over HTTP: create from a file's fields, list, read, pause, resume, trigger,
delete."""

from __future__ import annotations

import builtins
from typing import Any
from urllib.parse import quote

from runsvc.client.base import ApiClient
from runsvc.domain.schedules import ScheduleList, ScheduleView
from runsvc.domain.view import RunView
from runsvc.wire.api import EventOut, StreamEvents

SCHEDULES = "/api/v1/schedules"


def _one(schedule_id: str, suffix: str = "") -> str:
    return f"{SCHEDULES}/{quote(schedule_id, safe='')}{suffix}"


class SchedulesClient:
    def __init__(self, api: ApiClient) -> None:
        self.api = api

    async def create(self, body: dict[str, Any]) -> ScheduleView:
        return await self.api.call("POST", SCHEDULES, json=body, into=ScheduleView)

    async def list(self, group: str | None = None) -> builtins.list[ScheduleView]:
        params = {"group": group} if group else None
        found = await self.api.call("GET", SCHEDULES, params=params, into=ScheduleList)
        return found.schedules

    async def get(self, schedule_id: str) -> ScheduleView:
        return await self.api.call("GET", _one(schedule_id), into=ScheduleView)

    async def change(self, schedule_id: str, fields: dict[str, Any]) -> ScheduleView:
        return await self.api.call("PATCH", _one(schedule_id), json=fields, into=ScheduleView)

    async def trigger(self, schedule_id: str) -> RunView:
        return await self.api.call("POST", _one(schedule_id, "/trigger"), into=RunView)

    async def delete(self, schedule_id: str) -> None:
        await self.api.request("DELETE", _one(schedule_id))

    async def history(self, schedule_id: str) -> builtins.list[EventOut]:
        found = await self.api.call("GET", _one(schedule_id, "/events"), into=StreamEvents)
        return found.events
