"""Client commands on runs: submit, simulate, runs list|show, stop, cancel, approve,
recreate, history, state, verify."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any, get_args

import msgspec

from runsvc.cli.connection import EXIT_OK, EXIT_RUN_FAILED, add_connection_options, remote
from runsvc.cli.describe import approval, has_items, item_of, note, output_lines
from runsvc.cli.output import duration, emit_json, moment, table
from runsvc.cli.run_files import RunFile, pairs, task_outputs
from runsvc.cli.watch import closing_note, follow_run, outcome_code
from runsvc.client import ApiError, RunsClient
from runsvc.domain.events import Phase, Result
from runsvc.domain.view import RunView

RAW = argparse.RawDescriptionHelpFormatter


def _command(commands: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=RAW,
    )
    add_connection_options(parser)
    return parser


def register(commands: Any) -> None:
    submit = _command(
        commands,
        "submit",
        "create a run from a YAML or JSON file",
        "runsvc submit examples/ci.yaml --env BRANCH=main --wait",
    )
    submit.add_argument(
        "file", type=Path, help="a run document (group, name, config, ...) or a bare config"
    )
    submit.add_argument("--group", help="the run's group (overrides the file's)")
    submit.add_argument("--name", help="the run's name (overrides the file's)")
    submit.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable of the run (repeatable)",
    )
    submit.add_argument("--idempotency-key", help="a repeat with this key returns the same run")
    submit.add_argument(
        "--wait",
        action="store_true",
        help="follow the run until it ends; exit 1 unless it succeeds",
    )
    submit.set_defaults(handler=run_submit)

    simulate = _command(
        commands,
        "simulate",
        "preview what a config would run, skip or wait for",
        "runsvc simulate examples/ci.yaml --outcome test=failure\n"
        '  runsvc simulate examples/matrix.yaml --output \'plan.shards=["unit","api"]\' '
        "--output test.passed=3",
    )
    simulate.add_argument("file", type=Path)
    simulate.add_argument("--env", action="append", default=[], metavar="K=V")
    simulate.add_argument(
        "--outcome",
        action="append",
        default=[],
        metavar="TASK=OUTCOME",
        help="success, failure or no_approval (repeatable)",
    )
    simulate.add_argument(
        "--output",
        action="append",
        default=[],
        metavar="TASK.KEY=VALUE",
        help="an output the task's attempts write, for the expressions that read it (repeatable)",
    )
    simulate.set_defaults(handler=run_simulate)

    runs = commands.add_parser(
        "runs",
        help="list and show runs",
        description="List and show runs.",
        epilog="examples:\n  runsvc runs list --result failed\n"
        "  runsvc runs show 01M88X6GBAY22NRY9DMZC54X7B --format json",
        formatter_class=RAW,
    )
    actions = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)
    listing = _command(
        actions, "list", "runs, newest first", "runsvc runs list --group /acme --phase running"
    )
    listing.add_argument("--group", help="this group and everything below it")
    listing.add_argument("--phase", choices=get_args(Phase))
    listing.add_argument("--result", choices=get_args(Result))
    listing.add_argument(
        "--waiting-approval",
        action="store_true",
        help="only runs with a task waiting for an approval (runsvc approve ID TASK)",
    )
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument(
        "--cursor", help="the page after the one that printed it (pass the same filters)"
    )
    listing.set_defaults(handler=run_list)
    show = _command(
        actions, "show", "one run with its tasks", "runsvc runs show 01M88X6GBAY22NRY9DMZC54X7B"
    )
    show.add_argument("run_id", metavar="ID")
    show.set_defaults(handler=run_show)

    for name, summary in (("stop", "stop a running run"), ("cancel", "cancel a queued run")):
        action = _command(commands, name, summary, f"runsvc {name} 01M88X6GBAY22NRY9DMZC54X7B")
        action.add_argument("run_id", metavar="ID")
        action.set_defaults(handler=run_action, action=name)
    approve = _command(
        commands,
        "approve",
        "approve a task waiting for approval",
        "runsvc approve 01M88X6GBAY22NRY9DMZC54X7B deploy --comment 'release 1.4'",
    )
    approve.add_argument("run_id", metavar="ID")
    approve.add_argument("task")
    approve.add_argument("--comment")
    approve.set_defaults(handler=run_approve)
    recreate = _command(
        commands,
        "recreate",
        "run an ended run again as a new run",
        "runsvc recreate 01M88X6GBAY22NRY9DMZC54X7B --from failed",
    )
    recreate.add_argument("run_id", metavar="ID")
    recreate.add_argument("--from", dest="from_", choices=["failed", "scratch"], default="failed")
    recreate.add_argument(
        "--env",
        action="append",
        default=None,
        metavar="K=V",
        help="replace the run's environment (repeatable)",
    )
    recreate.set_defaults(handler=run_recreate)

    history = _command(
        commands, "history", "a run's events in order", "runsvc history 01M88X6GBAY22NRY9DMZC54X7B"
    )
    history.add_argument("run_id", metavar="ID")
    history.set_defaults(handler=run_history)
    state = _command(
        commands,
        "state",
        "a run as it was at a version or log position",
        "runsvc state 01M88X6GBAY22NRY9DMZC54X7B --at-version 3",
    )
    state.add_argument("run_id", metavar="ID")
    at = state.add_mutually_exclusive_group(required=True)
    at.add_argument("--at-version", type=int)
    at.add_argument("--at-position", type=int)
    state.set_defaults(handler=run_state)
    verify = _command(
        commands,
        "verify",
        "check a run's hash chain and stored state",
        "runsvc verify 01M88X6GBAY22NRY9DMZC54X7B",
    )
    verify.add_argument("run_id", metavar="ID")
    verify.set_defaults(handler=run_verify)


def run_submit(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        file = RunFile(args.file)
        request = file.create_request(
            group=args.group,
            name=args.name,
            environment=pairs(args.env, "--env"),
            idempotency_key=args.idempotency_key,
        )
        try:
            run, created = await runs.create(request)
        except ApiError as exc:
            raise file.located(exc) from exc
        people = args.format != "json"
        if not args.wait:
            if people:
                print(_created(run, created))
                print(f"  follow it: runsvc watch {run.id}")
            else:
                emit_json(run)
            return EXIT_OK
        if people:
            # On stderr: stdout is the live view (or the lines of a log).
            print(_created(run, created), file=sys.stderr)
            hint = f"  following it; leave with Ctrl-C, come back with: runsvc watch {run.id}"
            print(hint, file=sys.stderr)
        final = await follow_run(runs, run.id, json_lines=not people)
        if people:
            print(await closing_note(runs, final))
        return outcome_code(final)

    return remote(args, work)


def _created(run: RunView, created: bool) -> str:
    what = "created" if created else "exists already (same idempotency key)"
    return f"run {run.id} {what}: {run.group} {run.name} #{run.counter}"


def run_simulate(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        file = RunFile(args.file)
        request = file.simulation_request(
            environment=pairs(args.env, "--env"),
            outcomes=pairs(args.outcome, "--outcome"),
            outputs=task_outputs(args.output),
        )
        try:
            result = await runs.simulate(request)
        except ApiError as exc:
            raise file.located(exc) from exc
        if args.format == "json":
            emit_json(result)
            return EXIT_OK
        rows = [
            (t.wave if t.wave is not None else "-", t.name, t.status, t.reason)
            for t in result.tasks
        ]
        print(table(["WAVE", "TASK", "WOULD", "WHY"], rows))
        print(f"\n{result.waves} waves; the run would end: {result.result}")
        if result.secrets:
            needed = ", ".join(
                f"{s.name} ({'set' if s.exists else 'NOT SET: its tasks would fail'})"
                for s in result.secrets
            )
            print(f"secrets for {request.group}: {needed}")
        return EXIT_OK

    return remote(args, work)


def run_list(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        page = await runs.list(
            group=args.group,
            phase=args.phase,
            result=args.result,
            waiting_approval=True if args.waiting_approval else None,
            limit=args.limit,
            cursor=args.cursor,
        )
        if args.format == "json":
            emit_json(page)
            return EXIT_OK
        rows = [
            (
                r.id,
                r.group,
                r.name,
                r.counter,
                r.phase,
                r.result,
                moment(r.created_at),
                duration(r.started_at, r.finished_at),
            )
            for r in page.runs
        ]
        print(table(["ID", "GROUP", "NAME", "#", "PHASE", "RESULT", "CREATED", "TOOK"], rows))
        if page.next_cursor:
            print(f"(more: the next page with the same flags and --cursor {page.next_cursor})")
        return EXIT_OK

    return remote(args, work)


def show_run(run: RunView, *, live: bool = True) -> str:
    """A run and its tasks as text. A run read as it was (`live=False`) has no "now" to
    measure unfinished work against: only what had ended shows a duration."""

    def took(start: datetime | None, end: datetime | None) -> str:
        return duration(start, end) if live or end is not None else "-"

    lines = [
        f"run {run.id}  {run.group} {run.name} #{run.counter}",
        f"phase {run.phase}, result {run.result}"
        + (f", stop requested ({run.stop_reason or 'by a user'})" if run.stop_requested else "")
        + (f", position {run.queue_position} in its queue" if run.queue_position else ""),
        f"created {moment(run.created_at)}, took {took(run.started_at, run.finished_at)}",
    ]
    items = has_items(run)
    rows = [
        (
            t.name,
            *([item_of(t)] if items else []),
            t.status,
            t.attempt,
            took(t.started_at, t.finished_at),
            t.exit_code,
            note(run, t, approvals=False),
        )
        for t in run.tasks.values()
    ]
    headers = ["TASK", *(["ITEM"] if items else []), "STATUS", "ATTEMPT", "TOOK", "EXIT", "NOTE"]
    # Below the table rather than in NOTE, which an approved task's error may need.
    approved = [f"{t.name} {approval(t)}" for t in run.tasks.values() if t.approved_by]
    outputs = [line for t in run.tasks.values() for line in output_lines(t)]
    return "\n".join(
        [
            *lines,
            "",
            table(headers, rows),
            *(["", *approved] if approved else []),
            *(["", "outputs:", *(f"  {line}" for line in outputs)] if outputs else []),
        ]
    )


def run_show(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        run = await runs.get(args.run_id)
        if args.format == "json":
            emit_json(run)
        else:
            print(show_run(run))
        return EXIT_OK

    return remote(args, work)


def run_action(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        await (runs.stop if args.action == "stop" else runs.cancel)(args.run_id)
        _done(
            args,
            {"run": args.run_id, "action": args.action},
            f"{args.action} requested for {args.run_id}",
        )
        return EXIT_OK

    return remote(args, work)


def run_approve(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        await runs.approve(args.run_id, args.task, args.comment)
        _done(
            args,
            {"run": args.run_id, "task": args.task, "approved": True},
            f"approved {args.task} of {args.run_id}",
        )
        return EXIT_OK

    return remote(args, work)


def _done(args: argparse.Namespace, value: dict[str, object], text: str) -> None:
    if args.format == "json":
        emit_json(value)
    else:
        print(text)


def run_recreate(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        environment = pairs(args.env, "--env") if args.env is not None else None
        run = await runs.recreate(args.run_id, from_=args.from_, environment=environment)
        _done(
            args,
            msgspec.to_builtins(run),
            f"run {run.id} recreated from {args.run_id}\n  follow it: runsvc watch {run.id}",
        )
        return EXIT_OK

    return remote(args, work)


def run_history(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        events = await runs.history(args.run_id)
        if args.format == "json":
            for event in events:
                emit_json(event)
            return EXIT_OK
        rows = [
            (
                e.version,
                e.position,
                moment(e.recorded_at),
                f"{e.actor.kind}:{e.actor.id}",
                e.type,
                _summary(e.data),
            )
            for e in events
        ]
        print(table(["VERSION", "POSITION", "RECORDED", "ACTOR", "TYPE", "WHAT"], rows))
        return EXIT_OK

    return remote(args, work)


def _summary(data: Any) -> str:
    if not isinstance(data, dict):
        return ""
    keys = ("task", "status", "attempt", "phase", "result", "error", "comment", "exit_code")
    return " ".join(f"{k}={data[k]}" for k in keys if data.get(k) not in (None, ""))


def run_state(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        run = await runs.state(
            args.run_id, at_version=args.at_version, at_position=args.at_position
        )
        if args.format == "json":
            emit_json(run)
        else:
            print(f"as of version {run.version} (position {run.position}):")
            print(show_run(run, live=False))
        return EXIT_OK

    return remote(args, work)


def run_verify(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        result = await runs.verify(args.run_id)
        if args.format == "json":
            emit_json(result)
        elif result.ok:
            print(f"ok: {result.events} events, hash chain intact, state reproduced")
        else:
            print("NOT OK:\n" + "\n".join(f"  {p}" for p in result.problems))
        return EXIT_OK if result.ok else EXIT_RUN_FAILED

    return remote(args, work)
