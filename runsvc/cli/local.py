"""Operator commands that work on the database directly (no server needed): `token
create|list|revoke`, `projections rebuild`. With no database configured they attach to the embedded
server of the data directory (starting it if `runsvc serve` is not running)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec

from runsvc.cli.connection import EXIT_NOT_FOUND, EXIT_OK, EXIT_USAGE
from runsvc.infra.settings import Settings, load_settings

if TYPE_CHECKING:
    # The database drivers load only when a local command runs, never for client commands.
    from runsvc.resources import Database

T = TypeVar("T")


def add_local_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="data directory (default ./.runsvc)")
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: embedded)")


def local_settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        data_dir=args.data_dir, database_url=args.database_url, log_level="warning"
    )


def run_with_database(
    args: argparse.Namespace, work: Callable[[Settings, Database], Awaitable[T]]
) -> T:
    settings = local_settings(args)
    if settings.database_url is None:
        _require_data_dir(settings.data_dir)
    from runsvc.infra.logs import configure_logging

    # The server's modules this runs speak up only when it matters.
    configure_logging("auto", "warning")

    async def main() -> T:
        from runsvc.resources import open_database

        async with open_database(settings) as database:
            return await work(settings, database)

    return asyncio.run(main())


def _require_data_dir(data_dir: Path) -> None:
    """Refuse to work on a data directory `runsvc serve` never made: attaching would create
    a new, empty database there, and a token made in it works nowhere (exit 2)."""
    from runsvc.infra.postgres import EmbeddedPostgres

    if not (EmbeddedPostgres(data_dir).pgdata / "PG_VERSION").is_file():
        print(
            f"runsvc: no runsvc data directory at {data_dir.absolute()}; run this where "
            "`runsvc serve` keeps its data, or give --data-dir or --database-url",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USAGE)


def register(commands: Any) -> None:
    token = commands.add_parser(
        "token",
        help="manage API tokens",
        description="Manage API tokens (stored hashed; a new token is printed once).",
        epilog="examples:\n  runsvc token create --role submitter --name ci-bot\n"
        "  runsvc token create --role executor --name farm --labels os=linux --expires-in 90d\n"
        "  runsvc token list\n  runsvc token revoke 3f2a9c01be44",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND", required=True)
    create = token_commands.add_parser(
        "create",
        help="create a token and print it once",
        epilog="example:\n  runsvc token create --role executor --name build-farm",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument(
        "--role", required=True, choices=["admin", "submitter", "reader", "executor"]
    )
    create.add_argument("--name", help="a name to recognise it by (recorded as the actor)")
    create.add_argument(
        "--labels",
        nargs="+",
        metavar="KEY=VALUE",
        default=[],
        help="(executor tokens) claim only tasks whose runs_on these labels satisfy",
    )
    create.add_argument("--expires-in", metavar="DURATION", help="e.g. 30d, 12h; default never")
    add_local_options(create)
    create.set_defaults(handler=token_create)
    listing = token_commands.add_parser(
        "list",
        help="list tokens (never their secrets)",
        epilog="example:\n  runsvc token list --database-url postgresql://db/runsvc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_local_options(listing)
    listing.set_defaults(handler=token_list)
    revoking = token_commands.add_parser(
        "revoke",
        help="revoke a token; every server refuses it at once",
        epilog="example:\n  runsvc token revoke 3f2a9c01be44",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    revoking.add_argument("id", help="the token's id (the part after rsv_, as listed)")
    add_local_options(revoking)
    revoking.set_defaults(handler=token_revoke)

    projections = commands.add_parser(
        "projections",
        help="manage projections",
        description="Manage the read models folded from the log.",
        epilog="example:\n  runsvc projections rebuild",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    projection_commands = projections.add_subparsers(
        dest="projections_command", metavar="COMMAND", required=True
    )
    rebuild = projection_commands.add_parser(
        "rebuild",
        help="rebuild projections from the whole log (safe while serving)",
        description="Rebuild into new tables and swap them in atomically; the service keeps "
        "serving the old tables until the swap.",
        epilog="example:\n  runsvc projections rebuild index",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rebuild.add_argument("name", nargs="?", help="one projection (default: all)")
    add_local_options(rebuild)
    rebuild.set_defaults(handler=projections_rebuild)
    register_gc(commands)


def register_gc(commands: Any) -> None:
    gc = commands.add_parser(
        "gc",
        help="delete logs and artifacts of old runs (the runs and their events stay)",
        description="Delete the logs and artifacts of runs that ended before the cutoff and "
        "record that in each run's history.",
        epilog="example:\n  runsvc gc --older-than 30d",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument("--older-than", required=True, help="a duration such as 30d or 12h")
    add_local_options(gc)
    gc.add_argument("--s3-endpoint", help="object store endpoint (default: embedded)")
    gc.set_defaults(handler=run_gc)


def run_gc(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from runsvc.domain.config import parse_duration
    from runsvc.resources import open_object_store
    from runsvc.service.retention import collect
    from runsvc.service.runs import RunService

    try:
        cutoff = datetime.now(UTC) - parse_duration(args.older_than)
    except ValueError as exc:
        print(f"runsvc: {exc}", file=sys.stderr)
        return EXIT_USAGE

    def show(done: int, total: int) -> None:
        print(f"\r{done}/{total} runs", end="", file=sys.stderr, flush=True)

    async def work(settings: Settings, database: Database) -> None:
        from runsvc.resources import open_event_store

        if args.s3_endpoint:
            settings = msgspec.structs.replace(settings, s3_endpoint=args.s3_endpoint)
        async with (
            open_event_store(settings, database) as store,
            open_object_store(settings) as objects,
        ):
            collected = await collect(RunService(store), objects, older_than=cutoff, progress=show)
        if collected:
            print(file=sys.stderr)
        logs = sum(c.logs for c in collected)
        artifacts = sum(c.artifacts for c in collected)
        print(f"{len(collected)} runs: deleted {logs} logs and {artifacts} artifacts")

    run_with_database(args, work)
    return EXIT_OK


def token_create(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from runsvc.domain.errors import BadRequest
    from runsvc.service.tokens import issue
    from runsvc.wire.api import CreateTokenRequest

    labels = dict(label.partition("=")[::2] for label in args.labels)
    if any("=" not in label for label in args.labels):
        print("runsvc: --labels takes KEY=VALUE pairs", file=sys.stderr)
        return EXIT_USAGE
    request = CreateTokenRequest(
        role=args.role, name=args.name, labels=labels, expires_in=args.expires_in
    )

    async def work(_settings: Settings, database: Database) -> str:
        issued = await issue(database.pool, request, now=datetime.now(UTC))
        return issued.token

    try:
        print(run_with_database(args, work))
    except BadRequest as exc:
        problems = "; ".join(f"{p.path}: {p.message}" for p in exc.details)
        print(f"runsvc: {exc} ({problems})", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def token_list(args: argparse.Namespace) -> int:
    from runsvc.cli.output import moment, table
    from runsvc.service.tokens import list_tokens
    from runsvc.wire.api import TokenInfo

    async def work(_settings: Settings, database: Database) -> list[TokenInfo]:
        return await list_tokens(database.pool)

    tokens = run_with_database(args, work)
    rows = [
        [
            t.id,
            t.name,
            t.role,
            ",".join(f"{k}={v}" for k, v in sorted(t.labels.items())) or "-",
            moment(t.created_at),
            moment(t.last_used_at),
            moment(t.expires_at),
            moment(t.revoked_at),
        ]
        for t in tokens
    ]
    headers = ["ID", "NAME", "ROLE", "LABELS", "CREATED", "LAST USED", "EXPIRES", "REVOKED"]
    print(table(headers, rows), end="")
    return EXIT_OK


def token_revoke(args: argparse.Namespace) -> int:
    from runsvc.service.tokens import revoke

    async def work(_settings: Settings, database: Database) -> bool | None:
        return await revoke(database.pool, args.id)

    outcome = run_with_database(args, work)
    if outcome is None:
        print(f"runsvc: no token {args.id}", file=sys.stderr)
        return EXIT_NOT_FOUND
    print(f"revoked {args.id}" if outcome else f"{args.id} was already revoked")
    return EXIT_OK


def projections_rebuild(args: argparse.Namespace) -> int:
    from projections.rebuild import RebuildProgress, rebuild_all
    from projections.registry import all_projections, projection_named

    try:
        chosen = [projection_named(args.name)] if args.name else all_projections()
    except KeyError as exc:
        print(f"runsvc: {exc.args[0]}", file=sys.stderr)
        return EXIT_USAGE
    interactive = sys.stderr.isatty()

    def show(progress: RebuildProgress) -> None:
        share = progress.position / progress.head * 100 if progress.head else 100.0
        eta = f"{progress.eta_s:.0f}s" if progress.eta_s is not None else "-"
        line = (
            f"{progress.projection}: {progress.position:,}/{progress.head:,} "
            f"({share:.0f}%), {progress.events_per_s:,.0f} events/s, ETA {eta}"
        )
        print(
            f"\r{line}" if interactive else line, end="" if interactive else "\n", file=sys.stderr
        )

    async def work(settings: Settings, database: Database) -> None:
        from runsvc.resources import open_event_store

        async with open_event_store(settings, database) as store:
            finals = await rebuild_all(store, database.dsn, chosen, progress=show)
            if interactive:
                print(file=sys.stderr)
            for final in finals:
                print(
                    f"rebuilt {final.projection}: {final.events:,} events "
                    f"({final.position:,} log positions at {final.events_per_s:,.0f}/s)"
                )

    run_with_database(args, work)
    return EXIT_OK
