"""`runsvc serve`: run the service."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from runsvc.infra.logs import configure_logging
from runsvc.infra.settings import environment_variables, load_settings

EXAMPLE = """\
example:
  runsvc serve                       # embedded PostgreSQL and S3 under ./.runsvc
  RUNSVC_DATABASE_URL=postgresql://db/runsvc runsvc serve --host 0.0.0.0

environment:
""" + "\n".join(f"  {var:<28} {field}" for field, var in environment_variables().items())


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "serve",
        help="run the service",
        description="Run the HTTP API, projections, timers and the snapshotter.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8080)")
    parser.add_argument("--data-dir", type=Path, help="where embedded servers keep data")
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: embedded)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(
            host=args.host, port=args.port, data_dir=args.data_dir, database_url=args.database_url
        )
    except ValueError as exc:
        print(f"runsvc: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format, settings.log_level)
    # The whole server (aiohttp, asyncpg, the S3 client) loads only for `serve`: the
    # client commands start without it.
    from aiohttp import web

    from runsvc.app import create_app

    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        shutdown_timeout=settings.shutdown_grace_s,
        print=lambda _: print(
            f"runsvc listening on http://{settings.host}:{settings.port}", file=sys.stderr
        ),
        access_log=None,
    )
    return 0
