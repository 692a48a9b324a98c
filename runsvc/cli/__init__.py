"""The `runsvc` command line.

Exit codes: 0 success; 1 the run failed or was stopped; 2 usage error; 3 server or
network error; 4 not found.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from runsvc.cli import (
    completion,
    connection,
    executor,
    local,
    runs,
    schema,
    serve,
    snapshot,
    streams,
    watch,
)
from runsvc.cli.connection import EXIT_USAGE
from runsvc.infra.logs import configure_logging

EXIT_CODES = """\
exit codes:
  0  success
  1  the run failed or was stopped
  2  usage error
  3  server or network error
  4  not found

client commands take the server and token from --server/--token, RUNSVC_SERVER/
RUNSVC_TOKEN, or the file `runsvc login` writes; they print tables for people and,
with --format json, one JSON object (or JSON lines for streams) for scripts.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runsvc",
        description="An event-sourced run service: runs are DAGs of tasks.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    runs.register(commands)
    watch.register(commands)
    streams.register(commands)
    connection.register_login(commands)
    serve.register(commands)
    executor.register(commands)
    local.register(commands)
    snapshot.register(commands)
    schema.register(commands)
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
    # Commands other than `serve` (which configures its own) only speak up when it matters.
    configure_logging("auto", "warning")
    code: int = args.handler(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
