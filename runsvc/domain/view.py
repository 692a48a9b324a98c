"""A run as the API shows it (docs/api.md, "A run"), with a reason a person can read for every
task that is neither running nor final."""

from __future__ import annotations

from datetime import datetime

import msgspec

from runsvc.domain.config import Approval
from runsvc.domain.events import Phase, Result, TaskStatus
from runsvc.domain.fold import unmet_dependency, when_holds
from runsvc.domain.model import FINAL, Run, Task


class DependencyView(msgspec.Struct, frozen=True):
    task: str
    on: list[str]


class TaskView(msgspec.Struct, frozen=True):
    name: str
    id: str
    status: TaskStatus
    attempt: int
    depends: list[DependencyView]
    executor: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str | None
    next_attempt_at: datetime | None
    log_url: str
    parent: str | None
    item: str | None
    reason: str | None = None
    approved_by: str | None = None
    approval_comment: str | None = None
    children: list[str] = msgspec.field(default_factory=list)
    approved_at: datetime | None = None
    # Absent when the attempt wrote none: the views of runs without outputs keep their
    # bytes, and most tasks have none.
    outputs: dict[str, str] | msgspec.UnsetType = msgspec.UNSET


class RunView(msgspec.Struct, frozen=True):
    id: str
    group: str
    name: str
    counter: int
    phase: Phase
    result: Result
    stop_requested: bool
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    annotations: dict[str, str]
    setup_errors: list[str]
    version: int
    position: int
    tasks: dict[str, TaskView]
    environment: dict[str, str] = msgspec.field(default_factory=dict)
    static_environment: dict[str, str] = msgspec.field(default_factory=dict)
    idempotency_key: str | None = None
    concurrency_key: str | None = None
    recreated_from: str | None = None
    stop_reason: str | None = None
    queue_position: int | None = None
    output_deleted_at: datetime | None = None


def _slot_limit(run: Run, task: Task) -> str:
    if task.parent is not None:
        parent_limit = run.tasks[task.parent].spec.max_parallel
        if parent_limit is not None and run.active_in.get(task.parent, 0) >= parent_limit:
            return f"waiting for a slot ({task.parent} runs at most {parent_limit} at once)"
    limit = run.config.max_parallel
    if limit is None:
        # Ready and unlimited: only seen in a past state, between an event and the
        # scheduling it leads to, which the same command records.
        return "about to be scheduled"
    return f"waiting for a slot (the run runs at most {limit} tasks at once)"


def approvers(task: Task) -> str:
    """Who may approve the task's gate, as the end of its reason."""
    rule = task.spec.approval
    if not isinstance(rule, Approval):
        return ""
    parts = [f"by {', '.join(rule.by)}"] if rule.by else []
    if rule.not_submitter:
        parts.append("not by its run's submitter")
    return f" ({'; '.join(parts)})" if parts else ""


def task_reason(run: Run, task: Task) -> str | None:
    """Why the task is not running (None when it is running or final)."""
    if task.status in FINAL:
        return None
    if run.phase == "setuperror":
        return "the run has setup errors and never runs"
    if run.phase == "queued":
        return "the run is queued behind another run with the same concurrency key"
    if run.phase == "cancelled":
        return "the run was cancelled"
    status = task.status
    if status == "running":
        if task.children:
            open_children = [c for c in task.children if not run.tasks[c].final]
            return f"waiting for {len(open_children)} of {len(task.children)} items"
        return None
    if status == "waiting_approval":
        if task.approved_by is not None:
            return f"approved by {task.approved_by}; " + _slot_limit(run, task)
        asked = f": {task.approval_message}" if task.approval_message else ""
        return "waiting for approval" + approvers(task) + asked
    if status == "lost":
        return "its executor was lost; deciding what follows"
    if status == "scheduled":
        total = task.spec.retry or run.config.retry
        # Lost attempts do not count against max_attempts, so each one adds an attempt.
        free = task.lost + task.unconfirmed
        counts = [f"attempt {task.attempt} of {total.max_attempts + free}"] if total else []
        if task.lost:
            counts.append(f"{task.lost} lost")
        if task.unconfirmed:
            counts.append(f"{task.unconfirmed} never confirmed")
        attempts = f" ({', '.join(counts)})" if counts else ""
        if task.next_attempt_at is not None:
            return f"waiting for its retry time {task.next_attempt_at.isoformat()}{attempts}"
        labels = ", ".join(f"{k}={v}" for k, v in sorted(task.spec.runs_on.items()))
        wanted = f" with labels {labels}" if labels else ""
        return f"waiting for an executor{wanted}"
    waiting = [d.task for d in task.depends if not run.tasks[d.task].final]
    if waiting and unmet_dependency(run, task) is None:
        return f"waiting for {', '.join(waiting)}"
    if run.stop_requested:
        return "the run is stopping"
    if unmet_dependency(run, task) is not None or not when_holds(run, task):
        return "about to be skipped"
    if task.spec.approval and task.parent is None and task.approved_by is None:
        return "waiting for approval" + approvers(task)
    if task.order in run.slots.get(task.slot_group, ()):
        return _slot_limit(run, task)
    return "about to be scheduled"


def task_view(run: Run, task: Task) -> TaskView:
    return TaskView(
        name=task.name,
        id=task.id,
        status=task.status,
        attempt=task.attempt,
        depends=[DependencyView(task=d.task, on=list(d.on)) for d in task.depends],
        executor=task.executor,
        started_at=task.started_at,
        finished_at=task.finished_at,
        exit_code=task.exit_code,
        error=task.error,
        next_attempt_at=task.next_attempt_at,
        log_url=f"/api/v1/tasks/{task.id}/logs",
        parent=task.parent,
        item=task.item,
        reason=task_reason(run, task),
        approved_by=task.approved_by,
        approval_comment=task.approval_comment,
        children=list(task.children),
        approved_at=task.approved_at,
        outputs=task.outputs or msgspec.UNSET,
    )


def run_view(run: Run, *, queue_position: int | None = None) -> RunView:
    return RunView(
        id=run.id,
        group=run.group,
        name=run.name,
        counter=run.counter,
        phase=run.phase,
        result=run.result,
        stop_requested=run.stop_requested,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
        annotations=run.annotations,
        setup_errors=run.setup_errors,
        version=run.version,
        position=run.position,
        tasks={
            task.name: task_view(run, task)
            for task in sorted(run.tasks.values(), key=lambda t: t.order)
        },
        environment=run.environment,
        static_environment=run.static_environment,
        idempotency_key=run.idempotency_key,
        concurrency_key=run.concurrency_key,
        recreated_from=run.recreated_from,
        stop_reason=run.stop_reason,
        queue_position=queue_position,
        output_deleted_at=run.output_deleted_at,
    )
