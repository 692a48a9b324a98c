"""What a schedule is made of, as a client writes it: when it fires (a cron expression in a
timezone), what run it creates, and what it does when runs overlap or firings were missed.

These types travel inside the schedule's events and in the API's bodies; the rules beyond
shape are in `runsvc.domain.schedules`.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from runsvc.domain.config import RunConfig

Overlap = Literal["skip", "allow", "queue"]
Catchup = Literal["none", "latest", "all"]

DEFAULT_CATCHUP_LIMIT = 10
MAX_CATCHUP_LIMIT = 1000


class ScheduledRun(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The run a firing creates: the body of a create-run request, where `group` and
    `name` default to the schedule's. The idempotency key is the schedule's own
    (`schedule:<id>:<fire time>`), so a body cannot set one."""

    config: Annotated[RunConfig, Meta(description="The tasks and the run-wide settings.")]
    group: Annotated[
        str | None, Meta(description="Where the runs belong; the schedule's group if absent.")
    ] = None
    name: Annotated[str | None, Meta(description="The runs' name; the schedule's if absent.")] = (
        None
    )
    concurrency_key: Annotated[
        str | None,
        Meta(
            description="At most one run with this key runs at a time. With overlap `queue` "
            "and no key, the key is `schedule:<id>`."
        ),
    ] = None
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    static_environment: dict[str, str] = msgspec.field(default_factory=dict)
    environment: dict[str, str] = msgspec.field(default_factory=dict)


class ScheduleSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A schedule as stored in its events: everything but whether it is paused."""

    name: Annotated[str, Meta(description="1-100 characters of A-Z a-z 0-9 _ . -")]
    group: Annotated[str, Meta(description="An absolute group path, like /org/project.")]
    cron: Annotated[
        str,
        Meta(
            description="Five fields (minute hour day-of-month month day-of-week) or an "
            "alias such as @hourly, @daily, @weekly, @monthly, @yearly."
        ),
    ]
    run: ScheduledRun
    timezone: Annotated[
        str, Meta(description="The IANA timezone the cron expression is read in.")
    ] = "UTC"
    overlap: Annotated[
        Overlap,
        Meta(
            description="When the previous run of this schedule has not ended: skip the "
            "firing, allow a second run, or queue it behind the first."
        ),
    ] = "skip"
    catchup: Annotated[
        Catchup,
        Meta(
            description="Firings missed while no service was up: none, only the latest, or "
            "all (at most catchup_limit, the newest)."
        ),
    ] = "latest"
    catchup_limit: Annotated[
        int, Meta(ge=1, le=MAX_CATCHUP_LIMIT, description="The bound of catchup `all`.")
    ] = DEFAULT_CATCHUP_LIMIT


class CreateScheduleRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`POST /api/v1/schedules`: a spec, paused or not."""

    name: str
    group: str
    cron: str
    run: ScheduledRun
    timezone: str = "UTC"
    overlap: Overlap = "skip"
    catchup: Catchup = "latest"
    catchup_limit: Annotated[int, Meta(ge=1, le=MAX_CATCHUP_LIMIT)] = DEFAULT_CATCHUP_LIMIT
    paused: bool = False

    def spec(self) -> ScheduleSpec:
        return ScheduleSpec(
            name=self.name,
            group=self.group,
            cron=self.cron,
            run=self.run,
            timezone=self.timezone,
            overlap=self.overlap,
            catchup=self.catchup,
            catchup_limit=self.catchup_limit,
        )


class ChangeScheduleRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`PATCH /api/v1/schedules/{id}`: the fields given replace the schedule's."""

    name: str | msgspec.UnsetType = msgspec.UNSET
    group: str | msgspec.UnsetType = msgspec.UNSET
    cron: str | msgspec.UnsetType = msgspec.UNSET
    run: ScheduledRun | msgspec.UnsetType = msgspec.UNSET
    timezone: str | msgspec.UnsetType = msgspec.UNSET
    overlap: Overlap | msgspec.UnsetType = msgspec.UNSET
    catchup: Catchup | msgspec.UnsetType = msgspec.UNSET
    catchup_limit: Annotated[int, Meta(ge=1, le=MAX_CATCHUP_LIMIT)] | msgspec.UnsetType = (
        msgspec.UNSET
    )
    paused: bool | msgspec.UnsetType = msgspec.UNSET

    def applied_to(self, spec: ScheduleSpec) -> ScheduleSpec:
        changes = {
            field: value
            for field in ScheduleSpec.__struct_fields__
            if (value := getattr(self, field)) is not msgspec.UNSET
        }
        return msgspec.structs.replace(spec, **changes)
