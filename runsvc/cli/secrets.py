"""`runsvc secrets set|list|delete` (admin tokens, over the API) and `runsvc secrets
rotate-key` (an operator command on the database and the key file directly)."""

from __future__ import annotations

import argparse
import getpass
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runsvc.cli.connection import EXIT_OK, EXIT_USAGE, UsageError, add_connection_options, remote
from runsvc.cli.local import add_local_options, run_with_database
from runsvc.cli.output import emit_json, moment, table
from runsvc.client import RunsClient
from runsvc.client.secrets import SecretsClient

if TYPE_CHECKING:
    from runsvc.infra.settings import Settings
    from runsvc.resources import Database

RAW = argparse.RawDescriptionHelpFormatter


def register(commands: Any) -> None:
    secrets = commands.add_parser(
        "secrets",
        help="secrets for tasks' env: set, list, delete, rotate-key",
        description="Secrets are sealed at rest and given only to the attempts whose task's "
        "env names them (${{ secrets.NAME }}). See docs/secrets.md.",
        epilog="examples:\n  runsvc secrets set DEPLOY_TOKEN --group /acme < token.txt\n"
        "  runsvc secrets set TLS_KEY --file key.pem\n"
        "  runsvc secrets list --group /acme\n"
        "  runsvc secrets delete DEPLOY_TOKEN --group /acme\n"
        "  runsvc secrets rotate-key",
        formatter_class=RAW,
    )
    actions = secrets.add_subparsers(dest="secrets_command", metavar="COMMAND", required=True)
    setting = actions.add_parser(
        "set",
        help="set a secret (a new version); the value from stdin or --file, never an argument",
        description="Set a secret. The value is read from --file as it is, else from "
        "stdin (one trailing newline dropped), or asked for without echo on a terminal. "
        "It is never taken from the command line, where other users and shell "
        "histories see it.",
        epilog="examples:\n  runsvc secrets set DEPLOY_TOKEN --group /acme < token.txt\n"
        "  runsvc secrets set TLS_KEY --file key.pem",
        formatter_class=RAW,
    )
    setting.add_argument("name", metavar="NAME")
    setting.add_argument("--group", default="/", help="runs of this group and below see it")
    setting.add_argument("--file", type=Path, help="read the value from this file")
    add_connection_options(setting)
    setting.set_defaults(handler=run_set)
    listing = actions.add_parser(
        "list",
        help="names, groups, versions; never values",
        epilog="example:\n  runsvc secrets list --group /acme --format json",
        formatter_class=RAW,
    )
    listing.add_argument("--group", help="only the secrets of this group and below")
    add_connection_options(listing)
    listing.set_defaults(handler=run_list)
    deleting = actions.add_parser(
        "delete",
        help="delete a secret from a group",
        epilog="example:\n  runsvc secrets delete DEPLOY_TOKEN --group /acme",
        formatter_class=RAW,
    )
    deleting.add_argument("name", metavar="NAME")
    deleting.add_argument("--group", default="/", help="the group it is set in (default /)")
    add_connection_options(deleting)
    deleting.set_defaults(handler=run_delete)
    rotating = actions.add_parser(
        "rotate-key",
        help="seal every secret again under a new key, while serving",
        description="Put a new key first in the key file (the older ones stay, so "
        "processes that have not read the file yet still open everything), then seal "
        "every secret again under it. Servers read the file again by themselves. With "
        "--reseal-only no key is made: everything is sealed under the first key the "
        "ring has already (RUNSVC_SECRETS_KEY, or a file you edited). See docs/secrets.md.",
        epilog="examples:\n  runsvc secrets rotate-key --database-url postgresql://db/runsvc\n"
        "  runsvc secrets rotate-key --reseal-only --drop-old",
        formatter_class=RAW,
    )
    rotating.add_argument("--key-file", type=Path, help="the key file (RUNSVC_SECRETS_KEY_FILE)")
    rotating.add_argument(
        "--reseal-only", action="store_true", help="make no new key; seal under the first one"
    )
    rotating.add_argument(
        "--drop-old",
        action="store_true",
        help="afterwards, remove from the file the keys no secret is sealed under any more",
    )
    add_local_options(rotating)
    rotating.set_defaults(handler=run_rotate)


def _value(args: argparse.Namespace) -> str:
    if args.file is not None:
        try:
            return str(args.file.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"{args.file}: {getattr(exc, 'strerror', None) or exc}") from None
    if sys.stdin.isatty():
        return getpass.getpass(f"value of {args.name}: ")
    text = sys.stdin.read()
    return text[:-1] if text.endswith("\n") else text


def run_set(args: argparse.Namespace) -> int:
    value = _value(args)

    async def work(runs: RunsClient) -> int:
        await SecretsClient(runs.api).set(args.name, value, args.group)
        if args.format != "json":
            print(f"secret {args.name} set in {args.group}", file=sys.stderr)
        return EXIT_OK

    return remote(args, work)


def run_list(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        found = await SecretsClient(runs.api).list(args.group)
        if args.format == "json":
            emit_json({"secrets": found})
            return EXIT_OK
        rows = [
            (s.group, s.name, str(s.version), s.updated_by or "-", moment(s.updated_at))
            for s in found
        ]
        print(table(["GROUP", "NAME", "VERSION", "SET BY", "SET AT (UTC)"], rows))
        return EXIT_OK

    return remote(args, work)


def run_delete(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        await SecretsClient(runs.api).delete(args.name, args.group)
        if args.format != "json":
            print(f"secret {args.name} deleted from {args.group}", file=sys.stderr)
        return EXIT_OK

    return remote(args, work)


def run_rotate(args: argparse.Namespace) -> int:
    async def work(settings: Settings, database: Database) -> int:
        return await _rotate(args, settings, database)

    result: int = run_with_database(args, work)
    return result


async def _rotate(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    from runsvc.infra.sealing import (
        DEFAULT_KEY_FILE,
        KeyRingError,
        key_id,
        load_ring,
        new_key,
        parse_keys,
        write_key_file,
    )
    from runsvc.service.secrets import check_ring, reseal, unused_keys

    key_file: Path | None = args.key_file or settings.secrets_key_file
    in_variable = bool(settings.secrets_key) and args.key_file is None
    if key_file is None and not in_variable:
        key_file = settings.data_dir / DEFAULT_KEY_FILE
    if in_variable and not args.reseal_only:
        print(
            "runsvc: the keys are in RUNSVC_SECRETS_KEY, which this command cannot change: "
            "put a new key first there for every process, then run "
            "`runsvc secrets rotate-key --reseal-only` (docs/secrets.md)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        ring = load_ring(
            key=settings.secrets_key if in_variable else None,
            key_file=key_file,
            data_dir=settings.data_dir,
        )
        # Never rotate away from keys that do not open what is there.
        await check_ring(database.pool, ring)
    except KeyRingError as exc:
        print(f"runsvc: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not args.reseal_only:
        assert key_file is not None
        fresh = new_key()
        write_key_file(key_file, [fresh, *parse_keys(key_file.read_text(), source=str(key_file))])
        ring.reread(force=True)
        print(f"new key {key_id(fresh)} put first in {key_file}", file=sys.stderr)
    count = await reseal(database.pool, ring)
    print(f"{count} secrets sealed again under key {ring.newest}")
    if args.drop_old and key_file is not None:
        unused = await unused_keys(database.pool, ring)
        keys = parse_keys(key_file.read_text(), source=str(key_file))
        write_key_file(key_file, [k for k in keys if key_id(k) not in unused])
        print(f"{len(unused)} old keys dropped from {key_file}", file=sys.stderr)
    return EXIT_OK
