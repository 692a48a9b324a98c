"""When time alone changes a run: the deadlines of running attempts and of the run."""

from __future__ import annotations

from datetime import datetime, timedelta

from runsvc.domain.config import parse_duration
from runsvc.domain.model import Run


def run_deadline(run: Run) -> datetime | None:
    """When the run times out, or None (no timeout, not started, or paused while a task
    waits for approval: that time does not count)."""
    if not run.config.timeout or run.started_at is None or run.paused_since is not None:
        return None
    timeout = parse_duration(run.config.timeout)
    return run.started_at + timeout + timedelta(seconds=run.paused_s)


def next_wakeup(run: Run) -> datetime | None:
    """The earliest time at which the scheduler would act without a new event: a running
    attempt's deadline or the run's. None when nothing is due."""
    if run.phase != "running":
        return None
    due = [
        deadline
        for deadline, order, attempt in run.deadlines
        if (task := run.tasks[run.by_order[order]]).status == "running" and task.attempt == attempt
    ]
    if not run.stop_requested and (deadline := run_deadline(run)) is not None:
        due.append(deadline)
    return min(due, default=None)
