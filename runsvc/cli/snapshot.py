"""`runsvc snapshot create|list|restore`: index dumps in object storage, on demand.

These work on the database and the object store directly, like `projections rebuild`; with
nothing configured they use the data directory's embedded servers, attaching to the ones
`runsvc serve` runs when it is up (so they are safe while the service serves: a dump reads
one consistent snapshot, and a restore swaps the index in one transaction that the
service's projection runner then continues from).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any

import msgspec

from runsvc.cli.connection import EXIT_NOT_FOUND, EXIT_OK, EXIT_SERVER
from runsvc.cli.local import add_local_options, run_with_database
from runsvc.infra.settings import Settings

if TYPE_CHECKING:
    from runsvc.resources import Database


def register(commands: Any) -> None:
    snapshot = commands.add_parser(
        "snapshot",
        help="index dumps in object storage",
        description="Dump the index of all runs to object storage, list the dumps, or "
        "restore one (the service writes one on its own every interval).",
        epilog="example:\n  runsvc snapshot list",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = snapshot.add_subparsers(dest="snapshot_command", metavar="COMMAND", required=True)
    creating = actions.add_parser(
        "create",
        help="dump the index now and publish it as the latest",
        epilog="example:\n  runsvc snapshot create",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    creating.add_argument("--keep", type=int, default=5, help="dumps to keep (default 5)")
    listing = actions.add_parser(
        "list",
        help="the dumps, newest first",
        epilog="example:\n  runsvc snapshot list --format json",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restoring = actions.add_parser(
        "restore",
        help="replace the index with a dump and replay the events after it",
        description="Replace the index with dump KEY (default: the newest one that reads "
        "back whole) and bring it up to date from the log. A corrupt dump is refused and "
        "nothing changes.",
        epilog="example:\n  runsvc snapshot restore snapshots/index/00000000000000012345-...",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    restoring.add_argument("key", nargs="?", help="the dump's key (see `runsvc snapshot list`)")
    for parser, handler in (
        (creating, create_dump),
        (listing, list_dumps),
        (restoring, restore),
    ):
        add_local_options(parser)
        parser.add_argument("--s3-endpoint", help="object store endpoint (default: embedded)")
        parser.add_argument("--format", choices=["table", "json"], default="table")
        parser.set_defaults(handler=handler)


def _with_objects(settings: Settings, args: argparse.Namespace) -> Settings:
    if args.s3_endpoint:
        return msgspec.structs.replace(settings, s3_endpoint=args.s3_endpoint)
    return settings


class _Progress:
    """Rows done (of the total when known) and rows/s, redrawn on a terminal."""

    def __init__(self, verb: str) -> None:
        self.verb = verb
        self.started = time.monotonic()
        self.interactive = sys.stderr.isatty()
        self.shown = False

    def __call__(self, rows: int, total: int | None) -> None:
        rate = rows / max(time.monotonic() - self.started, 1e-6)
        of = f"/{total:,}" if total is not None else ""
        line = f"{self.verb}: {rows:,}{of} runs, {rate:,.0f} runs/s"
        self.shown = True
        print(
            f"\r{line}" if self.interactive else line,
            end="" if self.interactive else "\n",
            file=sys.stderr,
            flush=True,
        )

    def done(self) -> None:
        if self.shown and self.interactive:
            print(file=sys.stderr)


def _emit(args: argparse.Namespace, value: object, table: str) -> None:
    print(msgspec.json.encode(value).decode() if args.format == "json" else table)


async def _caught_up_index(settings: Settings, database: Database) -> int:
    from runsvc.resources import open_event_store

    """Bring the index up to the log's head (a no-op when the service keeps it there);
    returns the events applied here."""
    from projections.index import IndexProjection
    from projections.runner import ProjectionRunner

    async with open_event_store(settings, database) as store:
        runner = ProjectionRunner(store, IndexProjection())
        await runner.start()
        await runner.catch_up()
        return runner.events_applied


def create_dump(args: argparse.Namespace) -> int:
    from projections import snapshot

    progress = _Progress("dumping")

    async def work(settings: Settings, database: Database) -> snapshot.DumpInfo:
        from runsvc.resources import open_object_store

        # The dump then reflects the whole log even when no service is running.
        await _caught_up_index(settings, database)
        async with open_object_store(_with_objects(settings, args)) as objects:
            return await snapshot.create_dump(
                database.pool, objects, keep=args.keep, progress=progress
            )

    info = _guarded(lambda: run_with_database(args, work))
    progress.done()
    if info is None:
        return EXIT_SERVER
    _emit(
        args,
        info,
        f"{info.key}: {info.rows:,} runs at log position {info.position:,}, "
        f"{info.size / 1e6:.1f} MB",
    )
    return EXIT_OK


def list_dumps(args: argparse.Namespace) -> int:
    from projections import snapshot

    async def work(settings: Settings, _database: Database) -> tuple[Any, Any]:
        from runsvc.resources import open_object_store

        async with open_object_store(_with_objects(settings, args)) as objects:
            return await snapshot.list_dumps(objects), await snapshot.latest_pointer(objects)

    found = _guarded(lambda: run_with_database(args, work))
    if found is None:
        return EXIT_SERVER
    dumps, pointer = found
    latest = pointer.key if pointer is not None else None
    if args.format == "json":
        for dump in dumps:
            entry = msgspec.to_builtins(dump)
            entry["latest"] = dump.key == latest
            print(msgspec.json.encode(entry).decode())
        return EXIT_OK
    if not dumps:
        print("no dumps yet (runsvc snapshot create writes one)")
        return EXIT_OK
    print(f"{'KEY':<80} {'POSITION':>12} {'SIZE':>10}  CREATED")
    for dump in dumps:
        mark = "  (latest)" if dump.key == latest else ""
        print(
            f"{dump.key:<80} {dump.position:>12,} {dump.size / 1e6:>8.1f}MB  "
            f"{dump.created_at:%Y-%m-%d %H:%M:%S}{mark}"
        )
    return EXIT_OK


def restore(args: argparse.Namespace) -> int:
    from projections import snapshot
    from runsvc.infra.objectstore import ObjectNotFound

    progress = _Progress("restoring")

    async def work(settings: Settings, database: Database) -> tuple[str, int, int] | None:
        from runsvc.resources import open_object_store

        async with open_object_store(_with_objects(settings, args)) as objects:
            if args.key:
                key = args.key
                position = await snapshot.restore_dump(
                    database.pool, objects, key, progress=progress
                )
            else:
                restored = await snapshot.restore_newest(database.pool, objects, progress=progress)
                if restored is None:
                    return None
                key, position = restored[0].key, restored[1]
        progress.done()
        return key, position, await _caught_up_index(settings, database)

    try:
        outcome = _guarded(lambda: run_with_database(args, work), missing=(ObjectNotFound,))
    except ObjectNotFound:
        print(f"runsvc: no dump {args.key!r} (see `runsvc snapshot list`)", file=sys.stderr)
        return EXIT_NOT_FOUND
    except snapshot.CorruptDump as exc:
        progress.done()
        print(f"runsvc: dump refused, nothing changed: {exc}", file=sys.stderr)
        return EXIT_SERVER
    if outcome is None:
        print("runsvc: no dump to restore (or none reads back whole)", file=sys.stderr)
        return EXIT_NOT_FOUND
    key, position, replayed = outcome
    _emit(
        args,
        {"key": key, "position": position, "replayed_events": replayed},
        f"restored {key} (log position {position:,}); replayed {replayed:,} events after it",
    )
    return EXIT_OK


def _guarded(call: Any, missing: tuple[type[BaseException], ...] = ()) -> Any:
    """Run `call`; an unreachable object store is reported in one line, not a traceback."""
    from runsvc.infra.objectstore import ObjectStoreError

    try:
        return call()
    except missing:
        raise
    except ObjectStoreError as exc:
        print(f"runsvc: object store: {exc}", file=sys.stderr)
        return None
