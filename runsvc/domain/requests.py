"""Request bodies of the run commands, exactly the fields docs/api.md names (unknown fields are
refused). Their rules beyond shape are in `runsvc.domain.validation`."""

from __future__ import annotations

from typing import Literal

import msgspec

from runsvc.domain.config import RunConfig


class CreateRunRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    group: str
    name: str
    config: RunConfig
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    annotations: dict[str, str] = msgspec.field(default_factory=dict)
    static_environment: dict[str, str] = msgspec.field(default_factory=dict)
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    setup_errors: list[str] = msgspec.field(default_factory=list)


class RecreateRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Recreate from scratch, from the failed tasks, or from chosen `tasks` (and what
    depends on them). `environment`, when given, replaces the run's environment."""

    from_: Literal["scratch", "failed"] = msgspec.field(default="failed", name="from")
    environment: dict[str, str] | None = None
    tasks: list[str] | None = None


class ApproveRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    comment: str | None = None


Outcome = Literal["success", "failure", "no_approval"]


class SimulationRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    config: RunConfig
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    static_environment: dict[str, str] = msgspec.field(default_factory=dict)
    outcomes: dict[str, Outcome] = msgspec.field(default_factory=dict)
