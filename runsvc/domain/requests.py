"""Request bodies of the run commands, exactly the fields docs/api.md names (unknown fields are
refused). Their rules beyond shape are in `runsvc.domain.validation`."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from runsvc.domain.config import RunConfig


class CreateRunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A run to create: where it belongs, its tasks and the environment they see. A run
    file for `runsvc submit` holds these fields, or the config alone."""

    group: Annotated[
        str,
        Meta(
            description="Where the run belongs: an absolute path of names, like "
            "/org/project/branch."
        ),
    ]
    name: Annotated[str, Meta(description="The run's name: 1-100 characters of A-Z a-z 0-9 _ . -")]
    config: Annotated[RunConfig, Meta(description="The tasks and the run-wide settings.")]
    idempotency_key: Annotated[
        str | None,
        Meta(
            description="A create with the key of a run that has not ended returns that "
            "run instead of a new one (1-200 characters)."
        ),
    ] = None
    concurrency_key: Annotated[
        str | None,
        Meta(
            description="At most one run with this key runs at a time; the others wait, "
            "queued, oldest first (1-200 characters)."
        ),
    ] = None
    annotations: Annotated[
        dict[str, str],
        Meta(description="Strings for people and tools; the service does not use them."),
    ] = msgspec.field(default_factory=dict)
    static_environment: Annotated[
        dict[str, str],
        Meta(description="Variables of every task; kept when the run is recreated."),
    ] = msgspec.field(default_factory=dict)
    environment: Annotated[
        dict[str, str],
        Meta(
            description="Variables of every task, over static_environment; a recreation "
            "may replace them."
        ),
    ] = msgspec.field(default_factory=dict)
    setup_errors: Annotated[
        list[str],
        Meta(
            description="Problems a tool found before submitting; any makes the run end at "
            "once in phase setuperror, and nothing runs."
        ),
    ] = msgspec.field(default_factory=list)


class RecreateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Recreate from scratch, from the failed tasks, or from chosen `tasks` (and what
    depends on them). `environment`, when given, replaces the run's environment."""

    from_: Literal["scratch", "failed"] = msgspec.field(default="failed", name="from")
    environment: dict[str, str] | None = None
    tasks: list[str] | None = None


class ApproveRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    comment: str | None = None


Outcome = Literal["success", "failure", "no_approval"]


class SimulatedOutcome(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The long form of a simulated outcome: how the task's attempts end and what they
    write to their output file, for the expressions that read it."""

    status: Outcome = "success"
    outputs: dict[str, str] = msgspec.field(default_factory=dict)


class SimulationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    config: RunConfig
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    static_environment: dict[str, str] = msgspec.field(default_factory=dict)
    outcomes: dict[str, Outcome | SimulatedOutcome] = msgspec.field(default_factory=dict)
    group: str = "/"
    """The group the run would be in: which secrets it would see."""

    def outcome(self, task: str) -> SimulatedOutcome:
        given = self.outcomes.get(task, "success")
        return SimulatedOutcome(status=given) if isinstance(given, str) else given
