"""Run config types: the shape a client sends in `config` (see docs/api.md).

These Structs only describe *shape*; msgspec checks types while decoding and reports the
first type error with its JSON path. The rules that need the whole config (unknown
dependencies, cycles, durations, name syntax, limits) live in `runsvc.domain.validation`, which
reports every problem at once. The types live here, at the bottom of the import chain,
because `RunCreated` carries the config and every layer reads it.

New fields always get defaults so that events written by an older version still decode.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

import msgspec

DependencyCondition = Literal["success", "failure", "skipped"]


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """How often, and how patiently, a failed task is tried again."""

    max_attempts: int = 1
    backoff: str = "0s"
    factor: float = 2.0
    max_backoff: str = "10m"


class Dependency(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A parent of a task and the parent outcomes that let the task run.

    `on` is kept as a list of strings (not a Literal) so that validation can report every
    invalid value with its path instead of msgspec stopping at the first.
    """

    task: str
    on: list[str] = msgspec.field(default_factory=lambda: ["success"])


class Approval(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Who may approve a task's gate. `approval: true` lets anyone who may submit runs
    approve; this narrows it to a second pair of eyes."""

    # Token names or roles; empty: anyone who may submit runs.
    by: list[str] = msgspec.field(default_factory=list)
    # The run's submitter (the token that created it) may not approve it.
    not_submitter: bool = False


class When(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A declarative condition on the run's environment; nothing user-written is evaluated."""

    env: str
    equals: str | None = None
    not_equals: str | None = None
    in_: list[str] | None = msgspec.field(default=None, name="in")


ForeachItem = str | int | float | bool


class TaskConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One task definition of a run config."""

    name: str
    run: str | None = None
    command: list[str] | None = None
    depends: list[str | Dependency] = msgspec.field(default_factory=list)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    artifacts: list[str] = msgspec.field(default_factory=list)
    runs_on: dict[str, str] = msgspec.field(default_factory=dict)
    timeout: str | None = None
    progress_timeout: str | None = None
    on_lost: str = "retry"
    # How many lost attempts `on_lost: retry` tries again; the next loss fails the task.
    # A budget of its own, apart from `retry.max_attempts`: a vanished executor says
    # nothing about the task, so it must not use up the task's failures (nor they its).
    max_lost: int = 3
    retry: Retry | None = None
    continue_on_error: bool = False
    approval: bool | Approval = False
    when: When | None = None
    foreach: list[ForeachItem] | None = None
    foreach_strategy: str = "parallel"
    max_parallel: int | None = None

    def dependencies(self) -> list[Dependency]:
        """`depends` with the shorthand (a bare task name) spelled out."""
        if not self.depends:
            return []
        return [Dependency(task=d) if isinstance(d, str) else d for d in self.depends]


class RunConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The tasks of a run and the run-wide defaults."""

    tasks: list[TaskConfig]
    max_parallel: int | None = None
    timeout: str | None = None
    retry: Retry | None = None


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")


MAX_DURATION = timedelta(days=366)


def parse_duration(text: str) -> timedelta:
    """`500ms`, `2s`, `5m`, `1h`, `1d`, or combinations such as `1h30m`, at most a year.
    Raises ValueError on anything else, including an empty or negative duration."""
    stripped = text.strip()
    parts = _DURATION.findall(stripped)
    if not stripped or "".join(n + u for n, u in parts) != stripped:
        raise ValueError(f"invalid duration {text!r}; use e.g. 500ms, 2s, 5m, 1h, 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in parts)
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration {text!r} is longer than the limit of 366d")
    return timedelta(seconds=seconds)
