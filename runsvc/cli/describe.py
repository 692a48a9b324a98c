"""What a person reads about a task besides its status, shared by `runs show` and `watch`:
the note (why it waits, failed or was skipped, and who approved it when) and the item of a
foreach child."""

from __future__ import annotations

import msgspec

from runsvc.cli.output import moment
from runsvc.client import NotFoundError
from runsvc.domain.model import FINAL, OUTCOME
from runsvc.domain.view import RunView, TaskView

# A long item (a path, a JSON string) would push the note off a terminal's line.
ITEM_WIDTH = 40


def task_named(run: RunView, name: str) -> TaskView:
    """The run's task `name`; not found (exit 4) with the names it has."""
    task = run.tasks.get(name)
    if task is None:
        message = f"run {run.id} has no task {name!r}; it has: {', '.join(run.tasks)}"
        raise NotFoundError(404, "not_found", message)
    return task


def item_of(task: TaskView) -> str:
    if task.item is None:
        return ""
    return task.item if len(task.item) <= ITEM_WIDTH else task.item[: ITEM_WIDTH - 1] + "…"


OUTPUT_WIDTH = 80


def output_summary(value: str, width: int = OUTPUT_WIDTH) -> str:
    """An output on one line: its first line, cut at `width`, with what was left out
    counted (`--format json` has them whole)."""
    first, *rest = value.split("\n")
    shown = first if len(first) <= width else first[: width - 1] + "…"
    more = f" (+{len(rest)} more line{'s' if len(rest) > 1 else ''})" if rest else ""
    return shown + more


def output_lines(task: TaskView) -> list[str]:
    """`name.key = value`, one line per output the task's attempt wrote."""
    if task.outputs is msgspec.UNSET:
        return []
    return [f"{task.name}.{key} = {output_summary(value)}" for key, value in task.outputs.items()]


def outputs_note(task: TaskView, width: int = 60) -> str:
    """The outputs in a table's note: `key=value, …`, each value's first line, cut."""
    if task.outputs is msgspec.UNSET or not task.outputs:
        return ""
    text = ", ".join(f"{k}={output_summary(v, 30)}" for k, v in task.outputs.items())
    return text if len(text) <= width else text[: width - 1] + "…"


def has_items(run: RunView) -> bool:
    return any(t.item is not None for t in run.tasks.values())


def skipped_by(run: RunView, task: TaskView) -> TaskView | None:
    """The parent whose outcome ruled the task out: the first dependency, in order, whose
    parent ended with an outcome it does not accept (as the scheduler picks it)."""
    for dependency in task.depends:
        parent = run.tasks.get(dependency.task)
        if parent is None or parent.status not in FINAL:
            continue
        if OUTCOME[parent.status] not in dependency.on:
            return parent
    return None


def first_cause(run: RunView, task: TaskView) -> TaskView | None:
    """Where a chain of skips started: the skipped task's parent, or, when that parent
    was itself skipped by one of its own, that one's, and so on up. None when the task
    was not skipped by a parent (its `when` did not hold)."""
    cause = skipped_by(run, task)
    seen = {task.name}
    while cause is not None and cause.status == "skipped" and cause.name not in seen:
        seen.add(cause.name)
        further = skipped_by(run, cause)
        if further is None:  # skipped by its own condition, or all of its items were
            break
        cause = further
    return cause


def _cause_text(cause: TaskView) -> str:
    if cause.status == "skipped" and cause.error:
        return f"{cause.name} skipped: {cause.error}"
    return f"{cause.name} {cause.status}"


def approval(task: TaskView) -> str:
    """Who approved the task, when, and what they wrote; empty when nobody has."""
    if task.approved_by is None:
        return ""
    when = f" at {moment(task.approved_at)}" if task.approved_at is not None else ""
    comment = f': "{task.approval_comment}"' if task.approval_comment else ""
    return f"approved by {task.approved_by}{when}{comment}"


def note(run: RunView, task: TaskView, *, approvals: bool = True) -> str:
    """Why the task is as it is: its error (for a skip, with the task that started the
    chain of skips when that is not the parent named), else why it waits, else (with
    `approvals`) who approved it."""
    if task.status == "skipped":
        why = task.error or ""
        cause = first_cause(run, task)
        if cause is not None and not why.startswith(f"{cause.name} "):
            why = f"{why} (because {_cause_text(cause)})" if why else _cause_text(cause)
        return why
    return task.error or task.reason or (approval(task) if approvals else "")
