"""The run commands as pure functions: check the run's state, return the events, already
followed by what the scheduler decides next so the run is left at a fixed point.

None of them changes the run it is given: each folds its events under the run's undo
journal (so that later decisions see them) and the journal undoes them, unless an
enclosing `journal(keep_inner=True)` keeps them. A command that the state does not allow
raises `Conflict` (409), `Forbidden` (403) or `NotFound` (404).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

import msgspec

from runsvc.domain import templates
from runsvc.domain.config import Approval, RunConfig
from runsvc.domain.errors import Conflict, Forbidden, NotFound, SecretsNeeded
from runsvc.domain.events import (
    CarriedTask,
    Event,
    RunCreated,
    RunOutputDeleted,
    RunPhaseChanged,
    RunStopRequested,
    TaskApproved,
    TaskStatusChanged,
)
from runsvc.domain.expressions import ExpressionError
from runsvc.domain.fold import apply_event
from runsvc.domain.model import DEFAULT_MAX_FOREACH_ITEMS, FINAL, Run, Task
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.scheduler import attempt_outcome, emit, plan


def _then_plan(run: Run, now: datetime, first: Iterable[Event]) -> list[Event]:
    events: list[Event] = []
    with run.journal():
        for event in first:
            emit(run, events, event)
        plan(run, now, events)
    return events


def _task(run: Run, name: str) -> Task:
    task = run.tasks.get(name)
    if task is None:
        raise NotFound(f"run {run.id} has no task {name!r}")
    return task


def create_run(
    request: CreateRunRequest,
    *,
    run_id: str,
    counter: int,
    now: datetime,
    admitted: bool,
    carried: dict[str, CarriedTask] | None = None,
    recreated_from: str | None = None,
    submitted_by: str | None = None,
    max_foreach_items: int = DEFAULT_MAX_FOREACH_ITEMS,
) -> list[Event]:
    """A new run: RunCreated, then `setuperror`, or (when its concurrency key lets it run
    now) `running` and its first decisions; otherwise it stays `queued`."""
    created = RunCreated(
        run_id=run_id,
        group=request.group,
        name=request.name,
        counter=counter,
        config=request.config,
        created_at=now,
        annotations=request.annotations,
        static_environment=request.static_environment,
        environment=request.environment,
        setup_errors=request.setup_errors,
        idempotency_key=request.idempotency_key,
        concurrency_key=request.concurrency_key,
        recreated_from=recreated_from,
        carried=carried or {},
        submitted_by=submitted_by if submitted_by is not None else msgspec.UNSET,
        max_foreach_items=(
            msgspec.UNSET if max_foreach_items == DEFAULT_MAX_FOREACH_ITEMS else max_foreach_items
        ),
    )
    run = apply_event(None, created, version=1)
    if request.setup_errors:
        return [created, RunPhaseChanged(phase="setuperror", at=now)]
    if not admitted:
        return [created]
    return [created, *admit(run, now)]


def admit(run: Run, now: datetime) -> list[Event]:
    """Let a queued run start (its concurrency key's slot came free)."""
    if run.phase != "queued":
        raise Conflict(f"run {run.id} is {run.phase}, not queued")
    return _then_plan(run, now, [RunPhaseChanged(phase="running", at=now)])


def request_stop(run: Run, now: datetime, reason: str | None = None) -> list[Event]:
    """Stop a running run. A second stop while it is stopping changes nothing."""
    if run.phase != "running":
        hint = " (cancel a queued run instead)" if run.phase == "queued" else ""
        raise Conflict(f"run {run.id} is {run.phase}; only a running run can be stopped{hint}")
    if run.stop_requested:
        return []
    return _then_plan(run, now, [RunStopRequested(at=now, reason=reason)])


def cancel(run: Run, now: datetime) -> list[Event]:
    """Cancel a queued run: it never starts."""
    if run.phase != "queued":
        hint = " (stop a running run instead)" if run.phase == "running" else ""
        raise Conflict(f"run {run.id} is {run.phase}; only a queued run can be cancelled{hint}")
    ends: list[Event] = [
        TaskStatusChanged(task=task.name, status="cancelled", attempt=task.attempt, at=now)
        for task in sorted(run.tasks.values(), key=lambda t: t.order)
        if task.status not in FINAL
    ]
    # The tasks' ends first, so a watcher that sees the phase sees the whole outcome. Folded
    # like every command's events (nothing is planned for a run that is no longer running).
    return _then_plan(run, now, [*ends, RunPhaseChanged(phase="cancelled", at=now)])


def approve(
    run: Run,
    task_name: str,
    *,
    approver: str,
    comment: str | None,
    now: datetime,
    approver_role: str | None = None,
) -> list[Event]:
    """`approver` (a token name, with its role) approves the task's gate."""
    task = _task(run, task_name)
    if run.phase != "running" or run.stop_requested:
        raise Conflict(f"run {run.id} is not running; nothing can be approved")
    if task.status != "waiting_approval" or task.approved_by is not None:
        raise Conflict(f"task {task_name!r} is {task.status}, not waiting for approval")
    refusal = approval_refusal(run, task, approver, approver_role)
    if refusal is not None:
        raise Forbidden(refusal)
    approved = TaskApproved(task=task_name, approver=approver, comment=comment, at=now)
    return _then_plan(run, now, [approved])


def approval_refusal(run: Run, task: Task, approver: str, role: str | None) -> str | None:
    """Why `approver` (with `role`) may not approve `task`, or None if they may."""
    rule = task.spec.approval
    if not isinstance(rule, Approval):
        return None
    if rule.by and approver not in rule.by and (role is None or role not in rule.by):
        return f"task {task.name!r} may be approved only by {', '.join(rule.by)}"
    if rule.not_submitter and (run.submitted_by is None or approver == run.submitted_by):
        who = f" ({run.submitted_by})" if run.submitted_by else " (not recorded for this run)"
        return f"task {task.name!r} must be approved by someone other than its run's submitter{who}"
    return None


def claimable(run: Run, task: Task, now: datetime) -> bool:
    """Whether an executor may start `task` now."""
    return (
        run.phase == "running"
        and not run.stop_requested
        and task.status == "scheduled"
        and not task.is_parent
        and (task.next_attempt_at is None or task.next_attempt_at <= now)
    )


def start_attempt(
    run: Run,
    task_name: str,
    *,
    attempt: int,
    executor: str,
    now: datetime,
    resolve: bool = True,
    secrets: Mapping[str, int] | None = None,
) -> list[Event]:
    """An executor claimed the task: its attempt is running, with its templates rendered
    (recorded in the start). A template that cannot be rendered (an output its task
    never set) fails the task instead, naming the reference, and nothing runs: no retry,
    as every attempt would render the same. `resolve=False` (simulation, which has no
    outputs) starts the attempt without rendering.

    `secrets`: the version of each secret the run's group has, of those the task's env
    names; without it a task that names any raises `SecretsNeeded` (the command side
    looks them up and asks again). A secret that is not set fails the task the same way
    as a template that cannot be rendered, naming the secret. The start records the
    versions, never a value."""
    task = _task(run, task_name)
    if not claimable(run, task, now) or task.attempt != attempt:
        raise Conflict(f"task {task_name!r} attempt {attempt} cannot start now")
    resolved = None
    used: dict[str, int] = {}
    if resolve:
        needed = templates.secrets_of(task.spec)
        if needed and secrets is None:
            raise SecretsNeeded(run.group, needed)
        missing = [name for name in needed if secrets is None or name not in secrets]
        error = None
        if missing:
            error = (
                f"secret{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                f"{'are' if len(missing) > 1 else 'is'} not set for group {run.group} "
                "(the task's env names it)"
            )
        else:
            used = {name: secrets[name] for name in needed} if secrets else {}
            try:
                resolved = templates.resolve(run, task)
            except ExpressionError as exc:
                error = str(exc)
        if error is not None:
            failed = TaskStatusChanged(
                task=task_name, status="failed", attempt=attempt, at=now, error=error
            )
            return _then_plan(run, now, [failed])
    started = TaskStatusChanged(
        task=task_name,
        status="running",
        attempt=attempt,
        at=now,
        executor=executor,
        resolved=resolved or msgspec.UNSET,
        secrets=used or msgspec.UNSET,
    )
    return _then_plan(run, now, [started])


def _running_attempt(run: Run, task_name: str, attempt: int) -> Task:
    task = _task(run, task_name)
    if task.status != "running" or task.attempt != attempt:
        # Fencing: a report about an attempt that is not the current one changes nothing.
        raise Conflict(
            f"task {task_name!r} attempt {attempt} is not running "
            f"(it is {task.status}, attempt {task.attempt})"
        )
    return task


def finish_attempt(
    run: Run,
    task_name: str,
    *,
    attempt: int,
    succeeded: bool,
    exit_code: int | None,
    error: str | None,
    now: datetime,
    outputs: dict[str, str] | None = None,
) -> list[Event]:
    """The executor reports how the attempt ended, with what it wrote to its output file."""
    task = _running_attempt(run, task_name, attempt)
    outcome = attempt_outcome(
        run, task, now, succeeded=succeeded, exit_code=exit_code, error=error, outputs=outputs
    )
    return _then_plan(run, now, [outcome])


MAX_UNCONFIRMED = 10
"""Losses of never-confirmed attempts a task is given for free. Past it they count as
ordinary losses, so an executor that dies on receiving a task cannot loop on it."""


def lose_attempt(
    run: Run,
    task_name: str,
    *,
    attempt: int,
    error: str,
    now: datetime,
    unconfirmed: bool = False,
) -> list[Event]:
    """The attempt's executor is gone (lease expired, stalled, handed back): record it as
    `lost`, then the task's `on_lost` decides: retry (up to `max_lost` lost attempts,
    apart from the retry policy's failures) or fail.

    `unconfirmed`: the executor never confirmed it had the attempt (no heartbeat, output
    or report reached us; e.g. the claim's answer was lost in a crash). Such an attempt is
    put back without using any budget, up to MAX_UNCONFIRMED times."""
    task = _running_attempt(run, task_name, attempt)
    free = unconfirmed and task.unconfirmed < MAX_UNCONFIRMED
    lost = TaskStatusChanged(
        task=task_name,
        status="lost",
        attempt=attempt,
        at=now,
        executor=task.executor,
        error=error,
        unconfirmed=True if free else msgspec.UNSET,
    )
    events: list[Event] = []
    with run.journal():
        emit(run, events, lost)
        outcome = attempt_outcome(
            run,
            task,
            now,
            succeeded=False,
            exit_code=None,
            error=error,
            lost=True,
            unconfirmed=free,
        )
        emit(run, events, outcome)
        plan(run, now, events)
    return events


def record_output_deleted(
    run: Run, now: datetime, *, older_than: datetime, logs: int, artifacts: int
) -> list[Event]:
    """Retention removed the run's logs and artifacts; recorded once."""
    if run.output_deleted_at is not None:
        return []
    deleted = RunOutputDeleted(at=now, older_than=older_than, logs=logs, artifacts=artifacts)
    return _then_plan(run, now, [deleted])


def tick(run: Run, now: datetime) -> list[Event]:
    """What time alone brings (timeouts); the timer loop calls it when a run is due."""
    events: list[Event] = []
    with run.journal():
        plan(run, now, events)
    return events


def rerun_closure(run: Run, chosen: Iterable[str]) -> set[str]:
    """The chosen top-level tasks and everything that depends on them."""
    found: set[str] = set()
    stack = list(chosen)
    while stack:
        name = stack.pop()
        if name in found:
            continue
        found.add(name)
        stack += run.dependents.get(name, [])
    return {name for name in found if run.tasks[name].parent is None}


def recreation(old: Run, environment: dict[str, str] | None) -> CreateRunRequest:
    """What recreating `old` asks for: its config, keys, annotations and static environment,
    with its environment or a replacement. Only a run that has ended can be recreated."""
    if old.phase not in ("finished", "cancelled", "setuperror"):
        raise Conflict(f"run {old.id} is {old.phase}; recreate a run once it has ended")
    return CreateRunRequest(
        group=old.group,
        name=old.name,
        config=RunConfig(
            tasks=old.config.tasks,
            max_parallel=old.config.max_parallel,
            timeout=old.config.timeout,
            retry=old.config.retry,
        ),
        concurrency_key=old.concurrency_key,
        annotations=old.annotations,
        static_environment=old.static_environment,
        environment=old.environment if environment is None else environment,
    )


def recreate(
    old: Run,
    *,
    mode: str,
    tasks: list[str] | None,
    environment: dict[str, str] | None,
    run_id: str,
    counter: int,
    now: datetime,
    admitted: bool,
    submitted_by: str | None = None,
    max_foreach_items: int = DEFAULT_MAX_FOREACH_ITEMS,
) -> list[Event]:
    """A new run from `old`'s config: from scratch, from its failed tasks, or from chosen
    tasks, each with what depends on them. Succeeded tasks not re-run are carried over
    with their ids and results (so their logs and artifacts are reused). The static
    environment is kept; the environment may be replaced."""
    request = recreation(old, environment)
    top = [t for t in old.tasks.values() if t.parent is None]
    if tasks:
        unknown = [name for name in tasks if name not in old.tasks or old.tasks[name].parent]
        if unknown:
            raise NotFound(f"run {old.id} has no task {unknown[0]!r}")
        rerun = rerun_closure(old, tasks)
    elif mode == "scratch":
        rerun = {t.name for t in top}
    else:
        rerun = rerun_closure(old, [t.name for t in top if t.status != "success"])
    carried = {
        t.name: CarriedTask(
            id=t.id,
            attempt=t.attempt,
            started_at=t.started_at,
            finished_at=t.finished_at,
            exit_code=t.exit_code,
            executor=t.executor,
            outputs=templates.gathered_texts(old, t) if t.is_parent else t.outputs,
        )
        for t in top
        if t.status == "success" and t.name not in rerun
    }
    return create_run(
        request,
        run_id=run_id,
        counter=counter,
        now=now,
        admitted=admitted,
        carried=carried,
        recreated_from=old.id,
        submitted_by=submitted_by,
        max_foreach_items=max_foreach_items,
    )
