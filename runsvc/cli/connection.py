"""Which server and token a client command uses, and turning every failure into an exit
code and one line for a person (never a traceback).

Server and token come from, in order: `--server`/`--token`; `RUNSVC_SERVER`/
`RUNSVC_TOKEN`; the file `runsvc login` writes (`$XDG_CONFIG_HOME/runsvc/config.json`);
and for the server alone, http://127.0.0.1:8080. Without any token, the admin token that a
local `runsvc serve` wrote to its data directory (`./.runsvc/admin.token`) is used, so
the commands work out of the box next to `scripts/serve`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from runsvc.cli.documents import DocumentError
from runsvc.client import (
    ApiClient,
    ApiError,
    ConnectionFailed,
    ForbiddenError,
    NotFoundError,
    RunsClient,
    UnauthorizedError,
)

# The exit codes, as `runsvc --help` and README.md list them.
EXIT_OK = 0
EXIT_RUN_FAILED = 1  # the run failed or was stopped
EXIT_USAGE = 2  # the command line, a file or the request is invalid (any 4xx below)
EXIT_SERVER = 3  # the server failed or could not be reached (5xx, 429, no answer)
EXIT_NOT_FOUND = 4
EXIT_NOT_ALLOWED = 5  # 401, 403
DEFAULT_SERVER = "http://127.0.0.1:8080"


class UsageError(Exception):
    """A command line that cannot be carried out as given (exit code 2)."""


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "runsvc" / "config.json"


def _saved() -> dict[str, str]:
    try:
        saved: dict[str, str] = json.loads(config_path().read_text())
    except (OSError, ValueError):
        return {}
    return saved


def add_connection_options(parser: argparse.ArgumentParser, *, formats: bool = True) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument("--server", metavar="URL", help="the server (env RUNSVC_SERVER)")
    group.add_argument("--token", help="an API token (better: env RUNSVC_TOKEN)")
    if formats:
        parser.add_argument(
            "--format",
            choices=["table", "json"],
            default="table",
            help="table for people (default), json for scripts",
        )


def server_and_token(args: argparse.Namespace) -> tuple[str, str | None]:
    saved = _saved()
    server = args.server or os.environ.get("RUNSVC_SERVER") or saved.get("server") or DEFAULT_SERVER
    token = args.token or os.environ.get("RUNSVC_TOKEN") or saved.get("token")
    if token is None:
        data_dir = Path(os.environ.get("RUNSVC_DATA_DIR", ".runsvc"))
        try:
            token = (data_dir / "admin.token").read_text().strip() or None
        except OSError:
            token = None
    return server, token


def remote(args: argparse.Namespace, work: Callable[[RunsClient], Awaitable[int]]) -> int:
    """Run `work` with a client of the chosen server; map failures to exit codes."""
    server, token = server_and_token(args)
    try:
        api = ApiClient(server, token)
    except ValueError:
        source = "--server" if args.server else "the server (RUNSVC_SERVER or runsvc login)"
        return _fail(
            EXIT_USAGE, f"{source}: {server!r} is not an http(s) URL", "e.g. http://127.0.0.1:8080"
        )

    async def main() -> int:
        async with api:
            return await work(RunsClient(api))

    return guarded(lambda: asyncio.run(main()), server=server)


def guarded(call: Callable[[], int], *, server: str | None = None) -> int:
    """`call()`'s exit code, or the code of what it raised, with one line (and the
    server's validation details) on stderr: never a traceback, unless RUNSVC_DEBUG is
    set."""
    try:
        return call()
    except NotFoundError as exc:
        return _fail(EXIT_NOT_FOUND, exc.message)
    except ConnectionFailed as exc:
        hint = f"is the server at {server} up? (--server, RUNSVC_SERVER or runsvc login)"
        return _fail(EXIT_SERVER, exc.message, hint if server else None)
    except UnauthorizedError as exc:
        hint = "the token comes from --token, RUNSVC_TOKEN or runsvc login"
        return _fail(EXIT_NOT_ALLOWED, exc.message, hint)
    except ForbiddenError as exc:
        return _fail(EXIT_NOT_ALLOWED, exc.message)
    except ApiError as exc:
        details = [f"{detail.path}: {detail.message}" for detail in exc.details]
        server_side = exc.status >= 500 or exc.status == 429
        return _fail(EXIT_SERVER if server_side else EXIT_USAGE, exc.message, *details)
    except (DocumentError, UsageError) as exc:
        return _fail(EXIT_USAGE, str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        # A failure of this client itself; the one line still beats a traceback for a
        # person, and RUNSVC_DEBUG=1 shows where it came from.
        if os.environ.get("RUNSVC_DEBUG"):
            raise
        hint = "RUNSVC_DEBUG=1 shows the traceback"
        return _fail(EXIT_SERVER, f"{type(exc).__name__}: {exc}", hint)


def reconnecting(error: ApiError, failures: int, pause: float) -> None:
    """Tells a person why a followed stream went quiet (a follower retries forever)."""
    print(f"connection lost ({error.message}); reconnecting in {pause:.1f}s", file=sys.stderr)


def _fail(code: int, message: str, *more: str | None) -> int:
    print(f"error: {message}", file=sys.stderr)
    for line in more:
        if line:
            print(f"  {line}", file=sys.stderr)
    return code


def register_login(commands: Any) -> None:
    login = commands.add_parser(
        "login",
        help="remember a server and token for the other commands",
        description=f"Write the server and token to {config_path()} (readable by you only).",
        epilog="example:\n  runsvc login --server https://runs.example.com --token rsv_...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    login.add_argument("--server", required=True, metavar="URL")
    login.add_argument("--token", required=True)
    login.set_defaults(handler=run_login)


def run_login(args: argparse.Namespace) -> int:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump({"server": args.server, "token": args.token}, file)
    print(f"saved to {path}")
    return EXIT_OK
