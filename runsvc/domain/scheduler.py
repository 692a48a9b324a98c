"""The scheduler: `decide(run, now)` returns the events that move a run forward.

Pure: no I/O, no clock (`now` is a parameter), no randomness. It never changes the run it
is given: it applies its own decisions under the run's undo journal (see
runsvc.domain.model) so that one call reaches a fixed point (a skip propagates through
the whole DAG at once), then everything is rolled back and only the events are returned.
Tasks are visited in a fixed order (topological, then by name; foreach children by index)
and the derived indexes make each call cost what changed, not the size of the run.

The rules, and the choices made where the run model leaves room:
- Only a `running` run schedules; admission (queued -> running) is a command, because the
  concurrency key is a rule across runs.
- A task runs when every parent is final and each parent's outcome is in that
  dependency's `on`. It is skipped (with the reason in its `error`) as soon as one parent
  is final with an outcome that dependency does not accept, even while other parents
  still run or wait for an approval: nothing can make it run any more, and what depends
  on it being skipped should not wait either. A `when` that does not hold skips the task
  once all its parents are final. `stopped` and `cancelled` parents count as "failure".
- A task ready to run becomes `scheduled` (attempt n) when the run's `max_parallel` and,
  for a foreach child, its parent's `max_parallel` allow; an executor then claims it.
- A failed attempt with attempts left is recorded by one event: the task goes back to
  `scheduled` with attempt n+1, `next_attempt_at` = now + min(backoff * factor^(n-1),
  max_backoff) and the failure in `error`. Otherwise it is `failed`, final. Only attempts
  that failed count here (`attempt - lost`); lost ones have their own budget.
- A lost attempt (its executor vanished) with `on_lost: retry` is tried again, at once
  and with no backoff, while the task has lost at most `max_lost` attempts (default 3);
  the next loss fails it. `on_lost: fail` fails it at the first loss.
- A running attempt past its task `timeout` fails ("timed out after …") and the retry
  policy applies. A run past its `timeout` (time waiting for approval excluded) is stopped
  with reason `timeout` and its result is `failed`.
- Foreach: when the parent is ready (and approved, if gated) it expands into children
  `name[0]`, `name[1]`, … and is `running` until they are all final; then it takes their
  aggregate: failed if any failed, else stopped / cancelled if any was, else skipped if all
  were, else success. In `sequence`, child i+1 runs after child i succeeded; after a
  failure the remaining children are skipped.
- Stop: no new task starts; tasks not yet running are `cancelled`; running ones are told to
  stop (through the executor's heartbeat) and end `stopped` unless they report success.
- The result is set once and never changes. It becomes `failed` as soon as a task failed
  for good without `continue_on_error` (as Agola does), right after that failure; the
  run goes on (other tasks run, a stop still cancels and stops) until every task is
  final. Nothing that can happen later would give another result: `_finish` gives
  `failed` whenever a task failed that way, whatever else happened.
- The run finishes when every task is final. If no result was set earlier: `failed` if
  the run timed out, else `stopped` if a stop was requested, else `success`. The result is
  emitted before the phase `finished`.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from runsvc.domain.config import Retry, parse_duration
from runsvc.domain.events import (
    Event,
    ForeachChild,
    Result,
    RunPhaseChanged,
    RunResultChanged,
    RunStopRequested,
    TaskExpanded,
    TaskStatus,
    TaskStatusChanged,
)
from runsvc.domain.expressions import Attempt
from runsvc.domain.fold import apply_event, describe_when, unmet_dependency, when_failure
from runsvc.domain.model import FINAL, TOP, Run, Task
from runsvc.domain.templates import approval_message, foreach_items, judge_attempt
from runsvc.domain.timing import next_wakeup, run_deadline

_NO_LIMIT = 1 << 62


def decide(run: Run, now: datetime) -> list[Event]:
    """Events that bring `run` to its fixed point at `now`; `run` is left unchanged."""
    events: list[Event] = []
    with run.journal():
        plan(run, now, events)
    return events


def emit(run: Run, events: list[Event], event: Event) -> None:
    """Record a decision and apply it (under the caller's journal)."""
    events.append(event)
    apply_event(run, event, version=run.version + 1)


def plan(run: Run, now: datetime, events: list[Event]) -> None:
    """Decide until nothing more follows. The run must be journaled by the caller."""
    if run.phase != "running":
        return
    while True:
        before = len(events)
        _expire_attempts(run, now, events)
        _fail_early(run, now, events)
        _expire_run(run, now, events)
        if run.stop_requested:
            _cancel_waiting(run, now, events)
        else:
            _skip(run, now, events)
            _gate(run, now, events)
            _expand(run, now, events)
            _schedule(run, now, events)
        _close_parents(run, now, events)
        if run.nonfinal == 0:
            _finish(run, now, events)
            return
        if len(events) == before:
            return


def retry_policy(run: Run, task: Task) -> Retry:
    return task.spec.retry or run.config.retry or Retry()


def backoff(policy: Retry, attempt: int) -> timedelta:
    base = parse_duration(policy.backoff).total_seconds()
    cap = parse_duration(policy.max_backoff).total_seconds()
    try:
        delay = base * policy.factor ** (attempt - 1)
    except OverflowError:
        delay = cap
    return timedelta(seconds=min(delay, cap))


def attempt_outcome(
    run: Run,
    task: Task,
    now: datetime,
    *,
    succeeded: bool,
    exit_code: int | None,
    error: str | None,
    lost: bool = False,
    unconfirmed: bool = False,
    outputs: dict[str, str] | None = None,
) -> TaskStatusChanged:
    """What an ended attempt makes of the task: success, stopped (the run is stopping),
    another attempt (the retry policy; for a lost attempt, `on_lost` and `max_lost`), or
    failed. For a lost attempt, its `lost` event must be folded already (`task.lost`
    counts it). Whatever it makes of it, the change carries the attempt's `outputs`."""
    name, attempt, executor = task.name, task.attempt, task.executor
    written = outputs or msgspec.UNSET
    judged = Attempt(exit_code=exit_code, outputs=outputs or {})
    if succeeded and task.spec.fail_if is not None and not run.stop_requested:
        verdict = judge_attempt(run, task, "fail_if", judged)
        if isinstance(verdict, str):
            return _failed(task, now, exit_code, verdict, written)
        if verdict:
            succeeded = False
            error = f"fail_if {task.spec.fail_if.strip()} held"
    if succeeded:
        return TaskStatusChanged(
            task=name,
            status="success",
            attempt=attempt,
            at=now,
            exit_code=exit_code,
            executor=executor,
            outputs=written,
        )
    if run.stop_requested:
        return TaskStatusChanged(
            task=name,
            status="stopped",
            attempt=attempt,
            at=now,
            exit_code=exit_code,
            executor=executor,
            error=error or "stopped",
            outputs=written,
        )
    cause = error or (f"exit code {exit_code}" if exit_code is not None else "failed")
    if lost:
        return _after_loss(task, now, cause, unconfirmed=unconfirmed)
    policy = retry_policy(run, task)
    # Lost attempts are not failures of the task: they do not use its failure budget.
    failures = task.attempt - task.lost - task.unconfirmed
    if failures < policy.max_attempts and task.spec.retry_if is not None:
        verdict = judge_attempt(run, task, "retry_if", judged)
        if isinstance(verdict, str):
            return _failed(task, now, exit_code, f"{cause}; {verdict}", written)
        if not verdict:
            cause = f"{cause} (retry_if {task.spec.retry_if.strip()} does not hold)"
            return _failed(task, now, exit_code, cause, written)
    if failures < policy.max_attempts:
        delay = backoff(policy, task.attempt)
        return TaskStatusChanged(
            task=name,
            status="scheduled",
            attempt=attempt + 1,
            at=now,
            exit_code=exit_code,
            next_attempt_at=now + delay if delay > timedelta(0) else None,
            error=f"attempt {attempt} failed: {cause}",
            outputs=written,
        )
    return _failed(task, now, exit_code, cause, written)


def _failed(
    task: Task,
    now: datetime,
    exit_code: int | None,
    error: str,
    outputs: dict[str, str] | msgspec.UnsetType,
) -> TaskStatusChanged:
    return TaskStatusChanged(
        task=task.name,
        status="failed",
        attempt=task.attempt,
        at=now,
        exit_code=exit_code,
        executor=task.executor,
        error=error,
        outputs=outputs,
    )


def _after_loss(
    task: Task, now: datetime, cause: str, *, unconfirmed: bool = False
) -> TaskStatusChanged:
    assert task.status == "lost", "fold the attempt's `lost` event first"
    name, attempt = task.name, task.attempt
    # A never-confirmed attempt never ran as far as anyone knows: it goes back whatever
    # `on_lost` says. Otherwise no backoff either: the loss was the executor's (it
    # crashed, stalled or handed the task back), not something the task will do again a
    # moment later, and another executor can take it now. `max_lost` bounds how often that
    # can happen, so a task that kills its executors cannot loop. The retry policy's
    # backoff is for failures.
    if unconfirmed or (task.spec.on_lost == "retry" and task.lost <= task.spec.max_lost):
        how = "never confirmed by its executor" if unconfirmed else "lost"
        return TaskStatusChanged(
            task=name,
            status="scheduled",
            attempt=attempt + 1,
            at=now,
            error=f"attempt {attempt} {how}: {cause}",
        )
    if task.spec.on_lost == "retry":
        cause = f"{cause} (lost {task.lost} times; max_lost is {task.spec.max_lost})"
    return TaskStatusChanged(
        task=name, status="failed", attempt=attempt, at=now, executor=task.executor, error=cause
    )


def _fail_early(run: Run, now: datetime, events: list[Event]) -> None:
    """The result is `failed` from the first task that failed for good without
    continue_on_error: nothing later can change that (see `_finish`), so say it now.
    `blocking_failures` only grows, hence this fires once and the result never changes."""
    if run.result == "unknown" and run.blocking_failures > 0:
        emit(run, events, RunResultChanged(result="failed", at=now))


def _expire_attempts(run: Run, now: datetime, events: list[Event]) -> None:
    while run.deadlines and run.deadlines[0][0] <= now:
        _, order, attempt = run.pop_deadline()
        task = run.tasks[run.by_order[order]]
        if task.status != "running" or task.attempt != attempt:
            continue  # the attempt ended before its deadline
        timeout = task.timeout()
        assert timeout is not None
        emit(
            run,
            events,
            attempt_outcome(
                run,
                task,
                now,
                succeeded=False,
                exit_code=None,
                error=f"timed out after {_human(timeout)}",
            ),
        )


def _expire_run(run: Run, now: datetime, events: list[Event]) -> None:
    deadline = run_deadline(run)
    if not run.stop_requested and deadline is not None and now >= deadline:
        emit(run, events, RunStopRequested(at=now, reason="timeout"))


def _cancel_waiting(run: Run, now: datetime, events: list[Event]) -> None:
    if run.unstarted == 0:
        return
    for task in sorted(run.tasks.values(), key=lambda t: t.order):
        if task.status in ("notstarted", "waiting_approval", "scheduled"):
            emit(
                run,
                events,
                TaskStatusChanged(
                    task=task.name,
                    status="cancelled",
                    attempt=task.attempt,
                    at=now,
                    error="the run was stopped before this task ran",
                ),
            )


def _skip(run: Run, now: datetime, events: list[Event]) -> None:
    while run.skip:
        task = run.tasks[run.by_order[run.skip[0]]]
        reason = unmet_dependency(run, task)
        status: TaskStatus = "skipped"
        if reason is None:
            failure = when_failure(run, task)
            if failure is not None:
                status, reason = "failed", failure
            else:
                reason = describe_when(task)
        emit(
            run,
            events,
            TaskStatusChanged(
                task=task.name, status=status, attempt=task.attempt, at=now, error=reason
            ),
        )


def _gate(run: Run, now: datetime, events: list[Event]) -> None:
    while run.gate:
        task = run.tasks[run.by_order[run.gate[0]]]
        message = approval_message(run, task)
        change = TaskStatusChanged(
            task=task.name,
            status="waiting_approval",
            attempt=0,
            at=now,
            message=message if message is not None else msgspec.UNSET,
        )
        emit(run, events, change)


def item_text(item: object) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    return str(item)


def _expand(run: Run, now: datetime, events: list[Event]) -> None:
    while run.expand:
        parent = run.tasks[run.by_order[run.expand[0]]]
        items = parent.spec.foreach or []
        if isinstance(items, str):
            expansion = foreach_items(run, parent, run.max_foreach_items)
            if isinstance(expansion, str):
                emit(
                    run,
                    events,
                    TaskStatusChanged(
                        task=parent.name, status="failed", attempt=0, at=now, error=expansion
                    ),
                )
                continue
            children = [
                ForeachChild(name=f"{parent.name}[{index}]", index=index, item=text, json=json)
                for index, (text, json) in enumerate(expansion)
            ]
        else:
            children = [
                ForeachChild(name=f"{parent.name}[{index}]", index=index, item=item_text(item))
                for index, item in enumerate(items)
            ]
        emit(run, events, TaskExpanded(task=parent.name, children=children, at=now))
        emit(
            run,
            events,
            TaskStatusChanged(task=parent.name, status="running", attempt=1, at=now),
        )


def _group_limit(run: Run, group: str) -> int:
    if group == TOP:
        return _NO_LIMIT
    limit = run.tasks[group].spec.max_parallel
    return _NO_LIMIT if limit is None else limit


def _schedule(run: Run, now: datetime, events: list[Event]) -> None:
    run_limit = run.config.max_parallel or _NO_LIMIT
    free = run_limit - run.active
    if free <= 0:
        return
    groups = sorted((queue[0], group) for group, queue in run.slots.items() if queue)
    for _, group in groups:
        room = min(free, _group_limit(run, group) - run.active_in.get(group, 0))
        if room <= 0:
            continue
        for key in run.slots[group][:room]:
            task = run.tasks[run.by_order[key]]
            emit(
                run,
                events,
                TaskStatusChanged(
                    task=task.name, status="scheduled", attempt=task.attempt + 1, at=now
                ),
            )
            free -= 1
        if free <= 0:
            return


def _close_parents(run: Run, now: datetime, events: list[Event]) -> None:
    while run.closing:
        parent = run.tasks[run.by_order[run.closing[0]]]
        statuses = [run.tasks[c].status for c in parent.children]
        failed = statuses.count("failed")
        status: TaskStatus
        if failed:
            status, error = "failed", f"{failed} of {len(statuses)} items failed"
        elif "stopped" in statuses:
            status, error = "stopped", None
        elif "cancelled" in statuses:
            status, error = "cancelled", None
        elif statuses and all(s == "skipped" for s in statuses):
            status, error = "skipped", "every item was skipped"
        else:
            status, error = "success", None
        emit(
            run,
            events,
            TaskStatusChanged(
                task=parent.name, status=status, attempt=parent.attempt, at=now, error=error
            ),
        )


def _finish(run: Run, now: datetime, events: list[Event]) -> None:
    result: Result
    if run.blocking_failures > 0 or run.stop_reason == "timeout":
        result = "failed"
    elif run.stop_requested:
        result = "stopped"
    else:
        result = "success"
    # A result set earlier (`_fail_early`) is the same one; it is not emitted twice.
    assert run.result in ("unknown", result), (run.result, result)
    if run.result != result:
        emit(run, events, RunResultChanged(result=result, at=now))
    emit(run, events, RunPhaseChanged(phase="finished", at=now))


def _human(duration: timedelta) -> str:
    seconds = duration.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:g}s"
    if seconds < 7200:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


__all__ = ["FINAL", "decide", "next_wakeup", "plan", "run_deadline"]
