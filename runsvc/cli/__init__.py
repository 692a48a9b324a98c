"""The `runsvc` command line. Exit codes: see EXIT_CODES (and README.md)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from runsvc.cli import (
    artifacts,
    completion,
    connection,
    executor,
    local,
    runs,
    schedules,
    schema,
    serve,
    snapshot,
    streams,
    watch,
    webhooks,
)
from runsvc.cli import secrets as secret_commands
from runsvc.cli.connection import EXIT_USAGE
from runsvc.domain.suggest import did_you_mean

EXIT_CODES = """\
exit codes:
  0  success
  1  the run failed or was stopped
  2  the command line, a file or the request is invalid (bad flags, a 400 or 409)
  3  the server failed or could not be reached (5xx, 429, no answer)
  4  not found
  5  not allowed: the token is missing, unknown or its role may not do this

client commands take the server and token from --server/--token, RUNSVC_SERVER/
RUNSVC_TOKEN, or the file `runsvc login` writes; they print tables for people and,
with --format json, one JSON object (or JSON lines for streams) for scripts.
"""


class _Version(argparse.Action):
    """`--version`: the installed distribution's version, looked up only when asked for
    (reading package metadata costs every other command start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS)
        self.help = "print runsvc's version and exit"

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> NoReturn:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("runsvc")
        except PackageNotFoundError:  # run from a checkout that was never installed
            found = "unknown (not installed)"
        print(f"runsvc {found}")
        parser.exit()


class _Parser(argparse.ArgumentParser):
    """argparse's parser, with the command probably meant when one is misspelt (Python
    3.12 and later can do this themselves; 3.11 cannot)."""

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match:
            message += did_you_mean(match.group(1), _CHOICE.findall(match.group(2)))
        super().error(message)


_INVALID_CHOICE = re.compile(r"invalid choice: '([^']*)' \(choose from (.*)\)")
_CHOICE = re.compile(r"'([^']*)'")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="runsvc",
        description="An event-sourced run service: runs are DAGs of tasks.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action=_Version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    runs.register(commands)
    watch.register(commands)
    streams.register(commands)
    artifacts.register(commands)
    schedules.register(commands)
    connection.register_login(commands)
    serve.register(commands)
    executor.register(commands)
    local.register(commands)
    snapshot.register(commands)
    schema.register(commands)
    webhooks.register(commands)
    secret_commands.register(commands)
    completion.register(commands, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command line; return its exit code (also for `--help` and usage errors,
    which argparse reports by exiting)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        code: int = args.handler(args)
    except SystemExit as exc:  # a command that cannot start says why and exits
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return code


if __name__ == "__main__":
    sys.exit(main())
