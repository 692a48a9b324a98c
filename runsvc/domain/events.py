"""Events: what happened, as frozen msgspec Structs in one tagged union.

Encoding and decoding live here and nowhere else. The stored payload of an event is the
MessagePack encoding of its Struct (tag included); the type is also kept in its own column
so that readers can filter without decoding and so that a type this version does not know
(written by a newer version) decodes to `UnknownEvent`, which keeps the original bytes and
re-encodes them unchanged instead of crashing or dropping data.

Schema evolution follows msgspec's rules: fields are added with defaults, never renamed or
removed; an event type is never reused for a different meaning.

Run events carry the time of the decision (`at`) in their data. That time comes from the
caller's `now`, never from a clock read while folding, so replaying a history is exact.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import msgspec

from runsvc.domain.config import RunConfig
from runsvc.domain.schedule_config import ScheduleSpec

Phase = Literal["setuperror", "queued", "running", "finished", "cancelled"]
Result = Literal["unknown", "success", "failed", "stopped"]
TaskStatus = Literal[
    "notstarted",
    "waiting_approval",
    "scheduled",
    "running",
    "success",
    "failed",
    "skipped",
    "stopped",
    "cancelled",
    "lost",
]
ActorKind = Literal["user", "executor", "system"]


class Actor(msgspec.Struct, frozen=True):
    """Who caused an event: a user (token name), an executor, or the service itself."""

    kind: ActorKind
    id: str


SYSTEM = Actor(kind="system", id="runsvc")


class Event(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Base of every event type. Subclasses set `tag=` to their stable type name."""


class UnknownEvent(msgspec.Struct, frozen=True):
    """An event of a type this version does not know, kept byte for byte.

    It is never produced by this version's code; it only comes out of `decode_event` so a
    newer writer's events survive reads, projections, dumps and re-encoding untouched.
    """

    type: str
    raw: bytes

    def data(self) -> Any:
        """The payload decoded generically (maps, lists, scalars) for display."""
        return msgspec.msgpack.decode(self.raw)


# --- run events -------------------------------------------------------------------------


RUN_STREAM_PREFIX = "run-"
"""Every event of a run goes to one stream, `run-<run id>`; the run's version is that
stream's version."""


def stream_of(run_id: str) -> str:
    return f"{RUN_STREAM_PREFIX}{run_id}"


def run_id_of(stream: str) -> str:
    return stream[len(RUN_STREAM_PREFIX) :]


class CarriedTask(msgspec.Struct, frozen=True, omit_defaults=True):
    """A task that succeeded in the run a recreation came from, kept with its id and result
    so its logs and artifacts are reused instead of running it again."""

    id: str
    attempt: int
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    executor: str | None = None
    outputs: dict[str, str] = msgspec.field(default_factory=dict)


class RunCreated(Event, tag="run_created", frozen=True):
    run_id: str
    group: str
    name: str
    counter: int
    config: RunConfig
    created_at: datetime
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    static_environment: dict[str, str] = msgspec.field(default_factory=dict)
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    setup_errors: list[str] = msgspec.field(default_factory=list)
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    recreated_from: str | None = None
    carried: dict[str, CarriedTask] = msgspec.field(default_factory=dict)
    # The token name that created the run (its submitter); absent from runs created
    # before it was recorded.
    submitted_by: str | msgspec.UnsetType = msgspec.UNSET
    # The most items a `foreach` expression of this run may give (the service's setting
    # when the run was created), so that a replay expands as the run did; absent when it
    # was the default.
    max_foreach_items: int | msgspec.UnsetType = msgspec.UNSET


class RunPhaseChanged(Event, tag="run_phase_changed", frozen=True):
    phase: Phase
    at: datetime


class RunResultChanged(Event, tag="run_result_changed", frozen=True):
    result: Result
    at: datetime


class RunStopRequested(Event, tag="run_stop_requested", frozen=True):
    at: datetime
    reason: str | None = None


class Resolved(msgspec.Struct, frozen=True, omit_defaults=True):
    """What an attempt runs in place of the `${{ … }}` templates of its task: `run` and
    the whole `command` when they hold one, and the `env` values that do (the others are
    the task's own)."""

    run: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = msgspec.field(default_factory=dict)


class TaskStatusChanged(Event, tag="task_status_changed", frozen=True):
    task: str
    status: TaskStatus
    attempt: int
    at: datetime
    executor: str | None = None
    exit_code: int | None = None
    error: str | None = None
    next_attempt_at: datetime | None = None
    # On a `lost` event: the executor never confirmed it had the attempt (the answer to
    # its claim was lost), so the loss uses neither the retry nor the `max_lost` budget.
    # Left out of the encoding unless true, so the events of every other change keep
    # their shape.
    unconfirmed: bool | msgspec.UnsetType = msgspec.UNSET
    # On the change that ends an attempt (its executor's report): the outputs the attempt
    # wrote. Left out of the encoding when there are none, so that every event written
    # before outputs existed, and every change that carries none, keeps its bytes.
    outputs: dict[str, str] | msgspec.UnsetType = msgspec.UNSET
    # On the start of an attempt (`running`) whose task has templates: what they
    # rendered to, so that history and replay show what ran. Left out otherwise, so the
    # events of tasks without templates keep their bytes.
    resolved: Resolved | msgspec.UnsetType = msgspec.UNSET
    # On the change to `waiting_approval` of a task whose approval has a message: the
    # message, its expressions rendered.
    message: str | msgspec.UnsetType = msgspec.UNSET
    # On the start of an attempt (`running`) whose task's env names secrets: the version
    # of each secret it was given. Never a value: the values travel only in the claim's
    # answer to the executor.
    secrets: dict[str, int] | msgspec.UnsetType = msgspec.UNSET


class ForeachChild(msgspec.Struct, frozen=True, omit_defaults=True):
    name: str
    index: int
    item: str
    # The item was not a string (a `foreach` expression gave a number, a list, an
    # object): `item` is its JSON, and expressions see the value. Static items are read
    # from the run file instead.
    json: bool = False


class TaskExpanded(Event, tag="task_expanded", frozen=True):
    task: str
    children: list[ForeachChild]
    at: datetime


class TaskApproved(Event, tag="task_approved", frozen=True):
    task: str
    approver: str
    at: datetime
    comment: str | None = None


class RunOutputDeleted(Event, tag="run_output_deleted", frozen=True):
    """Retention removed the run's logs and artifacts (the run and its events stay)."""

    at: datetime
    older_than: datetime
    logs: int
    artifacts: int


RunEvent = (
    RunCreated
    | RunPhaseChanged
    | RunResultChanged
    | RunStopRequested
    | TaskStatusChanged
    | TaskExpanded
    | TaskApproved
    | RunOutputDeleted
)

# --- schedule events --------------------------------------------------------------------

SCHEDULE_STREAM_PREFIX = "schedule-"
"""Every change and every firing of a schedule goes to one stream, `schedule-<id>`."""


def schedule_stream_of(schedule_id: str) -> str:
    return f"{SCHEDULE_STREAM_PREFIX}{schedule_id}"


def schedule_id_of(stream: str) -> str:
    return stream.removeprefix(SCHEDULE_STREAM_PREFIX)


class ScheduleCreated(Event, tag="schedule_created", frozen=True):
    schedule_id: str
    spec: ScheduleSpec
    paused: bool
    at: datetime
    created_by: str


class ScheduleChanged(Event, tag="schedule_changed", frozen=True):
    """The spec as it is from now on; fire times are counted afresh from `at`."""

    spec: ScheduleSpec
    at: datetime


class SchedulePaused(Event, tag="schedule_paused", frozen=True):
    at: datetime


class ScheduleResumed(Event, tag="schedule_resumed", frozen=True):
    """Fire times are counted from `at`: what fell in the pause is not made up."""

    at: datetime


class ScheduleDeleted(Event, tag="schedule_deleted", frozen=True):
    at: datetime


class ScheduleFired(Event, tag="schedule_fired", frozen=True):
    """A run was created for `fire_at` (a clock firing) or on request (`manual`)."""

    fire_at: datetime
    run_id: str
    at: datetime
    manual: bool = False


class ScheduleSkipped(Event, tag="schedule_skipped", frozen=True):
    """`count` fire times from `first` to `last` made no run: missed while no service was
    up (and the catchup policy let them go), or the previous run had not ended."""

    first: datetime
    last: datetime
    count: int
    reason: Literal["missed", "overlap"]
    at: datetime


ScheduleEvent = (
    ScheduleCreated
    | ScheduleChanged
    | SchedulePaused
    | ScheduleResumed
    | ScheduleDeleted
    | ScheduleFired
    | ScheduleSkipped
)

EVENT_TYPES: tuple[type[Event], ...] = (
    RunCreated,
    RunPhaseChanged,
    RunResultChanged,
    RunStopRequested,
    TaskStatusChanged,
    TaskExpanded,
    TaskApproved,
    RunOutputDeleted,
    ScheduleCreated,
    ScheduleChanged,
    SchedulePaused,
    ScheduleResumed,
    ScheduleDeleted,
    ScheduleFired,
    ScheduleSkipped,
)

# --- codec --------------------------------------------------------------------------------


def type_name(event_type: type[Event]) -> str:
    """The stable name stored for an event type (its msgspec tag)."""
    tag = event_type.__struct_config__.tag
    assert isinstance(tag, str)
    return tag


KNOWN_TYPES: frozenset[str] = frozenset(type_name(t) for t in EVENT_TYPES)
_TYPE_NAMES: dict[type[Event], str] = {t: type_name(t) for t in EVENT_TYPES}

_encoder = msgspec.msgpack.Encoder()
_decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(RunEvent | ScheduleEvent)


def event_type_of(event: Event | UnknownEvent) -> str:
    if isinstance(event, UnknownEvent):
        return event.type
    name = _TYPE_NAMES.get(type(event))
    return name if name is not None else type_name(type(event))


def encode_event(event: Event | UnknownEvent) -> bytes:
    """The stored payload of an event."""
    if isinstance(event, UnknownEvent):
        return event.raw
    return _encoder.encode(event)


def decode_event(type_: str, data: bytes) -> Event | UnknownEvent:
    """Decode a stored payload; a type this version does not know is passed through."""
    if type_ not in KNOWN_TYPES:
        return UnknownEvent(type=type_, raw=bytes(data))
    event: Event = _decoder.decode(data)
    return event
