"""`runsvc watch ID` (and `submit --wait`): follow a run until it ends.

The run is read once from its history and then kept current by folding each of its events
as the websocket delivers them, with the same fold the server uses: what is shown is the
run exactly as of the newest event received, never the eventually consistent index, and
following costs one request however long the run. On a terminal the view is redrawn (see
`screen`); elsewhere one line is printed per change; with `--format json` the run's events
are printed as JSON lines. The exit code is the run's outcome.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from runsvc.cli.connection import (
    EXIT_OK,
    EXIT_RUN_FAILED,
    add_connection_options,
    reconnecting,
    remote,
)
from runsvc.cli.output import emit_json
from runsvc.cli.screen import TerminalScreen, screen_for
from runsvc.client import ApiError, RunsClient, follow_events
from runsvc.domain.events import KNOWN_TYPES, Event, RunEvent, UnknownEvent
from runsvc.domain.fold import TERMINAL_PHASES, apply_event
from runsvc.domain.model import Run
from runsvc.domain.view import RunView, TaskView, run_view
from runsvc.wire.api import EventOut

# How often a terminal view is redrawn while no event comes, so durations keep counting.
TICK_S = 1.0
# The end of a failed task's output under the summary, for this many failed tasks.
TAIL_LINES = 20
SHOWN_FAILURES = 3
# A line longer than this is cut: the summary is for reading, `runsvc logs` has it all.
LINE_BYTES = 500


def register(commands: Any) -> None:
    watch = commands.add_parser(
        "watch",
        help="follow a run live until it ends (exit 0 success, 1 failed or stopped)",
        description="Follow a run live: each task with its status, attempt and duration, "
        "the DAG's waves and overall progress, redrawn as events arrive on a terminal, one "
        "line per change elsewhere, the run's events as JSON lines with --format json. "
        "Exits 0 when the run succeeds, 1 when it failed, was stopped or cancelled.",
        epilog="example:\n  runsvc watch 01M88X6GBAY22NRY9DMZC54X7B",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    watch.add_argument("run_id", metavar="ID")
    add_connection_options(watch)
    watch.set_defaults(handler=run_watch)


def run_watch(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        json_lines = args.format == "json"
        final = await follow_run(runs, args.run_id, json_lines=json_lines)
        if not json_lines:
            print(await closing_note(runs, final))
        return outcome_code(final)

    return remote(args, work)


def outcome_code(run: RunView) -> int:
    return EXIT_OK if run.phase == "finished" and run.result == "success" else EXIT_RUN_FAILED


async def closing_note(runs: RunsClient, run: RunView) -> str:
    """What a person reads once the run has ended: for the first failed tasks, the end
    of their output (usually the error itself), and where to look next."""
    lines = [f"run {run.id} {run.phase}: {run.result}"]
    # A foreach task's failure is its items': those are listed, each with its output.
    failed = [t for t in run.tasks.values() if t.status == "failed" and not t.children]
    for task in failed[:SHOWN_FAILURES]:
        why = f": {task.error}" if task.error else ""
        lines.append(f"  {task.name} failed{why}")
        lines += [f"    {line}" for line in await _tail_of(runs, task)]
        lines.append(f"  all of its output: runsvc logs {run.id} {task.name}")
    if len(failed) > SHOWN_FAILURES:
        lines.append(f"  and {len(failed) - SHOWN_FAILURES} more failed tasks")
    lines.append(f"  every task: runsvc runs show {run.id}   events: runsvc history {run.id}")
    return "\n".join(lines)


async def _tail_of(runs: RunsClient, task: TaskView) -> list[str]:
    """The last TAIL_LINES lines of the task's latest attempt, under a line saying so."""
    if task.attempt == 0:
        return ["(it never ran: no output)"]
    kept: deque[bytes] = deque(maxlen=TAIL_LINES)
    partial = b""
    more = False
    try:
        # The whole log is read to find its end (the API serves no ranges); only the
        # last lines are kept.
        async for chunk in runs.task_logs(task.id):
            *whole, partial = (partial + chunk).split(b"\n")
            partial = partial[-LINE_BYTES:]
            more = more or len(kept) + len(whole) > TAIL_LINES
            kept.extend(whole)
    except ApiError as exc:  # the summary still ends the run's view; the output is extra
        return [f"(its output could not be read: {exc.message})"]
    if partial:
        more = more or len(kept) == TAIL_LINES
        kept.append(partial)
    if not kept:
        return ["(no output)"]
    head = f"the last {TAIL_LINES} lines of its output:" if more else "its output:"
    return [head, *(line[:LINE_BYTES].decode(errors="replace") for line in kept)]


class LiveRun:
    """A run folded from its events, one at a time, as the server folds it.

    Should an event not fold here (a server newer than this client, say), the server's
    own fold is asked instead, at each event's version, from then on."""

    def __init__(self, runs: RunsClient, run_id: str) -> None:
        self.runs = runs
        self.run_id = run_id
        self.run: Run | None = None
        self.served: RunView | None = None  # set once folding here failed

    async def load(self) -> list[EventOut]:
        """Fold the run's history; return it."""
        history = await self.runs.history(self.run_id)
        for event in history:
            await self.apply(event)
        return history

    async def apply(self, event: EventOut) -> None:
        if self.served is None:
            try:
                self._fold(event)
                return
            except (msgspec.ValidationError, KeyError, ValueError):
                pass
        self.served = await self.runs.state(self.run_id, at_version=event.version)

    def _fold(self, event: EventOut) -> None:
        decoded: Event | UnknownEvent
        if event.type in KNOWN_TYPES:
            decoded = msgspec.convert(event.data, RunEvent)
        else:  # a newer server's event type: the fold leaves the run as it was
            decoded = UnknownEvent(type=event.type, raw=b"")
        self.run = apply_event(self.run, decoded, version=event.version)
        self.run.position = event.position

    def view(self) -> RunView:
        if self.served is not None:
            return self.served
        assert self.run is not None, "load() first"
        return run_view(self.run)


async def follow_run(runs: RunsClient, run_id: str, *, json_lines: bool = False) -> RunView:
    """Show the run as it advances; return it once it has ended."""
    live = LiveRun(runs, run_id)
    history = await live.load()
    show: Callable[[RunView], None]
    if json_lines:
        for event in history:
            emit_json(event)
        screen = None
        show = lambda _run: None  # noqa: E731 - the events are the output
    else:
        screen = screen_for(sys.stdout)
        show = screen.show
    try:
        view = live.view()
        show(view)
        if view.phase in TERMINAL_PHASES:
            return view
        events: asyncio.Queue[EventOut | ApiError | StreamState] = asyncio.Queue()
        redraws = isinstance(screen, TerminalScreen)
        lost = False

        def notice(state: StreamState) -> None:
            nonlocal lost
            if isinstance(screen, TerminalScreen):
                # In the view, where a person looks, rather than as a line it would draw
                # over: without it the clock ticks on as if all were well.
                screen.notice = state.text()
            elif state.error is not None:
                reconnecting(state.error, state.failures, state.pause)
            elif lost:
                print("reconnected; following the run again", file=sys.stderr)
            lost = state.error is not None

        reader = asyncio.create_task(_read(runs, run_id, history[-1].position, events))
        try:
            return await _advance(live, events, show, notice, json_lines, ticking=redraws)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
    finally:
        if screen is not None:
            screen.close()


@dataclass(frozen=True)
class StreamState:
    """The run's event stream was lost (`error`, and the follower retries after `pause`)
    or is connected (`error` None)."""

    error: ApiError | None = None
    failures: int = 0
    pause: float = 0.0

    def text(self) -> str | None:
        if self.error is None:
            return None
        lost = f"{self.error.message}; try {self.failures}"
        return f"reconnecting… the run's event stream was lost ({lost})"


async def _read(
    runs: RunsClient,
    run_id: str,
    after: int,
    into: asyncio.Queue[EventOut | ApiError | StreamState],
) -> None:
    def lost(error: ApiError, failures: int, pause: float) -> None:
        into.put_nowait(StreamState(error, failures, pause))

    def connected() -> None:
        into.put_nowait(StreamState())

    try:
        async for event in follow_events(
            runs.api, after=after, run=run_id, on_retry=lost, on_connect=connected
        ):
            into.put_nowait(event)
    except ApiError as exc:  # a refusal (the token was revoked, say): the caller raises it
        into.put_nowait(exc)


async def _advance(
    live: LiveRun,
    events: asyncio.Queue[EventOut | ApiError | StreamState],
    show: Callable[[RunView], None],
    notice: Callable[[StreamState], None],
    json_lines: bool,
    *,
    ticking: bool,
) -> RunView:
    while True:
        try:
            first = await asyncio.wait_for(events.get(), TICK_S if ticking else None)
        except TimeoutError:
            show(live.view())  # nothing new; the running tasks' durations moved on
            continue
        # Everything that arrived together is folded before one redraw.
        batch = [first]
        while not events.empty():
            batch.append(events.get_nowait())
        for event in batch:
            if isinstance(event, ApiError):
                raise event
            if isinstance(event, StreamState):
                notice(event)
                continue
            if json_lines:
                emit_json(event)
            await live.apply(event)
        view = live.view()
        show(view)
        if view.phase in TERMINAL_PHASES:
            return view
