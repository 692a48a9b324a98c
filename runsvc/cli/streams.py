"""Client commands that stream: `runsvc logs` (a task attempt's output) and `runsvc
events` (a page of the global log, or with `--follow` the live log as JSON lines or
lines for people)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from runsvc.api import EventOut
from runsvc.cli.connection import EXIT_OK, UsageError, add_connection_options, remote
from runsvc.cli.output import emit_json, moment
from runsvc.client import RunsClient, follow_events


def register(commands: Any) -> None:
    logs = commands.add_parser(
        "logs",
        help="a task's output (live while it runs, stored once it ended)",
        description="Print a task attempt's output: the latest attempt unless --attempt.",
        epilog="example:\n  runsvc logs 0190f3c2... test --follow",
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
    events.add_argument("--after", type=int, default=0, metavar="POSITION")
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--follow", "-f", action="store_true")
    add_connection_options(events)
    events.set_defaults(handler=run_events)


def run_logs(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        run = await runs.get(args.run_id)
        task = run.tasks.get(args.task)
        if task is None:
            raise UsageError(
                f"run {args.run_id} has no task {args.task!r}; it has: " + ", ".join(run.tasks)
            )
        async for chunk in runs.task_logs(task.id, attempt=args.attempt, follow=args.follow):
            sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
        return EXIT_OK

    return remote(args, work)


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
        if args.follow:
            async for event in follow_events(
                runs.api, after=args.after, run=args.run, group=args.group, types=types
            ):
                show(event)
            return EXIT_OK
        page = await runs.events(
            after=args.after, limit=args.limit, run=args.run, group=args.group, types=types
        )
        for event in page.events:
            show(event)
        if args.format != "json":
            print(f"(next: --after {page.next_after})", file=sys.stderr)
        return EXIT_OK

    return remote(args, work)
