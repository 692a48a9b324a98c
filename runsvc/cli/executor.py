"""`runsvc executor`: run an executor agent against a server."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import structlog

from runsvc.client import ApiClient, ExecutorClient
from runsvc.executor import Agent, AgentConfig, AgentError
from runsvc.infra.logs import configure_logging

EXIT_OK, EXIT_USAGE, EXIT_SERVER = 0, 2, 3

EXAMPLE = """\
example:
  export RUNSVC_SERVER=http://ci.example.com:8080
  export RUNSVC_TOKEN=rsv_...        # runsvc token create --role executor --name farm-1
  runsvc executor --labels os=linux arch=x86_64 --concurrency 4 --work-dir /var/lib/runsvc

Prefer RUNSVC_TOKEN to --token: arguments are visible to every user of the machine.
Tasks see their own environment plus PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE,
LC_*, TZ and TMPDIR from the executor's; never its token.

SIGTERM or SIGINT stops claiming and gives running tasks the grace period to finish;
the rest are ended and handed back. A second signal ends them at once.

environment:
  RUNSVC_SERVER   the server's base URL (--server)
  RUNSVC_TOKEN    an executor token (--token)
"""

log = structlog.get_logger("runsvc.executor")


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "executor",
        help="run an executor: claim ready tasks and run them",
        description="Claim ready tasks from the server, run each in a fresh work directory, "
        "stream its log, upload its artifacts and report how it ended.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", metavar="URL", help="the server's base URL")
    parser.add_argument("--token", help="an executor token (better: RUNSVC_TOKEN)")
    parser.add_argument(
        "--labels",
        nargs="+",
        action="extend",
        default=[],
        metavar="KEY=VALUE",
        help="labels matched against the tasks' runs_on (repeatable)",
    )
    parser.add_argument(
        "--concurrency",
        type=_positive_int,
        default=1,
        metavar="N",
        help="tasks run at once (default 1)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=Path(".runsvc/executor"),
        metavar="DIR",
        help="where attempts get their work directories (default ./.runsvc/executor)",
    )
    parser.add_argument("--name", help="this executor's name (default: the host name)")
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long running tasks may go on after SIGTERM (default 30)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    server = args.server or os.environ.get("RUNSVC_SERVER")
    token = args.token or os.environ.get("RUNSVC_TOKEN")
    if not server or not token:
        print(
            "runsvc executor: --server and --token (or RUNSVC_SERVER and RUNSVC_TOKEN) "
            "are required",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        labels = parse_labels(args.labels)
        api = ApiClient(server, token, user_agent="runsvc-executor")
    except ValueError as exc:
        print(f"runsvc executor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    work_root = args.work_dir.resolve()
    try:
        work_root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"runsvc executor: cannot use {work_root} as work directory: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging("auto", "info")
    config = AgentConfig(
        name=args.name or socket.gethostname(),
        work_root=work_root,
        labels=labels,
        concurrency=args.concurrency,
        shutdown_grace_s=args.shutdown_grace,
        inherited_env=dict(os.environ),
    )
    return asyncio.run(_serve(api, config))


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """`key=value` arguments as a dict; ValueError naming the first malformed one."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a label is KEY=VALUE, got {pair!r}")
        labels[key.strip()] = value.strip()
    return labels


async def _serve(api: ApiClient, config: AgentConfig) -> int:
    loop = asyncio.get_running_loop()
    async with api:
        agent = Agent(ExecutorClient(api), config)

        def on_signal(sig: signal.Signals) -> None:
            log.info("signal received; shutting down", signal=sig.name)
            agent.shutdown()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await agent.run()
        except AgentError as exc:
            print(f"runsvc executor: {exc}", file=sys.stderr)
            return EXIT_SERVER
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
