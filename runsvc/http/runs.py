"""The runs endpoints: create, read, list, act, recreate, history and audit, simulation
(of a config, or of a run file as written, YAML included).

Handlers only decode, call one service function, and encode. Reads of a single run come
from the run_state projection (the stored JSON is sent as is); a run the projection has not
reached yet is folded from its stream, so a run is readable right after it was created.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec
from aiohttp import web

from eventlog.errors import CorruptEvent, StreamNotFound
from projections.index_queries import InvalidCursor, child_groups, list_runs
from projections.run_state import stored_state, stored_view
from runsvc.domain.codec import same_state
from runsvc.domain.config import RunConfig
from runsvc.domain.errors import BadRequest, NotFound, Problem
from runsvc.domain.events import Actor, Phase, Result, stream_of
from runsvc.domain.fold import fold
from runsvc.domain.requests import (
    ApproveRequest,
    CreateRunRequest,
    RecreateRequest,
    SimulationRequest,
)
from runsvc.domain.simulate import SimulatedSecret, SimulationResult, needed_secrets, simulate
from runsvc.domain.suggest import did_you_mean, unknown_field_hint
from runsvc.domain.validation import raise_problems, valid_group, validate_config
from runsvc.domain.view import RunView, run_view
from runsvc.http.keys import SECRETS, SERVICE, SETTINGS, STORE, VIEWS
from runsvc.http.middleware import REQUEST_ID
from runsvc.http.routing import Endpoint, decode_body, decode_query, json_response, principal
from runsvc.infra import documents
from runsvc.infra.documents import DocumentError
from runsvc.service.auth import Permission
from runsvc.service.event_view import event_out
from runsvc.service.writer import Caller
from runsvc.wire.api import (
    GroupList,
    IndexPage,
    RunFileSimulationRequest,
    StreamEvents,
    Verification,
)


class ListQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    group: str | None = None
    name: str | None = None
    phase: Phase | None = None
    result: Result | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    # Unset rather than None: with None allowed, `?waiting_approval=null` would pass as
    # "no filter" although the parameter is a boolean.
    waiting_approval: bool | msgspec.UnsetType = msgspec.UNSET
    limit: int = 50
    cursor: str | None = None


# Versions are a PostgreSQL integer: a bound past it would fail in the database, not here.
_LAST_VERSION = 2**31 - 1


class HistoryQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    after_version: int = 0
    # None: every event at once, as before paging existed.
    limit: int | None = None


class StateQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    at_version: int | None = None
    at_position: int | None = None


def caller(request: web.Request) -> Caller:
    who = principal(request)
    return Caller(Actor(kind="user", id=who.name), request.get(REQUEST_ID), role=who.role)


def _run_id(request: web.Request) -> str:
    return request.match_info["id"]


async def _with_queue_position(request: web.Request, view: RunView) -> RunView:
    if view.phase == "queued" and view.concurrency_key is not None:
        position = await request.app[SERVICE].queue_position(view.id)
        return msgspec.structs.replace(view, queue_position=position)
    return view


async def create_run(request: web.Request) -> web.Response:
    body = await decode_body(request, CreateRunRequest)
    run, created = await request.app[SERVICE].create(body, caller(request))
    view = await _with_queue_position(request, run_view(run))
    headers = {"Location": f"/api/v1/runs/{run.id}"}
    return json_response(view, status=201 if created else 200, headers=headers)


async def get_run(request: web.Request) -> web.Response:
    run_id = _run_id(request)
    views = request.app[VIEWS]
    cached = views.get(run_id)
    if cached is not None:
        return web.Response(body=cached, content_type="application/json")
    generation = views.generation
    stored = await stored_view(request.app[SERVICE].pool, run_id)
    # A queued run's place in its queue moves without events of its own: never cached.
    if stored is not None and not (stored.phase == "queued" and stored.concurrency_key):
        views.put(run_id, stored.view, generation)
        return web.Response(body=stored.view, content_type="application/json")
    run = await request.app[SERVICE].load(run_id)
    return json_response(await _with_queue_position(request, run_view(run)))


async def list_runs_handler(request: web.Request) -> web.Response:
    query = decode_query(request, ListQuery)
    limit = request.app[SETTINGS].max_page_size
    if not 1 <= query.limit <= limit:
        raise BadRequest(f"limit must be between 1 and {limit}")
    if query.group is not None and not query.group.startswith("/"):
        raise BadRequest("group must be an absolute path such as /org/project")
    try:
        page = await list_runs(
            request.app[SERVICE].pool,
            group=query.group,
            name=query.name,
            phase=query.phase,
            result=query.result,
            created_after=query.created_after,
            created_before=query.created_before,
            waiting_approval=(
                None if query.waiting_approval is msgspec.UNSET else query.waiting_approval
            ),
            limit=query.limit,
            cursor=query.cursor,
        )
    except InvalidCursor as exc:
        raise BadRequest(str(exc)) from exc
    return json_response(page)


class GroupsQuery(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    under: str = "/"
    limit: int = 200


async def list_groups(request: web.Request) -> web.Response:
    query = decode_query(request, GroupsQuery)
    limit = request.app[SETTINGS].max_page_size
    if not 1 <= query.limit <= limit:
        raise BadRequest(f"limit must be between 1 and {limit}")
    if not query.under.startswith("/"):
        raise BadRequest("under must be an absolute path such as /org/project")
    groups, more = await child_groups(
        request.app[SERVICE].pool, under=query.under, limit=query.limit
    )
    return json_response(GroupList(under=query.under, groups=groups, more=more))


async def stop_run(request: web.Request) -> web.Response:
    await request.app[SERVICE].stop(_run_id(request), caller(request))
    return web.Response(status=204)


async def cancel_run(request: web.Request) -> web.Response:
    await request.app[SERVICE].cancel(_run_id(request), caller(request))
    return web.Response(status=204)


async def approve_task(request: web.Request) -> web.Response:
    body = ApproveRequest()
    if request.can_read_body and await request.read():
        body = await decode_body(request, ApproveRequest)
    await request.app[SERVICE].approve(
        _run_id(request), request.match_info["task"], body.comment, caller(request)
    )
    return web.Response(status=204)


async def recreate_run(request: web.Request) -> web.Response:
    body = RecreateRequest()
    if request.can_read_body and await request.read():
        body = await decode_body(request, RecreateRequest)
    run = await request.app[SERVICE].recreate(_run_id(request), body, caller(request))
    return json_response(run_view(run), status=201, headers={"Location": f"/api/v1/runs/{run.id}"})


async def run_events(request: web.Request) -> web.Response:
    return await stream_events(request, stream_of(_run_id(request)), f"no run {_run_id(request)}")


async def stream_events(request: web.Request, stream: str, missing: str) -> web.Response:
    """A stream's events, all of them or a page (`after_version`, `limit`): a run's
    history, a schedule's."""
    query = decode_query(request, HistoryQuery)
    most = request.app[SETTINGS].max_page_size
    if not 0 <= query.after_version <= _LAST_VERSION:
        raise BadRequest(f"after_version must be between 0 and {_LAST_VERSION}")
    if query.limit is not None and not 1 <= query.limit <= most:
        raise BadRequest(f"limit must be between 1 and {most}")
    # One event beyond the page tells whether another page follows, without a count.
    to_version = (
        None if query.limit is None else min(query.after_version + query.limit + 1, _LAST_VERSION)
    )
    try:
        events = await request.app[STORE].read_stream(
            stream, from_version=query.after_version + 1, to_version=to_version
        )
    except StreamNotFound:
        raise NotFound(missing) from None
    if query.limit is None or len(events) <= query.limit:
        return json_response(StreamEvents(events=[event_out(e) for e in events]))
    page = events[: query.limit]
    return json_response(
        StreamEvents(events=[event_out(e) for e in page], next_after_version=page[-1].version)
    )


async def run_state_at(request: web.Request) -> web.Response:
    query = decode_query(request, StateQuery)
    if (query.at_version is None) == (query.at_position is None):
        raise BadRequest("give exactly one of at_version or at_position")
    try:
        events = await request.app[STORE].read_stream(stream_of(_run_id(request)))
    except StreamNotFound:
        raise NotFound(f"no run {_run_id(request)}") from None
    if query.at_version is not None:
        if not 1 <= query.at_version <= len(events):
            raise BadRequest(f"at_version must be between 1 and {len(events)}")
        prefix = events[: query.at_version]
    else:
        position = query.at_position or 0
        prefix = [e for e in events if e.position <= position]
        if not prefix:
            raise BadRequest(f"the run did not exist yet at position {position}")
    run = fold(prefix)
    assert run is not None
    return json_response(run_view(run))


async def verify_run(request: web.Request) -> web.Response:
    """The hash chain holds, and folding the events reproduces the stored state."""
    run_id = _run_id(request)
    store = request.app[STORE]
    try:
        report = await store.verify_stream(stream_of(run_id))
    except StreamNotFound:
        raise NotFound(f"no run {run_id}") from None
    problems = list(report.problems)
    try:
        events = await store.read_stream(stream_of(run_id))
    except CorruptEvent as exc:
        problems.append(str(exc))
        return json_response(Verification(ok=False, events=report.events, problems=problems))
    stored = await stored_state(request.app[SERVICE].pool, run_id)
    if stored is not None:
        version, state = stored
        if version > len(events):
            problems.append(
                f"the stored state is at version {version} but the stream has only "
                f"{len(events)} events: events were removed"
            )
        else:
            folded = fold(events[:version])
            assert folded is not None
            if not same_state(state, folded):
                problems.append("folding the events does not reproduce the stored state")
    return json_response(Verification(ok=not problems, events=report.events, problems=problems))


def _simulation_problems(body: SimulationRequest, max_tasks: int) -> list[Problem]:
    problems = validate_config(body.config, max_tasks=max_tasks)
    if not valid_group(body.group):
        problems.append(Problem(path="group", message="an absolute path of names, like /org/x"))
    names = {t.name for t in body.config.tasks}
    for name in body.outcomes:
        if name not in names:
            unknown = f"unknown task {name!r}{did_you_mean(name, names)}"
            problems.append(Problem(path=f"outcomes.{name}", message=unknown))
    return problems


async def simulate_run(request: web.Request) -> web.Response:
    body = await decode_body(request, SimulationRequest)
    raise_problems(_simulation_problems(body, request.app[SETTINGS].max_tasks))
    # A preview of a large config takes a while of pure CPU; in a thread the event loop
    # keeps serving everyone else meanwhile.
    return json_response(
        await _with_secrets(request, body, await asyncio.to_thread(simulate, body))
    )


class _RunFile(documents.Document):
    hint = staticmethod(unknown_field_hint)


# Aliases may repeat a part of a run file (YAML's anchors): a few times over is a file
# someone wrote, a thousand times is a file made to keep the server busy.
_ALIAS_GROWTH = 4


def _read_run_file(body: RunFileSimulationRequest) -> tuple[_RunFile, bool, SimulationRequest]:
    """The run file as a simulation: a whole run document gives its config and
    environments (its other fields do not matter to a preview), a bare config only
    itself; the request's environment is laid over the file's, as `--env` does."""
    text = body.run_file
    document = _RunFile(text, body.file_name, max_values=_ALIAS_GROWTH * len(text) + 1000)
    data = document.data
    if not isinstance(data, dict):
        raise DocumentError(document.where(""), "expected a mapping at the top")
    bare = "config" not in data
    if bare:
        request = SimulationRequest(
            config=document.decode(RunConfig),
            environment=dict(body.environment),
            group=body.group or "/",
        )
    else:
        environment = data.get("environment", {})
        if isinstance(environment, dict):
            environment = {**environment, **body.environment}
        document.data = {
            "config": data["config"],
            "environment": environment,
            "static_environment": data.get("static_environment", {}),
            "group": body.group or data.get("group", "/"),
        }
        request = document.decode(SimulationRequest)
    return document, bare, msgspec.structs.replace(request, outcomes=body.outcomes)


def _located(problem: Problem, document: documents.Document, bare: bool) -> Problem:
    """A problem with its place in the file before its path (`ci.yaml:14:
    config.tasks[1].depends`); outcomes came from the request, not the file."""
    if problem.path.startswith("outcomes"):
        return problem
    path = problem.path
    if bare:
        path = path.removeprefix("config").removeprefix(".")
    return Problem(path=f"{document.where(path)}: {problem.path}", message=problem.message)


async def simulate_run_file(request: web.Request) -> web.Response:
    body = await decode_body(request, RunFileSimulationRequest)
    max_tasks = request.app[SETTINGS].max_tasks
    # Parsing YAML is pure Python and CPU alone: in a thread, like the simulation.
    try:
        document, bare, simulation = await asyncio.to_thread(_read_run_file, body)
    except DocumentError as exc:
        where = f"{exc.where}: {exc.path}" if exc.path else exc.where
        problem = Problem(path=where, message=exc.problem)
        raise BadRequest(f"invalid run file: {exc.problem}", [problem]) from None
    problems = _simulation_problems(simulation, max_tasks)
    raise_problems(_located(p, document, bare) for p in problems)
    result = await asyncio.to_thread(simulate, simulation)
    return json_response(await _with_secrets(request, simulation, result))


async def _with_secrets(
    request: web.Request, body: SimulationRequest, result: SimulationResult
) -> SimulationResult:
    """The result with the secrets the run would need and whether its group has each."""
    names = needed_secrets(body.config)
    if not names:
        return result
    existing = await request.app[SECRETS].existing(body.group, names)
    found = [SimulatedSecret(name=name, exists=name in existing) for name in names]
    return msgspec.structs.replace(result, secrets=found)


def _run(path: str = "") -> str:
    return "/api/v1/runs/{id}" + path


ENDPOINTS: list[Endpoint] = [
    Endpoint(
        "POST",
        "/api/v1/runs",
        create_run,
        Permission.SUBMIT,
        "Create a run",
        "runs",
        body=CreateRunRequest,
        responses={201: RunView, 200: RunView},
    ),
    Endpoint(
        "GET",
        "/api/v1/runs",
        list_runs_handler,
        Permission.READ,
        "List runs",
        "runs",
        query=ListQuery,
        responses={200: IndexPage},
    ),
    Endpoint(
        "GET",
        "/api/v1/groups",
        list_groups,
        Permission.READ,
        "List the groups one level below a group that hold runs",
        "runs",
        query=GroupsQuery,
        responses={200: GroupList},
    ),
    Endpoint(
        "GET", _run(), get_run, Permission.READ, "Get a run", "runs", responses={200: RunView}
    ),
    Endpoint(
        "POST",
        _run("/stop"),
        stop_run,
        Permission.SUBMIT,
        "Stop a running run",
        "runs",
        responses={204: None},
    ),
    Endpoint(
        "POST",
        _run("/cancel"),
        cancel_run,
        Permission.SUBMIT,
        "Cancel a queued run",
        "runs",
        responses={204: None},
    ),
    Endpoint(
        "POST",
        _run("/tasks/{task}/approve"),
        approve_task,
        Permission.SUBMIT,
        "Approve a task waiting for approval",
        "runs",
        body=ApproveRequest,
        responses={204: None},
    ),
    Endpoint(
        "POST",
        _run("/recreate"),
        recreate_run,
        Permission.SUBMIT,
        "Recreate a run from scratch, its failed tasks, or chosen tasks",
        "runs",
        body=RecreateRequest,
        responses={201: RunView},
    ),
    Endpoint(
        "GET",
        _run("/events"),
        run_events,
        Permission.READ,
        "A run's events",
        "history",
        query=HistoryQuery,
        responses={200: StreamEvents},
    ),
    Endpoint(
        "GET",
        _run("/state"),
        run_state_at,
        Permission.READ,
        "A run as it was at a version or position",
        "history",
        query=StateQuery,
        responses={200: RunView},
    ),
    Endpoint(
        "GET",
        _run("/verify"),
        verify_run,
        Permission.READ,
        "Verify a run's hash chain and stored state",
        "history",
        responses={200: Verification},
    ),
    Endpoint(
        "POST",
        "/api/v1/simulations",
        simulate_run,
        Permission.READ,
        "Preview a config without running it",
        "simulation",
        body=SimulationRequest,
        responses={200: SimulationResult},
    ),
    Endpoint(
        "POST",
        "/api/v1/simulations/run-file",
        simulate_run_file,
        Permission.READ,
        "Preview a run file, YAML or JSON, as written",
        "simulation",
        body=RunFileSimulationRequest,
        responses={200: SimulationResult},
    ),
]
