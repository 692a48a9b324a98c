"""How `runsvc watch` shows a run: on a terminal, a view redrawn in place (the run's phase
and progress, its waves, then every task with status, attempt and duration); elsewhere,
one line per change, so a log file or CI output reads as a story.

The terminal view is redrawn where it was drawn (cursor moved up over the previous frame)
instead of clearing the screen, so what was printed before it, such as the run id from
`submit --wait`, stays in view and in the scrollback.
"""

from __future__ import annotations

import shutil
import sys
from collections import Counter
from datetime import UTC, datetime
from typing import TextIO

from runsvc.cli.describe import (
    approval,
    has_items,
    item_of,
    note,
    output_lines,
    outputs_note,
)
from runsvc.cli.output import duration, table
from runsvc.domain.fold import TERMINAL_PHASES
from runsvc.domain.model import FINAL
from runsvc.domain.view import RunView, TaskView

HIDE_CURSOR, SHOW_CURSOR = "\x1b[?25l", "\x1b[?25h"
CLEAR_LINE, CLEAR_BELOW = "\x1b[K", "\x1b[J"
BAR_WIDTH = 30
# Statuses worth a line of the screen before others when the tasks do not all fit.
_SETTLED = frozenset({"success", "skipped"})


def waves(run: RunView) -> dict[str, int]:
    """Each task's wave, counted from 0 as `runsvc simulate` does: 1 + its deepest
    parent's; foreach items share the wave of the task they were expanded from."""
    level: dict[str, int] = {}

    def of(name: str, trail: frozenset[str]) -> int:
        if name in level:
            return level[name]
        task = run.tasks[name]
        if task.parent is not None and task.parent in run.tasks:
            found = of(task.parent, trail | {name})
        else:
            # `trail` guards against a cycle, which validation refuses anyway.
            parents = [d.task for d in task.depends if d.task in run.tasks and d.task not in trail]
            found = 1 + max((of(p, trail | {name}) for p in parents), default=-1)
        level[name] = found
        return found

    for name in run.tasks:
        of(name, frozenset())
    return level


def progress(run: RunView) -> tuple[int, int]:
    """(ended, all) over the tasks that run: a foreach task counts through its items."""
    leaves = [t for t in run.tasks.values() if not t.children]
    return sum(1 for t in leaves if t.status in FINAL), len(leaves)


def _bar(done: int, total: int) -> str:
    filled = BAR_WIDTH * done // total if total else BAR_WIDTH
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {done}/{total} tasks"


def _wave_summary(run: RunView, level: dict[str, int]) -> str:
    ended: Counter[int] = Counter()
    count: Counter[int] = Counter()
    for task in run.tasks.values():
        if not task.children:
            count[level[task.name]] += 1
            ended[level[task.name]] += task.status in FINAL
    return "waves  " + "   ".join(f"{w}: {ended[w]}/{count[w]}" for w in sorted(count))


def _row(run: RunView, task: TaskView, wave: int, now: datetime, items: bool) -> tuple[object, ...]:
    return (
        wave,
        task.name,
        *([item_of(task)] if items else []),
        task.status,
        task.attempt,
        duration(task.started_at, task.finished_at, now),
        # What a task decided for those after it, where nothing else needs saying.
        note(run, task) or outputs_note(task),
    )


def render(
    run: RunView,
    *,
    height: int | None = None,
    now: datetime | None = None,
    notice: str | None = None,
) -> list[str]:
    """The live view as lines; with `height`, at most that many (tasks that ended well
    give way first to those that run, wait or failed). A `notice` (the stream was lost)
    takes the blank line above the tasks."""
    now = now or datetime.now(UTC)
    level = waves(run)
    done, total = progress(run)
    head = [
        f"run {run.id}  {run.group} {run.name} #{run.counter}",
        f"{run.phase} / {run.result}   {_bar(done, total)}   "
        f"{duration(run.started_at, run.finished_at, now)}",
        _wave_summary(run, level),
        notice or "",
    ]
    # Within a wave, the config's order (the view lists tasks in it).
    order = {name: i for i, name in enumerate(run.tasks)}
    tasks = sorted(run.tasks.values(), key=lambda t: (level[t.name], order[t.name]))
    waiting = [t.name for t in tasks if t.status == "waiting_approval"]
    foot = [f"approve with: runsvc approve {run.id} {name}" for name in waiting[:2]]
    if height is not None:
        room = max(height - len(head) - len(foot) - 2, 1)  # 2: the table's header, "more"
        if len(tasks) > room:
            shown = [t for t in tasks if t.status not in _SETTLED][:room]
            shown += [t for t in tasks if t.status in _SETTLED][: room - len(shown)]
            foot = [f"... and {len(tasks) - len(shown)} more tasks", *foot]
            tasks = sorted(shown, key=lambda t: (level[t.name], order[t.name]))
    items = has_items(run)
    body = table(
        ["WAVE", "TASK", *(["ITEM"] if items else []), "STATUS", "ATTEMPT", "TOOK", "NOTE"],
        [_row(run, t, level[t.name], now, items) for t in tasks],
    ).splitlines()
    return [*head, *body, *foot]


class TerminalScreen:
    """The view redrawn in place on a terminal, fitted to its size."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.drawn = 0  # lines of the previous frame, to move back over
        self.notice: str | None = None

    def show(self, run: RunView) -> None:
        columns, lines = shutil.get_terminal_size()
        view = render(run, height=lines - 1, notice=self.notice)
        # One column spare: a line that fills the last column makes some terminals wrap.
        frame = [line[: max(columns - 1, 10)] for line in view]
        up = f"\x1b[{self.drawn}F" if self.drawn else HIDE_CURSOR
        self.out.write(up + "".join(line + CLEAR_LINE + "\n" for line in frame) + CLEAR_BELOW)
        self.out.flush()
        self.drawn = len(frame)

    def close(self) -> None:
        self.out.write(SHOW_CURSOR)
        self.out.flush()


class LineScreen:
    """One line per change of the run's phase or of a task's status or attempt."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: dict[str, tuple[str, int]] = {}
        self.approved: set[str] = set()
        self.phase = ""

    def show(self, run: RunView) -> None:
        now = datetime.now(UTC).strftime("%H:%M:%S")
        lines = []
        for task in run.tasks.values():
            if task.approved_by is not None and task.name not in self.approved:
                self.approved.add(task.name)
                lines.append(f"{now} {task.name} {approval(task)}")
            state = (task.status, task.attempt)
            if self.seen.get(task.name) != state:
                self.seen[task.name] = state
                # The approval has a line of its own (above); others are news once.
                why = note(run, task, approvals=False)
                item = f", item {item_of(task)}" if task.item is not None else ""
                lines.append(
                    f"{now} {task.name} {task.status} (attempt {task.attempt}{item})"
                    + (f" - {why}" if why else "")
                )
                lines.extend(f"  {line}" for line in output_lines(task))
        if run.phase != self.phase:
            self.phase = run.phase
            line = f"{now} run {run.id} {run.phase} ({run.result})"
            # The run's start reads best above its tasks, its end below them.
            lines.insert(len(lines) if run.phase in TERMINAL_PHASES else 0, line)
        if lines:
            self.out.write("\n".join(lines) + "\n")
            self.out.flush()

    def close(self) -> None:
        pass


def screen_for(out: TextIO = sys.stdout) -> TerminalScreen | LineScreen:
    return TerminalScreen(out) if out.isatty() else LineScreen(out)
