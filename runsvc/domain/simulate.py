"""Simulation: a preview of a config, computed by driving the real commands and scheduler
on a run that exists only in memory. Nothing is written.

Every task succeeds unless `outcomes` says otherwise: `failure` (every attempt fails) or
`no_approval` (its approval never comes: it and everything waiting on it are `blocked`).
Other approvals are granted. Retry waits and timeouts do not slow the preview down: the
clock jumps to whenever the next attempt may start.

An outcome may also give the outputs the task's attempts write, so that `when`, a
`foreach` expression, `fail_if` and `retry_if` decide on them. An expression that reads
an output the simulation was not given cannot decide: its task is `blocked` (with the
reference in the reason), and so is what waits for it. `run`, `command` and `env` are
not rendered.
"""

from __future__ import annotations

import heapq
from datetime import UTC, datetime
from typing import Literal

import msgspec

from runsvc.domain import commands, templates
from runsvc.domain.config import RunConfig
from runsvc.domain.events import Event, TaskStatusChanged
from runsvc.domain.expressions.errors import NEVER_SET
from runsvc.domain.fold import apply_event
from runsvc.domain.model import Run, Task
from runsvc.domain.requests import CreateRunRequest, SimulationRequest

SimulatedStatus = Literal["would_run", "skipped", "requires_approval", "blocked"]


class SimulatedTask(msgspec.Struct, frozen=True):
    name: str
    status: SimulatedStatus
    reason: str
    wave: int | None
    expanded_from: str | None = None
    item: str | None = None


class SimulatedSecret(msgspec.Struct, frozen=True):
    """A secret the run's tasks would be given, and whether the run's group has it (a
    task whose secret is not set fails when it starts)."""

    name: str
    exists: bool


class SimulationResult(msgspec.Struct, frozen=True):
    tasks: list[SimulatedTask]
    waves: int
    result: Literal["success", "failed", "blocked"]
    secrets: list[SimulatedSecret] = msgspec.field(default_factory=list)


def needed_secrets(config: RunConfig) -> list[str]:
    """Every secret the config's tasks name in their env, sorted."""
    return sorted({name for spec in config.tasks for name in templates.secrets_of(spec)})


_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def simulate(request: SimulationRequest) -> SimulationResult:
    create = CreateRunRequest(
        group="/simulation",
        name="simulation",
        config=request.config,
        static_environment=request.static_environment,
        environment=request.environment,
    )
    now = _EPOCH
    claimable: list[tuple[datetime, tuple[int, int], str]] = []
    gated: list[str] = []

    def applied(run: Run | None, events: list[Event]) -> Run:
        # Track what becomes claimable or waits for approval from the events themselves,
        # so each step costs what changed (a preview of a 10,000-task config stays fast).
        for event in events:
            run = apply_event(run, event, version=(run.version if run else 0) + 1)
            if isinstance(event, TaskStatusChanged):
                task = run.tasks[event.task]
                if event.status == "scheduled" and not task.is_parent:
                    heapq.heappush(
                        claimable, (event.next_attempt_at or _EPOCH, task.order, task.name)
                    )
                elif event.status == "waiting_approval":
                    gated.append(task.name)
        assert run is not None
        return run

    create_events = commands.create_run(
        create, run_id="simulation", counter=1, now=now, admitted=True
    )
    run = applied(None, create_events)
    approved: set[str] = set()
    while run.phase == "running":
        if claimable:
            not_before, _, name = heapq.heappop(claimable)
            task = run.tasks[name]
            if task.status != "scheduled":
                continue
            now = max(now, not_before)
            attempt = task.attempt
            run = applied(
                run,
                commands.start_attempt(
                    run, name, attempt=attempt, executor="simulation", now=now, resolve=False
                ),
            )
            outcome = request.outcome(_outcome_key(task))
            fails = outcome.status == "failure"
            run = applied(
                run,
                commands.finish_attempt(
                    run,
                    name,
                    attempt=attempt,
                    succeeded=not fails,
                    exit_code=1 if fails else 0,
                    error="failure injected by the simulation" if fails else None,
                    now=now,
                    outputs=dict(outcome.outputs),
                ),
            )
            continue
        waiting = [n for n in gated if request.outcome(n).status != "no_approval"]
        if not waiting:
            break
        gated.remove(waiting[0])
        approved.add(waiting[0])
        run = applied(
            run, commands.approve(run, waiting[0], approver="simulation", comment=None, now=now)
        )
    return _result(run, approved)


def _outcome_key(task: Task) -> str:
    # An outcome named for a foreach task applies to each of its items.
    return task.parent if task.parent is not None else task.name


def _in_order(run: Run) -> list[Task]:
    return sorted(run.tasks.values(), key=lambda t: t.order)


def _undecided(task: Task) -> bool:
    """The task failed on an output the simulation was not given."""
    return task.status == "failed" and NEVER_SET in (task.error or "")


def _waves(run: Run) -> dict[str, int]:
    waves: dict[str, int] = {}
    for task in _in_order(run):
        if task.parent is not None:
            waves[task.name] = waves[task.parent]
        else:
            waves[task.name] = 1 + max((waves[d.task] for d in task.depends), default=-1)
    return waves


def _result(run: Run, approved: set[str]) -> SimulationResult:
    waves = _waves(run)
    blocked: set[str] = set()
    tasks: list[SimulatedTask] = []
    undecided = {t.name for t in run.tasks.values() if _undecided(t)}
    # A foreach task comes before its items: one that could not decide blocks it.
    undecided |= {t.parent for t in run.tasks.values() if t.name in undecided and t.parent}
    for task in _in_order(run):
        status: SimulatedStatus
        waiting = [d.task for d in task.depends if d.task in blocked]
        if task.is_parent and task.name in undecided and not _undecided(task):
            status, reason = "blocked", "an item is blocked"
            blocked.add(task.name)
        elif _undecided(task):
            status = "blocked"
            reason = f"{task.error}; give it in the task's outcome"
            blocked.add(task.name)
        elif task.status == "skipped" and waiting:
            # Skipped because something it waits on could not decide: it is as unknown.
            status, reason = "blocked", f"waits for {', '.join(waiting)}, which is blocked"
            blocked.add(task.name)
        elif task.status == "skipped":
            status, reason = "skipped", task.error or "skipped"
        elif task.status == "waiting_approval" or (
            task.status == "notstarted" and run.phase == "running"
        ):
            status = "blocked"
            if task.status == "waiting_approval":
                reason = "waits for an approval that never comes"
            elif waiting:
                reason = f"waits for {', '.join(waiting)}, which is blocked"
            else:
                reason = "never becomes ready"
            blocked.add(task.name)
        elif task.name in approved:
            status, reason = "requires_approval", "runs once approved"
        else:
            status = "would_run"
            outcome = "fails" if task.status == "failed" else "succeeds"
            reason = (
                f"runs and {outcome}"
                if not task.children
                else f"fans out into {len(task.children)} items"
            )
        tasks.append(
            SimulatedTask(
                name=task.name,
                status=status,
                reason=reason,
                wave=waves[task.name] if status in ("would_run", "requires_approval") else None,
                expanded_from=task.parent,
                item=task.item,
            )
        )
    ran = [t.wave for t in tasks if t.wave is not None]
    result: Literal["success", "failed", "blocked"] = (
        "blocked" if blocked else "failed" if run.result == "failed" else "success"
    )
    return SimulationResult(tasks=tasks, waves=max(ran) + 1 if ran else 0, result=result)
