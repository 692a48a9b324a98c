"""Schedules: the fold of a schedule's stream, and what a schedule does at a given moment.

A schedule's state is folded from its events like a run's. Its `cursor` is the newest
clock fire time already dealt with (fired or skipped), so the fire times still owed at
`now` are exactly those after the cursor up to `now`: a restart, a second process or a
clock step sees the same list, and each firing moves the cursor in the same transaction
that creates its run. `next_action` decides one step at a time (skip a stretch, or fire
one time); the caller appends it with the version it loaded and asks again, until there
is nothing left to do. Everything here is pure: `now` is a parameter.

Late firings (after downtime): a fire time is on time while `now` is within `grace` of it.
The catchup policy says what happens to the late ones:

- `none`: all are skipped;
- `latest`: when no fire time is on time, the newest late one fires; the rest are skipped;
- `all`: every one fires, oldest first, but at most `catchup_limit` (the newest); older
  ones are skipped.

Overlap (the previous run of the schedule has not ended when a clock firing is due):
`skip` records the firing as skipped, `allow` creates the run, `queue` creates it with a
concurrency key so it waits for the previous one.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import msgspec

from runsvc.domain.config import parse_duration
from runsvc.domain.cron import Cron, CronError, fire_times, next_fire, parse_cron, parse_timezone
from runsvc.domain.errors import BadRequest, NotFound, Problem
from runsvc.domain.events import (
    Event,
    ScheduleChanged,
    ScheduleCreated,
    ScheduleDeleted,
    ScheduleFired,
    SchedulePaused,
    ScheduleResumed,
    ScheduleSkipped,
    UnknownEvent,
)
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.schedule_config import (
    Catchup,
    ChangeScheduleRequest,
    CreateScheduleRequest,
    Overlap,
    ScheduledRun,
    ScheduleSpec,
)
from runsvc.domain.validation import NAME, valid_group, validate_create

RECENT_FIRINGS = 10
"""How many of its latest firings a schedule's view shows."""


class Firing(msgspec.Struct, frozen=True):
    fire_at: datetime
    run_id: str
    at: datetime
    manual: bool = False


class ScheduleView(msgspec.Struct, frozen=True, kw_only=True):
    """A schedule as the API shows it."""

    id: str
    name: str
    group: str
    cron: str
    timezone: str
    run: ScheduledRun
    overlap: Overlap
    catchup: Catchup
    catchup_limit: int
    paused: bool
    next_fire_at: datetime | None
    created_at: datetime
    created_by: str
    updated_at: datetime
    version: int
    fired: int
    skipped: int
    recent_runs: list[Firing]


class ScheduleList(msgspec.Struct, frozen=True):
    schedules: list[ScheduleView]


class ScheduleState(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    spec: ScheduleSpec
    paused: bool
    deleted: bool
    created_at: datetime
    created_by: str
    updated_at: datetime
    cursor: datetime
    version: int
    fired: int = 0
    skipped: int = 0
    recent: tuple[Firing, ...] = ()

    @property
    def active(self) -> bool:
        return not (self.paused or self.deleted)


def view(state: ScheduleState) -> ScheduleView:
    spec = state.spec
    return ScheduleView(
        id=state.id,
        name=spec.name,
        group=spec.group,
        cron=spec.cron,
        timezone=spec.timezone,
        run=spec.run,
        overlap=spec.overlap,
        catchup=spec.catchup,
        catchup_limit=spec.catchup_limit,
        paused=state.paused,
        next_fire_at=next_fire_at(state),
        created_at=state.created_at,
        created_by=state.created_by,
        updated_at=state.updated_at,
        version=state.version,
        fired=state.fired,
        skipped=state.skipped,
        recent_runs=list(state.recent),
    )


def fold(state: ScheduleState | None, event: Event | UnknownEvent, version: int) -> ScheduleState:
    """The schedule after `event` (its stream's `version`-th)."""
    if isinstance(event, ScheduleCreated):
        return ScheduleState(
            id=event.schedule_id,
            spec=event.spec,
            paused=event.paused,
            deleted=False,
            created_at=event.at,
            created_by=event.created_by,
            updated_at=event.at,
            cursor=event.at,
            version=version,
        )
    if state is None:
        raise ValueError(f"a schedule stream must begin with schedule_created, not {event!r}")
    replace = msgspec.structs.replace
    if isinstance(event, ScheduleChanged):
        return replace(
            state, spec=event.spec, updated_at=event.at, cursor=event.at, version=version
        )
    if isinstance(event, SchedulePaused):
        return replace(state, paused=True, updated_at=event.at, version=version)
    if isinstance(event, ScheduleResumed):
        return replace(state, paused=False, updated_at=event.at, cursor=event.at, version=version)
    if isinstance(event, ScheduleDeleted):
        return replace(state, deleted=True, updated_at=event.at, version=version)
    if isinstance(event, ScheduleFired):
        firing = Firing(
            fire_at=event.fire_at, run_id=event.run_id, at=event.at, manual=event.manual
        )
        return replace(
            state,
            cursor=state.cursor if event.manual else max(state.cursor, event.fire_at),
            fired=state.fired + 1,
            recent=(firing, *state.recent)[:RECENT_FIRINGS],
            version=version,
        )
    if isinstance(event, ScheduleSkipped):
        return replace(
            state,
            cursor=max(state.cursor, event.last),
            skipped=state.skipped + event.count,
            version=version,
        )
    # A newer version's event: the schedule stays as it was.
    return replace(state, version=version)


def fold_all(
    events: Iterator[tuple[Event | UnknownEvent, int]], state: ScheduleState | None = None
) -> ScheduleState | None:
    """`state` (nothing yet, by default) with `events` and their versions folded in."""
    for event, version in events:
        state = fold(state, event, version)
    return state


# --- deciding ------------------------------------------------------------------------------


class Fire(msgspec.Struct, frozen=True):
    fire_at: datetime


class Skip(msgspec.Struct, frozen=True):
    first: datetime
    last: datetime
    count: int
    reason: str


Action = Fire | Skip


def next_action(
    state: ScheduleState,
    now: datetime,
    *,
    grace: timedelta,
    previous_running: bool,
) -> Action | None:
    """The next step the schedule owes at `now`, or None when it owes nothing.

    `previous_running` says whether the run of its newest firing has not ended yet."""
    if not state.active:
        return None
    owed = times_between(compiled(state.spec), state.cursor, now)
    first = next(owed, None)
    if first is None:
        return None
    late: list[datetime] = []
    on_time: datetime | None = None
    for moment in _chain(first, owed):
        if now - moment > grace:
            late.append(moment)
        else:
            on_time = moment
            break
    catchup = state.spec.catchup
    if late:
        if catchup == "none":
            return _skip(late, "missed")
        if catchup == "latest" and on_time is not None:
            return _skip(late, "missed")
        if catchup == "latest" and len(late) > 1:
            return _skip(late[:-1], "missed")
        if catchup == "all" and len(late) > state.spec.catchup_limit:
            return _skip(late[: -state.spec.catchup_limit], "missed")
        due = late[0]
    else:
        assert on_time is not None
        due = on_time
    if state.spec.overlap == "skip" and previous_running:
        return Skip(first=due, last=due, count=1, reason="overlap")
    return Fire(fire_at=due)


def _chain(first: datetime, rest: Iterator[datetime]) -> Iterator[datetime]:
    yield first
    yield from rest


def _skip(moments: list[datetime], reason: str) -> Skip:
    return Skip(first=moments[0], last=moments[-1], count=len(moments), reason=reason)


def next_fire_at(state: ScheduleState) -> datetime | None:
    """When the schedule fires next by the clock (None when paused, deleted or never)."""
    if not state.active:
        return None
    return first_after(compiled(state.spec), state.cursor)


class Every(msgspec.Struct, frozen=True):
    """`@every 30s`: the multiples of a duration since the Unix epoch, whatever the
    timezone (elapsed time has no DST)."""

    seconds: float


class Calendar(msgspec.Struct, frozen=True):
    """A cron expression read in a timezone."""

    cron: Cron
    zone: ZoneInfo


Timetable = Every | Calendar
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_EVERY = timedelta(seconds=1)


def times_between(table: Timetable, after: datetime, until: datetime) -> Iterator[datetime]:
    """The fire times t with after < t <= until, in order."""
    if isinstance(table, Calendar):
        return fire_times(table.cron, table.zone, after, until)
    return _every(table.seconds, after, until)


def _every(seconds: float, after: datetime, until: datetime) -> Iterator[datetime]:
    step = timedelta(seconds=seconds)
    count = (after - _UNIX_EPOCH) // step + 1
    moment = _UNIX_EPOCH + count * step
    while moment <= until:
        yield moment
        moment += step


def first_after(table: Timetable, after: datetime) -> datetime | None:
    if isinstance(table, Calendar):
        return next_fire(table.cron, table.zone, after)
    return next(_every(table.seconds, after, after + timedelta(seconds=table.seconds)), None)


def compiled(spec: ScheduleSpec) -> Timetable:
    return timetable(spec.cron, spec.timezone)


@functools.lru_cache(maxsize=1024)
def timetable(cron: str, timezone: str) -> Timetable:
    """The timetable of a `cron` field as written; raises CronError naming what is wrong."""
    zone = parse_timezone(timezone)
    if cron.strip().lower().startswith("@every"):
        text = cron.strip()[len("@every") :].strip()
        try:
            step = parse_duration(text)
        except ValueError as exc:
            raise CronError(f"@every takes a duration such as 30s, 5m or 1h: {exc}") from None
        if step < MIN_EVERY:
            raise CronError(f"@every {text}: the shortest interval is 1s")
        return Every(seconds=step.total_seconds())
    return Calendar(cron=parse_cron(cron), zone=zone)


def idempotency_key(schedule_id: str, fire_at: datetime) -> str:
    """The key of the run a firing creates: the fire time in RFC 3339, UTC (a clock
    firing is on a whole minute; a manual one keeps its microseconds)."""
    moment = fire_at.astimezone(UTC).replace(tzinfo=None).isoformat()
    return f"schedule:{schedule_id}:{moment}Z"


def run_request(state: ScheduleState, fire_at: datetime) -> CreateRunRequest:
    """The create-run request of a firing."""
    return create_request(state.id, state.spec, fire_at)


def create_request(schedule_id: str, spec: ScheduleSpec, fire_at: datetime) -> CreateRunRequest:
    body = spec.run
    concurrency_key = body.concurrency_key
    if concurrency_key is None and spec.overlap == "queue":
        concurrency_key = f"schedule:{schedule_id}"
    return CreateRunRequest(
        group=body.group or spec.group,
        name=body.name or spec.name,
        config=body.config,
        idempotency_key=idempotency_key(schedule_id, fire_at),
        concurrency_key=concurrency_key,
        annotations={**body.annotations, "runsvc.schedule": schedule_id},
        static_environment=body.static_environment,
        environment=body.environment,
    )


# --- validating ----------------------------------------------------------------------------


def problems_of(spec: ScheduleSpec, *, max_tasks: int = 10_000) -> list[Problem]:
    """Every problem of a schedule's spec, with paths like `cron` or `run.config.tasks[0]`."""
    problems: list[Problem] = []
    if not NAME.match(spec.name):
        problems.append(Problem(path="name", message="1-100 characters of A-Z a-z 0-9 _ . -"))
    if not valid_group(spec.group):
        problems.append(
            Problem(
                path="group",
                message="an absolute path of names (not . or ..), like /org/project/branch",
            )
        )
    zone = spec.timezone
    try:
        parse_timezone(zone)
    except CronError as exc:
        problems.append(Problem(path="timezone", message=str(exc)))
        zone = "UTC"  # the cron expression is checked all the same
    try:
        timetable(spec.cron, zone)
    except CronError as exc:
        problems.append(Problem(path="cron", message=str(exc)))
    if not problems:
        problems += _run_problems("example", spec, max_tasks=max_tasks)
    return problems


def _run_problems(schedule_id: str, spec: ScheduleSpec, *, max_tasks: int) -> list[Problem]:
    try:
        validate_create(create_request(schedule_id, spec, _EPOCH), max_tasks=max_tasks)
    except BadRequest as exc:
        return [Problem(path=f"run.{p.path}", message=p.message) for p in exc.details]
    return []


_EPOCH = datetime.fromisoformat("2000-01-01T00:00:00+00:00")


# --- commands ------------------------------------------------------------------------------


def create(
    request: CreateScheduleRequest,
    *,
    schedule_id: str,
    now: datetime,
    created_by: str,
    max_tasks: int = 10_000,
) -> list[Event]:
    spec = request.spec()
    raise_if_invalid(spec, max_tasks=max_tasks)
    return [
        ScheduleCreated(
            schedule_id=schedule_id,
            spec=spec,
            paused=request.paused,
            at=now,
            created_by=created_by,
        )
    ]


def change(
    state: ScheduleState, request: ChangeScheduleRequest, *, now: datetime, max_tasks: int = 10_000
) -> list[Event]:
    """What a PATCH appends: the new spec if any field of it changed, then a pause or a
    resume if `paused` changed. Nothing when nothing changes."""
    if state.deleted:
        raise NotFound(f"no schedule {state.id}")
    events: list[Event] = []
    spec = request.applied_to(state.spec)
    if spec != state.spec:
        raise_if_invalid(spec, max_tasks=max_tasks)
        events.append(ScheduleChanged(spec=spec, at=now))
    if request.paused is not msgspec.UNSET and request.paused != state.paused:
        events.append(SchedulePaused(at=now) if request.paused else ScheduleResumed(at=now))
    return events


def delete(state: ScheduleState, *, now: datetime) -> list[Event]:
    if state.deleted:
        raise NotFound(f"no schedule {state.id}")
    return [ScheduleDeleted(at=now)]


def raise_if_invalid(spec: ScheduleSpec, *, max_tasks: int = 10_000) -> None:
    problems = problems_of(spec, max_tasks=max_tasks)
    if problems:
        first = problems[0]
        summary = (
            f"{first.path}: {first.message}"
            if len(problems) == 1
            else f"{len(problems)} problems, first: {first.path}: {first.message}"
        )
        raise BadRequest(f"invalid schedule: {summary}", problems)
