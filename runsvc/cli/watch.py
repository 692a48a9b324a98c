"""`runsvc watch ID` (and `submit --wait`): follow a run until it ends.

On a terminal the screen is redrawn as events arrive: the run's phase and progress, then
its tasks by wave (the DAG's levels) with status, attempt, duration and what each waits
for. Elsewhere one line is printed per change, and with `--format json` the run's events
as JSON lines. The state shown is the run folded at the newest event received, so it is
exact, not the eventually consistent index. The exit code is the run's outcome.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from projections.run_view import RunView, TaskView
from runsvc.cli.connection import EXIT_OK, EXIT_RUN_FAILED, add_connection_options, remote
from runsvc.cli.output import duration, emit_json, moment, table
from runsvc.client import RunsClient, follow_events

ENDED = frozenset({"finished", "cancelled", "setuperror"})
FINAL = frozenset({"success", "failed", "skipped", "stopped", "cancelled"})
CLEAR = "\x1b[H\x1b[2J"


def register(commands: Any) -> None:
    watch = commands.add_parser(
        "watch",
        help="follow a run live until it ends (exit 0 success, 1 failed or stopped)",
        description="Follow a run live: each task with its status, attempt and duration, "
        "the DAG's waves and overall progress. Exits with the run's outcome.",
        epilog="example:\n  runsvc watch 0190f3c2...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("run_id", metavar="ID")
    add_connection_options(watch)
    watch.set_defaults(handler=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        return outcome_code(await follow_run(runs, args.run_id, json_lines=args.format == "json"))

    return remote(args, work)


def outcome_code(run: RunView) -> int:
    return EXIT_OK if run.phase == "finished" and run.result == "success" else EXIT_RUN_FAILED


async def follow_run(runs: RunsClient, run_id: str, *, json_lines: bool = False) -> RunView:
    """Show the run as it advances; return it once it has ended."""
    run = await runs.get(run_id)
    screen = _Screen(sys.stdout.isatty() and not json_lines)
    if not json_lines:
        screen.show(run)
    if run.phase in ENDED and not json_lines:
        return run
    # The run as read reflects the log up to its `position`: follow from there on.
    after = 0 if json_lines else run.position
    async for event in follow_events(runs.api, after=after, run=run_id):
        if json_lines:
            emit_json(event)
        run = await runs.state(run_id, at_version=event.version)
        if not json_lines:
            screen.show(run)
        if run.phase in ENDED:
            break
    return run


class _Screen:
    """Redraws the whole view on a terminal; prints changes line by line elsewhere."""

    def __init__(self, redraw: bool) -> None:
        self.redraw = redraw
        self.seen: dict[str, tuple[str, int]] = {}
        self.phase = ""

    def show(self, run: RunView) -> None:
        if self.redraw:
            sys.stdout.write(CLEAR + render(run) + "\n")
            sys.stdout.flush()
            return
        now = datetime.now(UTC).strftime("%H:%M:%S")
        if run.phase != self.phase:
            self.phase = run.phase
            print(f"{now} run {run.id} {run.phase} ({run.result})", flush=True)
        for task in run.tasks.values():
            state = (task.status, task.attempt)
            if self.seen.get(task.name) != state:
                self.seen[task.name] = state
                note = f" - {task.error or task.reason}" if task.error or task.reason else ""
                print(f"{now} {task.name} {task.status} (attempt {task.attempt}){note}", flush=True)


def waves(run: RunView) -> dict[str, int]:
    """Each task's level in the DAG: 1 + the deepest parent's; foreach children share
    their parent's."""
    level: dict[str, int] = {}

    def of(name: str, trail: frozenset[str] = frozenset()) -> int:
        if name in level:
            return level[name]
        task = run.tasks[name]
        if task.parent is not None and task.parent in run.tasks:
            found = of(task.parent, trail | {name})
        else:
            parents = [d.task for d in task.depends if d.task in run.tasks and d.task not in trail]
            found = 1 + max((of(p, trail | {name}) for p in parents), default=0)
        level[name] = found
        return found

    for name in run.tasks:
        of(name)
    return level


def render(run: RunView) -> str:
    """The live view of a run as text."""
    leaves = [t for t in run.tasks.values() if not t.children]
    done = sum(1 for t in leaves if t.status in FINAL)
    width = 30
    filled = width * done // len(leaves) if leaves else width
    header = [
        f"run {run.id}  {run.group} {run.name} #{run.counter}",
        f"{run.phase} / {run.result}   [{'#' * filled}{'.' * (width - filled)}] "
        f"{done}/{len(leaves)} tasks   {duration(run.started_at, run.finished_at)}",
    ]
    level = waves(run)
    ordered: list[TaskView] = sorted(run.tasks.values(), key=lambda t: (level[t.name], t.name))
    rows = [
        (
            level[t.name],
            t.name,
            t.status,
            t.attempt,
            duration(t.started_at, t.finished_at),
            t.error or t.reason or "",
        )
        for t in ordered
    ]
    footer = f"updated {moment(datetime.now(UTC))} UTC"
    return "\n".join(
        [
            *header,
            "",
            table(["WAVE", "TASK", "STATUS", "ATTEMPT", "TOOK", "NOTE"], rows),
            "",
            footer,
        ]
    )
