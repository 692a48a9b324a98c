"""The HTTP API's types: every request and response body, as the server encodes them and
the client decodes them, so both sides share one definition. Importable with msgspec alone
(a test checks that `runsvc.client` loads no database or object store driver).

Types that are also the run domain's vocabulary are defined there and only named here:
the run file (`RunConfig`), the request bodies of the run commands, the run view, a
simulation's result, a validation `Problem` and an event's `Actor`. The executor protocol
is `runsvc.wire.executor`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from runsvc.domain.config import RunConfig
from runsvc.domain.errors import Problem
from runsvc.domain.events import Actor, Phase, Result
from runsvc.domain.requests import (
    ApproveRequest,
    CreateRunRequest,
    Outcome,
    RecreateRequest,
    SimulatedOutcome,
    SimulationRequest,
)
from runsvc.domain.simulate import SimulatedSecret, SimulatedTask, SimulationResult
from runsvc.domain.view import DependencyView, RunView, TaskView

__all__ = [
    "Actor",
    "ApproveRequest",
    "Artifact",
    "ArtifactList",
    "Caller",
    "Check",
    "CreateRunRequest",
    "DependencyView",
    "ErrorBody",
    "EventOut",
    "EventPage",
    "ExecutorSeen",
    "GroupCount",
    "GroupList",
    "Health",
    "IndexEntry",
    "IndexPage",
    "Outcome",
    "Problem",
    "ProjectionStatus",
    "Readiness",
    "RecreateRequest",
    "RunConfig",
    "RunFileSimulationRequest",
    "RunView",
    "SecretGroupQuery",
    "SecretInfo",
    "SecretList",
    "SecretQuery",
    "ServiceStatus",
    "SetSecretRequest",
    "SimulatedSecret",
    "SimulatedTask",
    "SimulationRequest",
    "SimulationResult",
    "SnapshotStatus",
    "StreamEvents",
    "TaskView",
    "Verification",
]


class ErrorBody(msgspec.Struct, frozen=True, omit_defaults=True):
    """The body of every error response; `details` locate each problem of a bad request."""

    code: str
    message: str
    details: list[Problem] = msgspec.field(default_factory=list)


class EventOut(msgspec.Struct, frozen=True, omit_defaults=True):
    """One event of the log as clients see it."""

    position: int
    stream: str
    version: int
    type: str
    recorded_at: datetime
    actor: Actor
    data: Any
    hash: str
    id: str
    correlation_id: str | None = None
    causation_id: str | None = None
    request_id: str | None = None


class EventPage(msgspec.Struct, frozen=True):
    events: list[EventOut]
    next_after: int
    # The newest position in the log when the page was read: where a follower that wants
    # only what comes next starts. None from a server older than the field.
    head: int | None = None


class StreamEvents(msgspec.Struct, frozen=True, omit_defaults=True):
    events: list[EventOut]
    # Only on a page (`limit` given) that more events follow: the `after_version` of the
    # next page. Absent otherwise, so a reader of every event sees the old shape.
    next_after_version: int | None = None


class Verification(msgspec.Struct, frozen=True):
    """`GET /runs/{id}/verify`: the hash chain holds and the fold reproduces the state."""

    ok: bool
    events: int
    problems: list[str]


class Artifact(msgspec.Struct, frozen=True):
    """One file a task uploaded; `key` is relative to the task's artifact folder."""

    key: str
    size: int
    last_modified: datetime
    etag: str = ""


class ArtifactList(msgspec.Struct, frozen=True):
    """`GET /tasks/{id}/artifacts`."""

    artifacts: list[Artifact]


class Health(msgspec.Struct, frozen=True):
    """`GET /healthz`: the process is up."""

    status: str


class Check(msgspec.Struct, frozen=True):
    """One readiness check; `detail` says what is wrong (or, for some, how things are)."""

    name: str
    ok: bool
    detail: str | None = None


class Readiness(msgspec.Struct, frozen=True):
    """`GET /readyz` (200 when every check is ok, 503 otherwise)."""

    ready: bool
    checks: list[Check]


class ProjectionStatus(msgspec.Struct, frozen=True):
    """Where a projection is: the last position it applied, and how far behind the log's
    head that is."""

    name: str
    position: int
    lag: int


class SnapshotStatus(msgspec.Struct, frozen=True, kw_only=True):
    """The newest index dump this process wrote or found, and its age in seconds (None:
    none yet); `failures` counts dumps failed in a row."""

    age_s: float | None
    position: int | None
    rows: int | None
    created_at: datetime | None
    failures: int
    last_error: str | None


class ExecutorSeen(msgspec.Struct, frozen=True, kw_only=True):
    """An executor that claimed work or renewed a lease recently (any process saw it):
    the name it announces, the labels it claims by, and the attempts it runs now."""

    name: str
    labels: dict[str, str]
    last_seen: datetime
    running: int


class ServiceStatus(msgspec.Struct, frozen=True, kw_only=True):
    """`GET /api/v1/status`: how the service is doing, as this process sees it."""

    version: str
    now: datetime
    head: int
    projections: list[ProjectionStatus]
    snapshot: SnapshotStatus
    executors_within_s: int
    executors: list[ExecutorSeen]
    websocket_subscribers: int
    max_subscribers: int


class RunFileSimulationRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True
):
    """`POST /api/v1/simulations/run-file`: a run file as its author wrote it (YAML or
    JSON; a whole run document or a bare config), simulated as `runsvc simulate` would.
    `file_name` only names the file in errors (`ci.yaml:14: config.tasks[1].depends`).
    `environment` is laid over the file's own."""

    run_file: str
    file_name: str = "run file"
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    outcomes: dict[str, Outcome | SimulatedOutcome] = msgspec.field(default_factory=dict)
    group: str | None = None
    """The group the run would be in (which secrets it sees); default the file's, else /."""


# --- the run index ---------------------------------------------------------------------


class IndexEntry(msgspec.Struct, frozen=True):
    """A run as the list endpoint shows it."""

    id: str
    group: str
    name: str
    counter: int
    phase: Phase
    result: Result
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class IndexPage(msgspec.Struct, frozen=True):
    runs: list[IndexEntry]
    next_cursor: str | None


class GroupList(msgspec.Struct, frozen=True):
    """`GET /api/v1/groups`: the groups one level below `under` that hold runs."""

    under: str
    groups: list[str]
    more: bool


class Caller(msgspec.Struct, frozen=True):
    """`GET /api/v1/whoami`: the token's name and role, and what the role may do."""

    name: str
    role: str
    permissions: list[str]


class GroupCount(msgspec.Struct, frozen=True):
    phase: Phase
    result: Result
    runs: int


class CreateTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """`POST /api/v1/tokens`."""

    role: str
    name: str | None = None
    # An executor token bound to labels claims only tasks whose `runs_on` they satisfy.
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    # A duration such as `30d` or `12h`; none: the token does not expire.
    expires_in: str | None = None


class TokenInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A token as `GET /api/v1/tokens` shows it: never its secret."""

    id: str
    name: str
    role: str
    labels: dict[str, str]
    created_at: datetime
    last_used_at: datetime | None
    expires_at: datetime | None
    revoked_at: datetime | None


class TokenList(msgspec.Struct, frozen=True):
    tokens: list[TokenInfo]


class CreatedToken(msgspec.Struct, frozen=True, kw_only=True):
    """The answer to a create: the token itself, shown this once."""

    token: str
    id: str
    name: str
    role: str
    labels: dict[str, str]
    expires_at: datetime | None


class SetSecretRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`PUT /api/v1/secrets/{name}`: the value (at most 64 KiB) and the group whose runs
    (and the runs of the groups beneath it) see it."""

    value: str
    group: str = "/"


class SecretQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`GET /api/v1/secrets?group=`: only the secrets of this group and those beneath it."""

    group: str | None = None


class SecretGroupQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`DELETE /api/v1/secrets/{name}?group=`: the group the secret is set in."""

    group: str = "/"


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as listed: never its value."""

    name: str
    group: str
    version: int
    key_id: str | None
    updated_by: str | None
    updated_at: datetime


class SecretList(msgspec.Struct, frozen=True):
    secrets: list[SecretInfo]
