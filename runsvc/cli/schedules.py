"""`runsvc schedules create|list|show|pause|resume|trigger|delete`: runs started by a clock,
created from a YAML or JSON file like a run file."""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from runsvc.cli.connection import EXIT_OK, UsageError, add_connection_options, remote
from runsvc.cli.documents import Document, DocumentError
from runsvc.cli.output import emit_json, moment, table
from runsvc.client import RunsClient
from runsvc.client.schedules import SchedulesClient
from runsvc.domain.schedules import ScheduleView

RAW = argparse.RawDescriptionHelpFormatter


def register(commands: Any) -> None:
    schedules = commands.add_parser(
        "schedules",
        help="runs started by a clock: create, list, show, pause, resume, trigger, delete",
        description="Schedules create a run at each time of a cron expression (read in a "
        "timezone) or of `@every DURATION`. See docs/schedules.md.",
        epilog="examples:\n  runsvc schedules create examples/nightly-schedule.yaml\n"
        "  runsvc schedules list --group /acme\n"
        "  runsvc schedules pause 01M88X6GBAY22NRY9DMZC54X7B",
        formatter_class=RAW,
    )
    actions = schedules.add_subparsers(dest="schedules_command", metavar="COMMAND", required=True)
    create = actions.add_parser(
        "create",
        help="create a schedule from a file",
        description="Create a schedule from a YAML or JSON file with name, group, cron, "
        "timezone, overlap, catchup and run (a run file's fields).",
        epilog="example:\n  runsvc schedules create examples/nightly-schedule.yaml",
        formatter_class=RAW,
    )
    create.add_argument("file", type=Path, metavar="FILE")
    add_connection_options(create)
    create.set_defaults(handler=run_create)
    listing = actions.add_parser(
        "list",
        help="every schedule, by group and name",
        epilog="example:\n  runsvc schedules list --group /acme",
        formatter_class=RAW,
    )
    listing.add_argument("--group", help="only the schedules under this group")
    add_connection_options(listing)
    listing.set_defaults(handler=run_list)
    for name, help_text, act in (
        ("show", "one schedule: when it fires next and its last runs", _show),
        ("pause", "stop firing until resumed (what falls in the pause is not made up)", _pause),
        ("resume", "fire again from now on", _resume),
        ("trigger", "create the schedule's run now", _trigger),
        ("delete", "delete a schedule (its history stays in the log)", _delete),
    ):
        command = actions.add_parser(
            name,
            help=help_text,
            description=help_text.capitalize(),
            epilog=f"example:\n  runsvc schedules {name} 01M88X6GBAY22NRY9DMZC54X7B",
            formatter_class=RAW,
        )
        command.add_argument("schedule_id", metavar="ID")
        add_connection_options(command)
        command.set_defaults(handler=_with_schedules(act))


Action = Callable[[SchedulesClient, argparse.Namespace], Awaitable[int]]


def _with_schedules(act: Action) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        async def work(runs: RunsClient) -> int:
            return await act(SchedulesClient(runs.api), args)

        return remote(args, work)

    return handler


def run_create(args: argparse.Namespace) -> int:
    try:
        document = Document.read(args.file)
    except OSError as exc:
        raise UsageError(f"{args.file}: {exc.strerror}") from None
    if not isinstance(document.data, dict):
        raise DocumentError(document.where(""), "expected a mapping at the top")
    body: dict[str, Any] = document.data

    async def work(runs: RunsClient) -> int:
        created = await SchedulesClient(runs.api).create(body)
        _print(args, created)
        return EXIT_OK

    return remote(args, work)


def run_list(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        found = await SchedulesClient(runs.api).list(args.group)
        if args.format == "json":
            emit_json({"schedules": found})
            return EXIT_OK
        rows = [
            (
                s.id,
                s.group,
                s.name,
                f"{s.cron} ({s.timezone})",
                "paused" if s.paused else moment(s.next_fire_at),
                (len(s.recent_runs) and s.recent_runs[0].run_id) or "-",
            )
            for s in found
        ]
        print(table(["ID", "GROUP", "NAME", "WHEN", "NEXT (UTC)", "LAST RUN"], rows))
        return EXIT_OK

    return remote(args, work)


def _print(args: argparse.Namespace, schedule: ScheduleView) -> None:
    if args.format == "json":
        emit_json(schedule)
        return
    lines = [
        f"schedule {schedule.id}  {schedule.group}/{schedule.name}",
        f"  when:     {schedule.cron} in {schedule.timezone}",
        f"  next:     {'paused' if schedule.paused else moment(schedule.next_fire_at)} (UTC)",
        f"  overlap:  {schedule.overlap}   catchup: {schedule.catchup}",
        f"  fired:    {schedule.fired}   skipped: {schedule.skipped}",
    ]
    for firing in schedule.recent_runs:
        how = "manual" if firing.manual else f"for {moment(firing.fire_at)}"
        lines.append(f"  run {firing.run_id}  {how}")
    print("\n".join(lines))


async def _show(client: SchedulesClient, args: argparse.Namespace) -> int:
    _print(args, await client.get(args.schedule_id))
    return EXIT_OK


async def _pause(client: SchedulesClient, args: argparse.Namespace) -> int:
    _print(args, await client.change(args.schedule_id, {"paused": True}))
    return EXIT_OK


async def _resume(client: SchedulesClient, args: argparse.Namespace) -> int:
    _print(args, await client.change(args.schedule_id, {"paused": False}))
    return EXIT_OK


async def _trigger(client: SchedulesClient, args: argparse.Namespace) -> int:
    run = await client.trigger(args.schedule_id)
    if args.format == "json":
        emit_json(msgspec.to_builtins(run))
    else:
        print(f"run {run.id} created ({run.group}/{run.name} #{run.counter})")
    return EXIT_OK


async def _delete(client: SchedulesClient, args: argparse.Namespace) -> int:
    await client.delete(args.schedule_id)
    if args.format != "json":
        print(f"schedule {args.schedule_id} deleted")
    return EXIT_OK
