"""`runsvc executor`: its options. The agent and what it needs load only when the
command runs (`runsvc.cli.executing`): every other command starts faster without them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

EXAMPLE = """\
example:
  export RUNSVC_SERVER=http://ci.example.com:8080
  export RUNSVC_TOKEN=rsv_...        # runsvc token create --role executor --name farm-1
  runsvc executor --labels os=linux arch=x86_64 --concurrency 4 --work-dir /var/lib/runsvc

Give the token with --token-file (a file readable by the executor alone, or - for
standard input), RUNSVC_TOKEN_FILE or RUNSVC_TOKEN; --token works too, but every user
of the machine can see it while the executor starts. An executor that got its token
from RUNSVC_TOKEN or --token executes itself once more without it, so that nothing of
its process shows it; its memory is closed to other processes.

Tasks see their own environment plus PATH, HOME, USER, LOGNAME, SHELL, LANG, LANGUAGE,
LC_*, TZ and TMPDIR from the executor's; never its token. An executor running as root
runs tasks as --task-user (default nobody), in work directories that user owns. What a
task writes to the file $RUNSVC_OUTPUT names is reported as its outputs.

SIGTERM or SIGINT stops claiming and gives running tasks the grace period to finish;
the rest are ended and handed back. A second signal ends them at once.

environment:
  RUNSVC_SERVER      the server's base URL (--server)
  RUNSVC_TOKEN       an executor token (--token)
  RUNSVC_TOKEN_FILE  a file holding it (--token-file)
  RUNSVC_TASK_USER   who tasks run as (--task-user)
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "executor",
        help="run an executor: claim ready tasks and run them",
        description="Claim ready tasks from the server, run each in a fresh work directory, "
        "stream its log, upload its artifacts and report how it ended.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--server",
        metavar="URL",
        help="the server's base URL (env RUNSVC_SERVER; default http://127.0.0.1:8080)",
    )
    parser.add_argument("--token", help="an executor token (better: --token-file or RUNSVC_TOKEN)")
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help="a file holding the executor token, - for standard input",
    )
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
        "--task-user",
        metavar="NAME",
        help="the user tasks run as when the executor runs as root (default nobody); "
        "'' runs them as the executor's own user",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long running tasks may go on after SIGTERM (default 30)",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from runsvc.cli.executing import run_executor

    return run_executor(args)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value
