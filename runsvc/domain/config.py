"""Run config types: the shape a client sends in `config` (see docs/api.md).

These Structs only describe *shape*; msgspec checks types while decoding and reports the
first type error with its JSON path. The rules that need the whole config (unknown
dependencies, cycles, durations, name syntax, limits) live in `runsvc.domain.validation`, which
reports every problem at once. The types live here, at the bottom of the import chain,
because `RunCreated` carries the config and every layer reads it.

New fields always get defaults so that events written by an older version still decode.

Every field carries a `Meta(description=...)`: `runsvc schema` (the JSON Schema editors use)
and `/openapi.json` show it. A description constrains nothing, so decoding is unchanged;
docs/run-file.md says more about each field, and a test holds it to every field here.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

DependencyCondition = Literal["success", "failure", "skipped"]


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """How often, and how patiently, a failed task is tried again."""

    max_attempts: Annotated[
        int,
        Meta(
            description="Attempts in all, the first included (1-100); lost attempts do not "
            "count. 1: no retry."
        ),
    ] = 1
    backoff: Annotated[
        str,
        Meta(
            description="Wait after the first failed attempt, a duration such as 10s (0s: "
            "retry at once); each later wait is `factor` times the previous one."
        ),
    ] = "0s"
    factor: Annotated[
        float, Meta(description="What each wait is multiplied by for the next one (1-100).")
    ] = 2.0
    max_backoff: Annotated[
        str, Meta(description="The longest wait between two attempts, a duration.")
    ] = "10m"


class Dependency(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A parent of a task and the parent outcomes that let the task run."""

    task: Annotated[str, Meta(description="The name of the parent task.")]
    # A list of strings, not a Literal, so that validation can report every invalid value
    # with its path instead of msgspec stopping at the first.
    on: Annotated[
        list[str],
        Meta(
            description="The parent's outcomes that let this task run, any of success, "
            "failure (a stopped or cancelled parent counts as failure) and skipped; "
            "default [success]. Otherwise this task is skipped."
        ),
    ] = msgspec.field(default_factory=lambda: ["success"])


class Approval(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Who may approve a task's gate. `approval: true` lets anyone who may submit runs
    approve; this narrows it to a second pair of eyes."""

    by: Annotated[
        list[str],
        Meta(
            description="Token names or roles that may approve; empty: anyone who may submit runs."
        ),
    ] = msgspec.field(default_factory=list)
    not_submitter: Annotated[
        bool,
        Meta(description="The token that created the run may not approve it."),
    ] = False
    message: Annotated[
        str | None,
        Meta(
            description="What approvers are asked, shown while the task waits; may hold "
            "${{ … }} expressions, rendered when the task starts to wait."
        ),
    ] = None


class When(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """A declarative condition on the run's environment; nothing user-written is evaluated.
    Give `env` and exactly one of `equals`, `not_equals` and `in`."""

    env: Annotated[
        str,
        Meta(
            description="The variable of the run's environment to look at (`environment` "
            "over `static_environment`)."
        ),
    ]
    equals: Annotated[
        str | None,
        Meta(description="Holds when the variable has exactly this value."),
    ] = None
    not_equals: Annotated[
        str | None,
        Meta(description="Holds when the variable is unset or has another value."),
    ] = None
    in_: Annotated[
        list[str] | None, Meta(description="Holds when the variable has one of these values.")
    ] = msgspec.field(default=None, name="in")


class Input(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Artifacts of an earlier task that an attempt gets in its work directory before it
    starts."""

    task: Annotated[
        str,
        Meta(
            description="The task that uploaded them: one this task depends on, directly or "
            "not (a foreach task: all its items)."
        ),
    ]
    paths: Annotated[
        list[str],
        Meta(
            description="Which of its artifacts: files or directories, relative to its "
            "work directory; each must have been uploaded. Empty: all of them."
        ),
    ] = msgspec.field(default_factory=list)


ForeachItem = str | int | float | bool


class TaskConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """One task of a run: what it runs, after which tasks, where and how often."""

    name: Annotated[
        str,
        Meta(description="Unique in the run: 1-100 characters of A-Z a-z 0-9 _ . -"),
    ]
    run: Annotated[
        str | None,
        Meta(description="A shell script, run by /bin/sh -c. Give this or `command`."),
    ] = None
    command: Annotated[
        list[str] | None,
        Meta(
            description="A program and its arguments, run without a shell (a name without "
            "/ is looked up on PATH). Give this or `run`."
        ),
    ] = None
    depends: Annotated[
        list[str | Dependency],
        Meta(
            description="The tasks this one runs after: a name (after it succeeded), or "
            "{task, on} to accept other outcomes."
        ),
    ] = msgspec.field(default_factory=list)
    env: Annotated[
        dict[str, str],
        Meta(description="Environment variables of this task, over the run's environment."),
    ] = msgspec.field(default_factory=dict)
    artifacts: Annotated[
        list[str],
        Meta(
            description="Files or directories, relative to the attempt's work directory, "
            "uploaded when an attempt ends."
        ),
    ] = msgspec.field(default_factory=list)
    inputs: Annotated[
        list[str | Input],
        Meta(
            description="Artifacts of earlier tasks downloaded into the work directory, at "
            "the same paths, before the command starts: a task name (all its artifacts), "
            "or {task, paths}."
        ),
    ] = msgspec.field(default_factory=list)
    runs_on: Annotated[
        dict[str, str],
        Meta(
            description="Labels an executor must have, each with this value, to run the "
            "task (`runsvc executor --labels os=linux`)."
        ),
    ] = msgspec.field(default_factory=dict)
    timeout: Annotated[
        str | None,
        Meta(
            description="The longest one attempt may run, a duration; past it the attempt "
            "fails and `retry` applies."
        ),
    ] = None
    progress_timeout: Annotated[
        str | None,
        Meta(
            description="The longest one attempt may go without output, a duration; past "
            "it the attempt is ended."
        ),
    ] = None
    on_lost: Annotated[
        str,
        Meta(
            description="What follows an attempt whose executor vanished, stalled or handed "
            "it back: retry (at once, up to `max_lost` times) or fail."
        ),
    ] = "retry"
    # A budget of its own, apart from `retry.max_attempts`: a vanished executor says
    # nothing about the task, so it must not use up the task's failures (nor they its).
    max_lost: Annotated[
        int,
        Meta(
            description="With on_lost: retry, how many lost attempts are tried again "
            "(1-100); the next loss fails the task."
        ),
    ] = 3
    retry: Annotated[
        Retry | None,
        Meta(description="This task's retry policy, in place of the run's `retry`."),
    ] = None
    fail_if: Annotated[
        str | None,
        Meta(
            description="One ${{ … }} expression judged when an attempt exits 0, on its "
            "exit_code and outputs.<key>: when it holds, the attempt failed (and `retry` "
            "applies)."
        ),
    ] = None
    retry_if: Annotated[
        str | None,
        Meta(
            description="One ${{ … }} expression judged when an attempt failed, on its "
            "exit_code and outputs.<key>: the task is tried again (within `retry`) only "
            "when it holds."
        ),
    ] = None
    continue_on_error: Annotated[
        bool,
        Meta(description="This task failing does not make the run fail."),
    ] = False
    approval: Annotated[
        bool | Approval,
        Meta(
            description="Wait for a person to approve (`runsvc approve`) before running: "
            "true, or {by, not_submitter} to say who may."
        ),
    ] = False
    when: Annotated[
        When | str | None,
        Meta(
            description="Run only when this holds, else skipped: {env, equals | not_equals "
            "| in} on the run's environment, or one ${{ … }} expression, looked at once "
            "the task's dependencies have ended."
        ),
    ] = None
    foreach: Annotated[
        list[ForeachItem] | str | None,
        Meta(
            description="Run once per item, as tasks name[0], name[1], ...; each sees its "
            "item as RUNSVC_ITEM: a list of strings, numbers or booleans, or one ${{ … }} "
            "expression giving a list once the task's dependencies have ended, such as "
            "${{ fromJSON(tasks.plan.outputs.shards) }}."
        ),
    ] = None
    foreach_strategy: Annotated[
        str,
        Meta(
            description="How foreach items run: parallel, or sequence (each after the "
            "previous one succeeded)."
        ),
    ] = "parallel"
    max_parallel: Annotated[
        int | None,
        Meta(description="For a foreach task: how many of its items run at once."),
    ] = None

    def dependencies(self) -> list[Dependency]:
        """`depends` with the shorthand (a bare task name) spelled out."""
        if not self.depends:
            return []
        return [Dependency(task=d) if isinstance(d, str) else d for d in self.depends]

    def input_specs(self) -> list[Input]:
        """`inputs` with the shorthand (a bare task name) spelled out."""
        if not self.inputs:
            return []
        return [Input(task=i) if isinstance(i, str) else i for i in self.inputs]


class RunConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """The tasks of a run and the run-wide defaults."""

    tasks: Annotated[list[TaskConfig], Meta(description="The tasks of the run, at least one.")]
    max_parallel: Annotated[
        int | None,
        Meta(
            description="How many tasks of the run may be scheduled or running at once; "
            "default: no limit."
        ),
    ] = None
    timeout: Annotated[
        str | None,
        Meta(
            description="The longest the run may take from its start, a duration (time "
            "waiting for an approval does not count); past it the run is stopped and fails."
        ),
    ] = None
    retry: Annotated[
        Retry | None,
        Meta(description="The retry policy of every task that has none of its own."),
    ] = None


# A duration's syntax in parts, so that the JSON Schema states the same syntax as a pattern.
_NUMBER = r"\d+(?:\.\d+)?"
_UNIT = "ms|s|m|h|d"
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(rf"({_NUMBER})({_UNIT})")
DURATION_PATTERN = rf"^\s*(?:{_NUMBER}(?:{_UNIT}))+\s*$"
"""The texts `parse_duration` reads (with ASCII digits), as a JSON Schema pattern; it also
matches what it refuses by value: zero where a timeout must be longer, more than 366d."""


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
