"""`runsvc webhooks create FILE | list | show ID | deliveries ID | resume ID | delete ID`.

The create file is YAML or JSON with the create request's fields (url, types, group,
after). The signing secret is best kept out of it: `--secret-file PATH` (`-` for stdin)
or the environment variable RUNSVC_WEBHOOK_SECRET; a `secret` in the file is the last
resort. It is never taken as an argument value (those end up in shell histories and
process lists)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from runsvc.cli.connection import EXIT_OK, UsageError, add_connection_options, remote
from runsvc.cli.documents import Document, DocumentError
from runsvc.cli.output import emit_json, moment, table
from runsvc.client import RunsClient, WebhooksClient
from runsvc.wire.webhooks import CreateWebhookRequest, Webhook

SECRET_VARIABLE = "RUNSVC_WEBHOOK_SECRET"
RAW = argparse.RawDescriptionHelpFormatter


def register(commands: Any) -> None:
    group = commands.add_parser(
        "webhooks",
        help="POST events to a URL as they happen",
        description="Create, list and manage webhooks (see docs/webhooks.md).",
        epilog="examples:\n  RUNSVC_WEBHOOK_SECRET=$(cat hook.secret) runsvc webhooks create "
        "hook.yaml\n  runsvc webhooks deliveries wh_0123456789abcdef",
        formatter_class=RAW,
    )
    actions = group.add_subparsers(dest="webhooks_command", metavar="COMMAND", required=True)
    create = _command(
        actions,
        "create",
        "create a webhook from a YAML or JSON file",
        "runsvc webhooks create hook.yaml --secret-file hook.secret",
    )
    create.add_argument("file", type=Path, help="url, types, group (default /), after")
    create.add_argument(
        "--secret-file",
        metavar="PATH",
        help=f"the signing secret's file ('-': stdin); else env {SECRET_VARIABLE}, else the file's",
    )
    create.set_defaults(handler=run_create)
    listing = _command(actions, "list", "every webhook", "runsvc webhooks list --format json")
    listing.set_defaults(handler=run_list)
    for name, summary in (
        ("show", "one webhook: state, checkpoint, lag, last error"),
        ("resume", "resume a failing webhook from the event it could not deliver"),
        ("delete", "delete a webhook"),
        ("deliveries", "a webhook's recent delivery attempts, newest first"),
    ):
        action = _command(actions, name, summary, f"runsvc webhooks {name} wh_0123456789abcdef")
        action.add_argument("webhook_id", metavar="ID")
        if name == "deliveries":
            action.add_argument("--limit", type=int, default=50)
        action.set_defaults(handler=run_action, action=name)


def _command(actions: Any, name: str, summary: str, example: str) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = actions.add_parser(
        name,
        help=summary,
        description=summary,
        epilog=f"example:\n  {example}",
        formatter_class=RAW,
    )
    add_connection_options(parser)
    return parser


def read_request(path: Path, secret_file: str | None) -> CreateWebhookRequest:
    """The create request from the file, with the secret from --secret-file, the
    environment or the file, in that order."""
    document = Document.read(path)
    data = document.data
    if not isinstance(data, dict):
        raise DocumentError(document.where(""), "expected a mapping at the top")
    secret: str | None = None
    if secret_file == "-":
        secret = sys.stdin.readline().strip()
    elif secret_file is not None:
        try:
            secret = Path(secret_file).read_text().strip()
        except OSError as exc:
            raise UsageError(f"--secret-file {secret_file}: {exc.strerror}") from exc
    else:
        secret = os.environ.get(SECRET_VARIABLE) or None
    if secret is not None:
        data["secret"] = secret
    elif "secret" not in data:
        raise UsageError(
            f"no signing secret: give --secret-file, set {SECRET_VARIABLE}, or put it in the file"
        )
    return document.decode(CreateWebhookRequest)


def _show(hook: Webhook) -> str:
    lines = [
        f"webhook {hook.id}  {hook.url}",
        f"group {hook.group}, types {', '.join(hook.types)}",
        f"state {hook.state}, delivered up to position {hook.position}, "
        f"{hook.lag.events} positions ({hook.lag.seconds:.1f}s) behind",
        f"created {moment(hook.created_at)} by {hook.created_by}; "
        f"last delivery {moment(hook.last_delivered_at)}",
    ]
    if hook.last_error is not None:
        lines.append(f"last error: {hook.last_error}")
    if hook.failing_since is not None:
        lines.append(f"failing since {moment(hook.failing_since)} ({hook.attempts} attempts)")
    if hook.lease is not None:
        lines.append(f"delivered by {hook.lease.owner}")
    return "\n".join(lines)


def run_create(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        request = read_request(args.file, args.secret_file)
        hook = await WebhooksClient(runs.api).create(request)
        if args.format == "json":
            emit_json(hook)
        else:
            print(_show(hook))
        return EXIT_OK

    return remote(args, work)


def run_list(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        hooks = await WebhooksClient(runs.api).list()
        if args.format == "json":
            emit_json({"webhooks": hooks})
            return EXIT_OK
        rows = [
            (h.id, h.state, h.group, ",".join(h.types), h.position, h.lag.events, h.url)
            for h in hooks
        ]
        print(table(["ID", "STATE", "GROUP", "TYPES", "POSITION", "LAG", "URL"], rows))
        return EXIT_OK

    return remote(args, work)


def run_action(args: argparse.Namespace) -> int:
    async def work(runs: RunsClient) -> int:
        client = WebhooksClient(runs.api)
        if args.action == "delete":
            await client.delete(args.webhook_id)
            if args.format == "table":
                print(f"deleted {args.webhook_id}")
            return EXIT_OK
        if args.action == "deliveries":
            found = await client.deliveries(args.webhook_id, args.limit)
            if args.format == "json":
                emit_json({"deliveries": found})
                return EXIT_OK
            rows = [
                (
                    moment(d.at),
                    d.position,
                    d.event_type,
                    d.attempt,
                    d.outcome,
                    d.status_code if d.status_code is not None else "-",
                    f"{d.latency_ms:.0f}ms",
                    d.error or "",
                )
                for d in found
            ]
            headers = ["AT", "POSITION", "EVENT", "ATTEMPT", "OUTCOME", "STATUS", "TOOK", "ERROR"]
            print(table(headers, rows))
            return EXIT_OK
        hook = await (client.resume if args.action == "resume" else client.get)(args.webhook_id)
        if args.format == "json":
            emit_json(hook)
        else:
            print(_show(hook))
        return EXIT_OK

    return remote(args, work)
