"""The schedules endpoints: create, list, read, change (pause, resume), delete, trigger,
and a schedule's history (its stream, audited like a run's)."""

from __future__ import annotations

import msgspec
from aiohttp import web

from eventlog.errors import CorruptEvent, StreamNotFound
from projections.schedules import stored_schedule
from runsvc.domain.errors import NotFound
from runsvc.domain.events import schedule_stream_of
from runsvc.domain.schedule_config import ChangeScheduleRequest, CreateScheduleRequest
from runsvc.domain.schedules import ScheduleList, ScheduleView, fold_all, view
from runsvc.domain.view import RunView, run_view
from runsvc.http.keys import PROJECTIONS, SCHEDULES, STORE
from runsvc.http.routing import Endpoint, decode_body, decode_query, json_response
from runsvc.http.runs import HistoryQuery, caller, stream_events
from runsvc.service.auth import Permission
from runsvc.wire.api import StreamEvents, Verification


class ListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group: str | None = None


def _id(request: web.Request) -> str:
    return request.match_info["id"]


def _location(schedule_id: str) -> dict[str, str]:
    return {"Location": f"/api/v1/schedules/{schedule_id}"}


async def create_schedule(request: web.Request) -> web.Response:
    body = await decode_body(request, CreateScheduleRequest)
    state = await request.app[SCHEDULES].create(body, caller(request))
    return json_response(view(state), status=201, headers=_location(state.id))


async def list_schedules(request: web.Request) -> web.Response:
    query = decode_query(request, ListQuery)
    # The list is the schedules projection: brought up to the log's head first, so a
    # schedule created or changed a moment ago (by any process) is listed as it is now.
    for runner in request.app[PROJECTIONS]:
        if runner.name == "schedules":
            await runner.catch_up()
    states = await request.app[SCHEDULES].listed(query.group)
    return json_response(ScheduleList(schedules=[view(s) for s in states]))


async def get_schedule(request: web.Request) -> web.Response:
    return json_response(view(await request.app[SCHEDULES].load(_id(request))))


async def change_schedule(request: web.Request) -> web.Response:
    body = await decode_body(request, ChangeScheduleRequest)
    state = await request.app[SCHEDULES].change(_id(request), body, caller(request))
    return json_response(view(state))


async def delete_schedule(request: web.Request) -> web.Response:
    await request.app[SCHEDULES].delete(_id(request), caller(request))
    return web.Response(status=204)


async def trigger_schedule(request: web.Request) -> web.Response:
    run = await request.app[SCHEDULES].trigger(_id(request), caller(request))
    return json_response(run_view(run), status=201, headers={"Location": f"/api/v1/runs/{run.id}"})


async def schedule_events(request: web.Request) -> web.Response:
    schedule_id = _id(request)
    return await stream_events(
        request, schedule_stream_of(schedule_id), f"no schedule {schedule_id}"
    )


async def verify_schedule(request: web.Request) -> web.Response:
    """The hash chain holds, and folding the events reproduces what the schedules
    projection stored."""
    schedule_id = _id(request)
    store = request.app[STORE]
    try:
        report = await store.verify_stream(schedule_stream_of(schedule_id))
        records = await store.read_stream(schedule_stream_of(schedule_id))
    except StreamNotFound:
        raise NotFound(f"no schedule {schedule_id}") from None
    except CorruptEvent as exc:
        problems = [*report.problems, str(exc)]
        return json_response(Verification(ok=False, events=report.events, problems=problems))
    problems = list(report.problems)
    stored = await stored_schedule(store.pool, schedule_id)
    if stored is not None:
        if stored.version > len(records):
            problems.append(
                f"the stored schedule is at version {stored.version} but the stream has only "
                f"{len(records)} events: events were removed"
            )
        elif fold_all((r.event, r.version) for r in records[: stored.version]) != stored:
            problems.append("folding the events does not reproduce the stored schedule")
    return json_response(Verification(ok=not problems, events=report.events, problems=problems))


def _one(suffix: str = "") -> str:
    return "/api/v1/schedules/{id}" + suffix


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/schedules",
        create_schedule,
        Permission.SUBMIT,
        "Create a schedule",
        "schedules",
        body=CreateScheduleRequest,
        responses={201: ScheduleView},
    ),
    Endpoint(
        "GET",
        "/api/v1/schedules",
        list_schedules,
        Permission.READ,
        "List schedules",
        "schedules",
        query=ListQuery,
        responses={200: ScheduleList},
    ),
    Endpoint(
        "GET",
        _one(),
        get_schedule,
        Permission.READ,
        "Get a schedule",
        "schedules",
        responses={200: ScheduleView},
    ),
    Endpoint(
        "PATCH",
        _one(),
        change_schedule,
        Permission.SUBMIT,
        "Change, pause or resume a schedule",
        "schedules",
        body=ChangeScheduleRequest,
        responses={200: ScheduleView},
    ),
    Endpoint(
        "DELETE",
        _one(),
        delete_schedule,
        Permission.SUBMIT,
        "Delete a schedule",
        "schedules",
        responses={204: None},
    ),
    Endpoint(
        "POST",
        _one("/trigger"),
        trigger_schedule,
        Permission.SUBMIT,
        "Create the schedule's run now",
        "schedules",
        responses={201: RunView},
    ),
    Endpoint(
        "GET",
        _one("/events"),
        schedule_events,
        Permission.READ,
        "A schedule's history: every change and firing",
        "schedules",
        query=HistoryQuery,
        responses={200: StreamEvents},
    ),
    Endpoint(
        "GET",
        _one("/verify"),
        verify_schedule,
        Permission.READ,
        "Audit a schedule: its hash chain and its fold",
        "schedules",
        responses={200: Verification},
    ),
]
