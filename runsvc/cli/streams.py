"""Client commands that stream: `runsvc logs` (a task attempt's output) and `runsvc
events` (a page of the global log, or with `--follow` the live log as JSON lines or
lines for people)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runsvc.cli.connection import EXIT_OK, add_connection_options, reconnecting, remote
from runsvc.cli.describe import task_named
from runsvc.cli.output import emit_json, moment
from runsvc.cli.watch import LiveRun
from runsvc.client import NotFoundError, RunsClient, follow_events
from runsvc.domain.fold import TERMINAL_PHASES, UNSTARTED
from runsvc.domain.view import TaskView
from runsvc.wire.api import EventOut


def register(commands: Any) -> None:
    logs = commands.add_parser(
        "logs",
        help="a task's output (live while it runs, stored once it ended)",
        description="Print a task attempt's output: the latest attempt unless --attempt.",
        epilog="example:\n  runsvc logs 01M88X6GBAY22NRY9DMZC54X7B test --follow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    logs.add_argument("run_id", metavar="ID")
    logs.add_argument("task")
    logs.add_argument("--follow", "-f", action="store_true", help="keep printing until it ends")
    logs.add_argument("--attempt", type=int, metavar="N")
    add_connection_options(logs, formats=False)
    logs.set_defaults(handler=run_logs)

    events = commands.add_parser(
        "events",
        help="the event log: a page, or followed live",
        description="Print events of the global log after a position, filtered by run, "
        "group (and below) or type; --follow keeps printing new ones.",
        epilog="example:\n  runsvc events --group /acme --follow --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    events.add_argument("--run")
    events.add_argument("--group")
    events.add_argument("--types", help="comma-separated event types")
    events.add_argument(
        "--after",
        type=int,
        metavar="POSITION",
        help="events after this position (default: the start of the log; with --follow, "
        "its current end, so only new events are printed)",
    )
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    add_connection_options(events)
    events.set_defaults(handler=run_events)


def run_logs(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        # Folded from the run's events, not read from the index that trails them: a task
        # that just ran has its attempt.
        live = LiveRun(runs, args.run_id)
        await live.load()
        if args.follow:
            task = await _started(runs, live, args.task)
        else:
            task = task_named(live.view(), args.task)
        if not task.children:
            await _print_log(runs, task, args.attempt, args.follow)
            return EXIT_OK
        # A foreach task runs nothing itself: its output is its items', each under a
        # header as `tail` prints several files, in the items' order.
        out = sys.stdout.buffer
        for index, name in enumerate(task.children):
            if args.follow:
                child = await _started(runs, live, name)
            else:
                child = live.view().tasks[name]
            item = f" (item {child.item})" if child.item is not None else ""
            out.write((b"\n" if index else b"") + f"==> {name}{item} <==\n".encode())
            out.flush()
            try:
                await _print_log(runs, child, args.attempt, args.follow)
            except NotFoundError as exc:
                out.write(f"({exc.message})\n".encode())
                out.flush()
        return EXIT_OK

    return remote(args, work)


async def _print_log(runs: RunsClient, task: TaskView, attempt: int | None, follow: bool) -> None:
    if task.attempt == 0:
        why = task.reason or task.status
        raise NotFoundError(404, "not_found", f"{task.name} has not run ({why}): no output")
    async for chunk in runs.task_logs(task.id, attempt=attempt, follow=follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()


async def _started(runs: RunsClient, live: LiveRun, name: str) -> TaskView:
    """The task once an executor has claimed it (its log exists), or once waiting is
    pointless: it ended without running (skipped), or the run ended without it (a foreach
    item that never came to be). Until then, the run's events are followed from where
    `live` is, and folded into it."""
    # Connects only when first read: a task that has started already costs nothing.
    events = follow_events(
        runs.api, after=live.view().position, run=live.run_id, on_retry=reconnecting
    )
    told = False
    try:
        while True:
            run = live.view()
            task = run.tasks.get(name)
            # A log exists from the moment an executor claims the attempt (it runs).
            if task is not None and task.status not in UNSTARTED:
                return task
            if run.phase in TERMINAL_PHASES:
                return task_named(run, name)
            if not told:
                why = task.reason or task.status if task is not None else "not expanded yet"
                print(f"waiting for {name} to start ({why})", file=sys.stderr)
                told = True
            await live.apply(await anext(events))
    finally:
        await events.aclose()


def _line(event: EventOut) -> str:
    return (
        f"{event.position:>8}  {moment(event.recorded_at)}  {event.stream}  v{event.version}  "
        f"{event.type}  {event.actor.kind}:{event.actor.id}"
    )


def run_events(args: argparse.Namespace) -> int:
    types = [t for t in (args.types or "").split(",") if t]

    def show(event: EventOut) -> None:
        if args.format == "json":
            emit_json(event)
        else:
            print(_line(event), flush=True)

    async def work(runs: RunsClient) -> int:
        # Asked once as a page even when following: a wrong filter, a token or a server
        # that is not there fails now, where following would wait and retry forever.
        page = await runs.events(
            after=args.after or 0,
            limit=1 if args.follow else args.limit,
            run=args.run,
            group=args.group,
            types=types,
        )
        if args.follow:
            # Like `tail -f`: what is already there was not asked for (--after 0 asks).
            start = args.after if args.after is not None else page.head or 0
            print(f"following events after position {start}", file=sys.stderr, flush=True)
            async for event in follow_events(
                runs.api,
                after=start,
                run=args.run,
                group=args.group,
                types=types,
                on_retry=reconnecting,
            ):
                show(event)
            return EXIT_OK
        for event in page.events:
            show(event)
        if args.format != "json":
            print(f"(next: --after {page.next_after})", file=sys.stderr)
        return EXIT_OK

    return remote(args, work)
