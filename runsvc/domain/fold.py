"""The fold: what each event does to a run. Pure and synchronous.

`apply` is the only way a `Run` changes, for the projection, for the command side and (under
an undo journal) for the scheduler's look-ahead. It mutates and returns the run it is given:
folding must be cheap, so nothing is copied.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Protocol

import msgspec

from runsvc.domain.config import Dependency, TaskConfig
from runsvc.domain.events import (
    Event,
    RunCreated,
    RunOutputDeleted,
    RunPhaseChanged,
    RunResultChanged,
    RunStopRequested,
    TaskApproved,
    TaskExpanded,
    TaskStatusChanged,
    UnknownEvent,
)
from runsvc.domain.model import ACTIVE, FINAL, OUTCOME, Run, Task, task_id, topological_order
from runsvc.domain.templates import when_verdict

TERMINAL_PHASES = frozenset({"finished", "cancelled", "setuperror"})
UNSTARTED = frozenset({"notstarted", "waiting_approval", "scheduled"})


# -- rules the fold and the scheduler share ------------------------------------------------


def unmet_dependency(run: Run, task: Task) -> str | None:
    """Why `task` can never run: the first dependency (in `depends` order) whose parent is
    final with an outcome it does not accept; None while every final parent is accepted.
    Parents not final yet do not matter: one refused outcome decides the task, however
    the others end (it is skipped at once, not when the last parent ends)."""
    for dependency in task.depends:
        parent = run.tasks[dependency.task]
        if not parent.final:
            continue
        outcome = OUTCOME.get(parent.status)
        if outcome not in dependency.on:
            return f"{dependency.task} ended {parent.status}; needs {' or '.join(dependency.on)}"
    return None


def when_holds(run: Run, task: Task) -> bool:
    """Whether the task's `when` lets it run; an expression that cannot be evaluated
    does not (the scheduler fails the task with `when_failure`)."""
    condition = task.spec.when
    if condition is None or task.parent is not None:
        return True
    if isinstance(condition, str):
        return when_verdict(run, task) is True
    value = run.merged_environment.get(condition.env)
    if condition.equals is not None:
        return value == condition.equals
    if condition.not_equals is not None:
        return value != condition.not_equals
    if condition.in_ is not None:
        return value in condition.in_
    return True


def when_failure(run: Run, task: Task) -> str | None:
    """Why the task's expression `when` cannot be evaluated, if it cannot."""
    if not isinstance(task.spec.when, str) or task.parent is not None:
        return None
    verdict = when_verdict(run, task)
    return verdict if isinstance(verdict, str) else None


def describe_when(task: Task) -> str:
    condition = task.spec.when
    assert condition is not None
    if isinstance(condition, str):
        return f"when {condition.strip()} does not hold"
    if condition.equals is not None:
        return f"when {condition.env} == {condition.equals!r} does not hold"
    if condition.not_equals is not None:
        return f"when {condition.env} != {condition.not_equals!r} does not hold"
    return f"when {condition.env} in {condition.in_!r} does not hold"


def child_spec(parent: TaskConfig) -> TaskConfig:
    """What a foreach child runs: the parent's definition minus what belongs to the parent
    (its dependencies, condition, approval gate and fan-out)."""
    return msgspec.structs.replace(
        parent, foreach=None, approval=False, when=None, depends=[], max_parallel=None
    )


# -- building -------------------------------------------------------------------------------


def _create(event: RunCreated) -> Run:
    run = Run()
    run.id = event.run_id
    run.group = event.group
    run.name = event.name
    run.counter = event.counter
    run.config = event.config
    run.created_at = event.created_at
    run.annotations = dict(event.annotations)
    run.setup_errors = list(event.setup_errors)
    run.static_environment = dict(event.static_environment)
    run.environment = dict(event.environment)
    run.idempotency_key = event.idempotency_key
    run.submitted_by = event.submitted_by or None
    run.concurrency_key = event.concurrency_key
    run.recreated_from = event.recreated_from
    if event.max_foreach_items is not msgspec.UNSET:
        run.max_foreach_items = event.max_foreach_items
    for index, spec in enumerate(topological_order(event.config)):
        task = Task(
            name=spec.name,
            id=task_id(event.run_id, spec.name),
            spec=spec,
            depends=spec.dependencies(),
            order=(index, -1),
        )
        run.tasks[spec.name] = task
        run.dependents[spec.name] = []
    for task in run.tasks.values():
        for dependency in task.depends:
            if dependency.task in run.dependents:
                run.dependents[dependency.task].append(task.name)
    for name, carried in event.carried.items():
        if name not in run.tasks:
            continue
        task = run.tasks[name]
        task.id = carried.id
        task.status = "success"
        task.attempt = carried.attempt
        task.started_at = carried.started_at
        task.finished_at = carried.finished_at
        task.exit_code = carried.exit_code
        task.executor = carried.executor
        task.outputs = dict(carried.outputs)
        task.expanded = task.is_parent
    rebuild_indexes(run)
    return run


def add_children(run: Run, parent: Task, event: TaskExpanded) -> None:
    spec = child_spec(parent.spec)
    sequence = parent.spec.foreach_strategy == "sequence"
    previous: str | None = None
    names = []
    for child in event.children:
        task = Task(
            name=child.name,
            id=task_id(run.id, child.name),
            spec=spec,
            depends=[Dependency(task=previous)] if sequence and previous else [],
            order=(parent.order[0], child.index),
            parent=parent.name,
            item=child.item,
            index=child.index,
        )
        task.item_json = child.json
        run.set_item(run.tasks, task.name, task)
        run.set_item(run.dependents, task.name, [])
        if sequence and previous is not None:
            run.dependents[previous].append(task.name)
        names.append(task.name)
        previous = task.name
    run.set(parent, "children", names)
    run.set(parent, "expanded", True)


# -- derived indexes ------------------------------------------------------------------------


def _parents_pending(run: Run, task: Task) -> int:
    return sum(1 for d in task.depends if not run.tasks[d.task].final)


def classify(run: Run, task: Task) -> None:
    """File a task into the bucket of the decision it needs: `skip` as soon as one of its
    dependencies can no longer hold; the other decisions once all its parents are final."""
    if task.status == "notstarted" and unmet_dependency(run, task) is not None:
        run.insort(run.skip, task.order)
        return
    if run.pending.get(task.name, 0):
        return
    if task.status == "notstarted":
        # `when` is only looked at once the parents are final, as before: a task skipped
        # by its condition keeps its place in the order of the run, so what depends on it
        # being skipped does not start ahead of its grandparents.
        if not when_holds(run, task):
            run.insort(run.skip, task.order)
        elif task.spec.approval and task.parent is None and task.approved_by is None:
            run.insort(run.gate, task.order)
        elif task.is_parent and not task.expanded:
            run.insort(run.expand, task.order)
        else:
            run.insort(run.slot_queue(task.slot_group), task.order)
    elif task.status == "waiting_approval" and task.approved_by is not None:
        if task.is_parent and not task.expanded:
            run.insort(run.expand, task.order)
        else:
            run.insort(run.slot_queue(task.slot_group), task.order)


def unclassify(run: Run, task: Task) -> None:
    for bucket in (run.skip, run.gate, run.expand):
        run.discard(bucket, task.order)
    queue = run.slots.get(task.slot_group)
    if queue is not None:
        run.discard(queue, task.order)


def _track_deadline(run: Run, task: Task) -> None:
    timeout = task.timeout()
    if timeout is not None and task.started_at is not None and not task.is_parent:
        run.push_deadline(task.started_at + timeout, task)


def rebuild_indexes(run: Run) -> None:
    """Every derived index from the task states alone (after decoding a stored run). The
    fold maintains the same indexes incrementally; tests hold the two equal."""
    run.reset_indexes()
    for task in sorted(run.tasks.values(), key=lambda t: t.order):
        run.by_order[task.order] = task.name
        run.pending[task.name] = _parents_pending(run, task)
        if not task.final:
            run.nonfinal += 1
        if task.status in ACTIVE and not task.is_parent:
            run.active += 1
            run.active_in[task.slot_group] = run.active_in.get(task.slot_group, 0) + 1
        if task.status == "running":
            _track_deadline(run, task)
        if task.status == "waiting_approval" and task.approved_by is None:
            run.waiting_approval += 1
        if task.status in UNSTARTED:
            run.unstarted += 1
        if task.status == "failed" and not task.spec.continue_on_error:
            run.blocking_failures += 1
        if task.is_parent and task.expanded:
            open_children = sum(1 for c in task.children if not run.tasks[c].final)
            run.open_children[task.name] = open_children
            if open_children == 0 and not task.final:
                run.closing.append(task.order)
    for task in sorted(run.tasks.values(), key=lambda t: t.order):
        classify(run, task)


# -- the fold -------------------------------------------------------------------------------


def _task_status(run: Run, event: TaskStatusChanged) -> None:
    task = run.tasks[event.task]
    old, new = task.status, event.status
    if old in ("notstarted", "waiting_approval"):
        unclassify(run, task)  # only tasks in these states sit in a bucket
    if not task.is_parent:
        if old in ACTIVE and new not in ACTIVE:
            run.add("active", -1)
            run.add_in(run.active_in, task.slot_group, -1)
        elif new in ACTIVE and old not in ACTIVE:
            run.add("active", 1)
            run.add_in(run.active_in, task.slot_group, 1)
    unapproved = task.approved_by is None
    if unapproved and (old == "waiting_approval") != (new == "waiting_approval"):
        run.add("waiting_approval", 1 if new == "waiting_approval" else -1)
    if (old in UNSTARTED) != (new in UNSTARTED):
        run.add("unstarted", 1 if new in UNSTARTED else -1)
    run.set(task, "status", new)
    if new == "lost" and old != "lost":
        if event.unconfirmed is True:
            run.set(task, "unconfirmed", task.unconfirmed + 1)
        else:
            run.set(task, "lost", task.lost + 1)
    # Only what changes is written: the fold runs for every event of every rebuild.
    for field, value in (
        ("attempt", event.attempt),
        ("error", event.error),
        ("exit_code", event.exit_code),
        ("next_attempt_at", event.next_attempt_at),
    ):
        if getattr(task, field) != value:
            run.set(task, field, value)
    # Like `exit_code`: each change shows the outputs of the attempt it reports, so a new
    # attempt's start clears the last one's.
    if event.outputs is msgspec.UNSET:
        if task.outputs:
            run.set(task, "outputs", {})
    elif task.outputs != event.outputs:
        run.set(task, "outputs", event.outputs)
    if (event.executor is not None or new in ("scheduled", "notstarted")) and (
        task.executor != event.executor
    ):
        run.set(task, "executor", event.executor)
    if new == "waiting_approval" and old != "waiting_approval":
        message = event.message or None
        if task.approval_message != message:
            run.set(task, "approval_message", message)
    if new == "running" and old != "running":
        resolved = event.resolved or None
        if task.resolved != resolved:
            run.set(task, "resolved", resolved)
        run.set(task, "started_at", event.at)
        if task.finished_at is not None:
            run.set(task, "finished_at", None)
        _track_deadline(run, task)
    elif new == "scheduled" and task.finished_at is not None:
        run.set(task, "finished_at", None)
    if new in FINAL and old not in FINAL:
        run.set(task, "finished_at", event.at)
        _became_final(run, task)
    elif new in ("notstarted", "waiting_approval"):
        classify(run, task)
    update_pause(run, event.at)


def _became_final(run: Run, task: Task) -> None:
    run.add("nonfinal", -1)
    if task.status == "failed" and not task.spec.continue_on_error:
        run.add("blocking_failures", 1)
    if task.is_parent:
        run.discard(run.closing, task.order)
    outcome = OUTCOME[task.status]
    for name in run.dependents.get(task.name, ()):
        remaining = run.pending[name] - 1
        run.set_item(run.pending, name, remaining)
        dependent = run.tasks[name]
        if remaining == 0:
            classify(run, dependent)
        elif dependent.status == "notstarted" and outcome not in dependent.accepts[task.name]:
            # This outcome alone rules the dependent out, whatever its other parents do:
            # skip it now (O(1) per edge; `classify` would look at every parent).
            run.insort(run.skip, dependent.order)
    if task.parent is not None:
        parent = run.tasks[task.parent]
        run.add_in(run.open_children, parent.name, -1)
        if run.open_children[parent.name] == 0 and not parent.final:
            run.insort(run.closing, parent.order)


def update_pause(run: Run, at: datetime) -> None:
    """Start or end a pause of the run's timeout: it is paused while a task waits for an
    approval not yet given and nothing is scheduled or running."""
    paused = run.waiting_approval > 0 and run.active == 0
    if paused and run.paused_since is None:
        run.set(run, "paused_since", at)
    elif not paused and run.paused_since is not None:
        run.set(run, "paused_s", run.paused_s + (at - run.paused_since).total_seconds())
        run.set(run, "paused_since", None)


def _expanded(run: Run, event: TaskExpanded) -> None:
    parent = run.tasks[event.task]
    unclassify(run, parent)
    add_children(run, parent, event)
    run.add("nonfinal", len(event.children))
    run.add("unstarted", len(event.children))
    run.set_item(run.open_children, parent.name, len(event.children))
    for name in parent.children:
        child = run.tasks[name]
        run.set_item(run.by_order, child.order, name)
        run.set_item(run.pending, name, _parents_pending(run, child))
        classify(run, child)
    if not event.children and not parent.final:
        run.insort(run.closing, parent.order)


def apply_event(run: Run | None, event: Event | UnknownEvent, *, version: int) -> Run:
    """Fold one event into `run` (None before the first event); returns the run."""
    if isinstance(event, RunCreated):
        run = _create(event)
    elif run is None:
        raise ValueError(f"a run's first event must be run_created, not {type(event).__name__}")
    elif isinstance(event, TaskStatusChanged):
        _task_status(run, event)
    elif isinstance(event, RunPhaseChanged):
        run.set(run, "phase", event.phase)
        if event.phase == "running" and run.started_at is None:
            run.set(run, "started_at", event.at)
        if event.phase in TERMINAL_PHASES and run.finished_at is None:
            run.set(run, "finished_at", event.at)
    elif isinstance(event, RunResultChanged):
        run.set(run, "result", event.result)
    elif isinstance(event, RunStopRequested):
        run.set(run, "stop_requested", True)
        run.set(run, "stop_reason", event.reason)
    elif isinstance(event, TaskExpanded):
        _expanded(run, event)
    elif isinstance(event, RunOutputDeleted):
        run.set(run, "output_deleted_at", event.at)
    elif isinstance(event, TaskApproved):
        task = run.tasks[event.task]
        if task.status == "waiting_approval" and task.approved_by is None:
            run.add("waiting_approval", -1)
        run.set(task, "approved_by", event.approver)
        run.set(task, "approved_at", event.at)
        run.set(task, "approval_comment", event.comment)
        classify(run, task)
        update_pause(run, event.at)
    # Unknown (newer) event types change nothing this version understands.
    run.set(run, "version", version)
    return run


class Recorded(Protocol):
    """An event as a log hands it back (`eventlog.records.RecordedEvent` is one): the fold
    needs no more of the log than this, so it stays free of storage."""

    @property
    def event(self) -> Event | UnknownEvent: ...

    @property
    def version(self) -> int: ...

    @property
    def position(self) -> int: ...


def apply(run: Run | None, recorded: Recorded) -> Run:
    """Fold one stored event, recording the stream version and log position it brings."""
    run = apply_event(run, recorded.event, version=recorded.version)
    run.position = recorded.position
    return run


def fold(events: Iterable[Recorded]) -> Run | None:
    run: Run | None = None
    for recorded in events:
        run = apply(run, recorded)
    return run
