"""`runsvc artifacts list|get`: the files a task uploaded (its `artifacts`), listed or
downloaded to a file or standard output."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import msgspec

from runsvc.cli.connection import EXIT_OK, UsageError, add_connection_options, remote
from runsvc.cli.describe import task_named
from runsvc.cli.output import emit_json, moment, size, table
from runsvc.client import RunsClient
from runsvc.domain.view import TaskView

RAW = argparse.RawDescriptionHelpFormatter


def register(commands: Any) -> None:
    artifacts = commands.add_parser(
        "artifacts",
        help="list and download the files a task uploaded",
        description="List and download a task's artifacts (the files its `artifacts` "
        "field names, uploaded when an attempt ends). A foreach task's are its items'.",
        epilog="examples:\n  runsvc artifacts list 01M88X6GBAY22NRY9DMZC54X7B build\n"
        "  runsvc artifacts get 01M88X6GBAY22NRY9DMZC54X7B build dist/app.tar.gz -o app.tar.gz",
        formatter_class=RAW,
    )
    actions = artifacts.add_subparsers(dest="artifacts_command", metavar="COMMAND", required=True)
    listing = actions.add_parser(
        "list",
        help="a task's artifacts, with size and time (a foreach task: each item's)",
        description="A task's artifacts, with their size and when they were uploaded; for "
        "a foreach task, those of each of its items.",
        epilog="example:\n  runsvc artifacts list 01M88X6GBAY22NRY9DMZC54X7B process dist/",
        formatter_class=RAW,
    )
    listing.add_argument("run_id", metavar="ID")
    listing.add_argument("task")
    listing.add_argument("prefix", nargs="?", metavar="PATH", help="only paths starting so")
    add_connection_options(listing)
    listing.set_defaults(handler=run_list)
    get = actions.add_parser(
        "get",
        help="download one artifact to a file (-o) or standard output",
        description="Download one artifact. With -o, to that file (or into that "
        "directory), which appears only once the whole file has arrived; without, to "
        "standard output.",
        epilog="example:\n"
        "  runsvc artifacts get 01M88X6GBAY22NRY9DMZC54X7B build dist/app.tar.gz -o .",
        formatter_class=RAW,
    )
    get.add_argument("run_id", metavar="ID")
    get.add_argument("task")
    get.add_argument("path", metavar="PATH", help="as `artifacts list` shows it")
    get.add_argument("-o", "--output", type=Path, metavar="FILE", help="a file or directory")
    add_connection_options(get, formats=False)
    get.set_defaults(handler=run_get)


def run_list(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        run = await runs.get(args.run_id)
        task = task_named(run, args.task)
        # A foreach task uploads nothing itself: its items do.
        tasks = [run.tasks[name] for name in task.children] if task.children else [task]
        found = []
        for each in tasks:
            for artifact in (await runs.artifacts(each.id)).artifacts:
                if artifact.key.startswith(args.prefix or ""):
                    found.append((each, artifact))
        if args.format == "json":
            emit_json(
                {
                    "artifacts": [
                        {"task": each.name, **msgspec.structs.asdict(artifact)}
                        for each, artifact in found
                    ]
                }
            )
            return EXIT_OK
        if not found:
            print(_nothing(task, args.prefix), file=sys.stderr)
            return EXIT_OK
        named = bool(task.children)
        rows = [
            (
                *([each.name] if named else []),
                artifact.key,
                size(artifact.size),
                moment(artifact.last_modified),
            )
            for each, artifact in found
        ]
        print(table([*(["TASK"] if named else []), "PATH", "SIZE", "UPLOADED"], rows))
        return EXIT_OK

    return remote(args, work)


def _nothing(task: TaskView, prefix: str | None) -> str:
    under = f" under {prefix!r}" if prefix else ""
    if task.attempt == 0 and not task.children:
        return f"{task.name} has not run ({task.reason or task.status}): no artifacts"
    return f"{task.name} has no artifacts{under}"


def run_get(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        run = await runs.get(args.run_id)
        task = task_named(run, args.task)
        if task.children:
            raise UsageError(
                f"{task.name} is a foreach task: its artifacts are its items' "
                f"({', '.join(task.children[:3])}{', ...' if len(task.children) > 3 else ''})"
            )
        chunks = runs.artifact_chunks(task.id, args.path)
        if args.output is None:
            async for chunk in chunks:
                sys.stdout.buffer.write(chunk)
            sys.stdout.buffer.flush()
            return EXIT_OK
        import tempfile  # only here: it costs every other command's start

        target = args.output
        if target.is_dir():
            target = target / Path(args.path).name
        # Written beside the target and renamed once complete: a transfer cut short
        # leaves no file that looks whole.
        handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
        written = 0
        try:
            with os.fdopen(handle, "wb") as file:
                async for chunk in chunks:
                    file.write(chunk)
                    written += len(chunk)
            os.replace(partial, target)
        except BaseException:
            os.unlink(partial)
            raise
        print(f"{args.path} ({size(written)}) saved to {target}", file=sys.stderr)
        return EXIT_OK

    return remote(args, work)
