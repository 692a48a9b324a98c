"""End to end, a real `runsvc serve` and a real executor: a secret printed by its task in
every way a task might (plain, base64, URL-encoded, across a log chunk's boundary, cut
between two reads of the output) is `***` in the stored log, and its value, in any of
those forms, is nowhere else: not in any row of any table of the database (bytea read as
hex and as escapes), not in any object of the bucket (logs, artifacts, an index dump),
not in the event log, not in any answer the API gave, not in the websocket stream, not
in any file the server or the executor wrote (their own logs included)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aiohttp
import asyncpg
import zstandard

from runsvc.infra.objectstore import ObjectStore
from tests.e2e.test_execution import finished
from tests.fixtures.processes import ROOT, Cluster, free_port

# Printed by the task: plain, in base64, URL-encoded, straddling the first 64 KiB log
# chunk, and cut in two between two writes with a pause, so two reads of the output.
SCRIPT = f"""
printf 'plain %s\\n' "$T"
printf 'b64 %s\\n' "$(printf '%s' "$T" | base64 | tr -d '\\n')"
{sys.executable} -c '
import os, urllib.parse; print("url", urllib.parse.quote(os.environ["T"], safe=""))'
head -c 65530 /dev/zero | tr '\\0' a; printf '%s\\n' "$T"
printf 'cut %s' "$(printf '%s' "$T" | head -c 7)"; sleep 0.3
printf '%s\\n' "$(printf '%s' "$T" | tail -c +8)"
echo "a report without the secret" > report.txt
"""


def forms(value: str) -> dict[str, str]:
    data = value.encode()
    return {
        "plain": value,
        "base64": base64.b64encode(data).decode(),
        "base64 unpadded": base64.b64encode(data).decode().rstrip("="),
        "base64 url-safe": base64.urlsafe_b64encode(data).decode().rstrip("="),
        "url-encoded": quote(value, safe=""),
        "url-encoded plus": quote_plus(value, safe=""),
        "hex": data.hex(),
        # An output file's refused line is quoted up to 40 characters in the error.
        "a part of it": value[:24],
    }


class Recorder:
    """Every answer the test got from the API, as text."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.answers: list[str] = []

    async def __call__(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(headers=self.cluster.headers()) as session,
            session.request(method, self.cluster.url + path, **kwargs) as response,
        ):
            raw = await response.read()
            self.answers.append(raw.decode(errors="replace"))
            if response.content_type == "application/json":
                return response.status, json.loads(raw)
            return response.status, raw


def found_in(text: str, value: str) -> list[str]:
    return [name for name, form in forms(value).items() if form in text]


async def database_text(dsn: str) -> str:
    """Every row of every table of every schema, as text, once with bytea as hex and
    once as escapes."""
    connection = await asyncpg.connect(dsn)
    try:
        tables = await connection.fetch(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_type = 'BASE TABLE' "
            "AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        )
        assert {"events", "secrets", "secrets_canary", "leases", "log_chunks"} <= {
            t["table_name"] for t in tables
        }
        dumped: list[str] = []
        for output in ("hex", "escape"):
            await connection.execute(f"SET bytea_output = {output}")
            for table in tables:
                name = f'"{table["table_schema"]}"."{table["table_name"]}"'
                rows = await connection.fetch(f"SELECT t::text AS row FROM {name} t")
                dumped.extend(f"{table['table_name']}: {row['row']}" for row in rows)
        return "\n".join(dumped)
    finally:
        await connection.close()


async def bucket_text(objects: ObjectStore) -> tuple[list[str], str]:
    """Every object's key and bytes (an index dump decompressed too)."""
    keys = [info.key async for info in objects.list("")]
    texts = []
    for key in keys:
        data = await objects.get(key)
        texts.append(data.decode(errors="replace"))
        if key.endswith(".zst"):
            reader = zstandard.ZstdDecompressor().stream_reader(data)
            texts.append(reader.read().decode(errors="replace"))
    return keys, "\n".join(texts)


async def websocket_text(cluster: Cluster, run_id: str, count: int) -> str:
    """The run's events as a websocket subscriber gets them (from storage: the run is
    over), `count` of them."""
    received = []
    async with (
        aiohttp.ClientSession(headers=cluster.headers()) as session,
        session.ws_connect(f"{cluster.url}/api/v1/events/ws?run={run_id}") as ws,
        asyncio.timeout(60),
    ):
        while len(received) < count:
            received.append(await ws.receive_str())
    return "\n".join(received)


async def test_a_secret_is_nowhere_but_in_its_attempt(
    cluster: Cluster, object_store: ObjectStore
) -> None:
    """See the module's docstring. The log shows *** wherever the task printed it; the
    start records the secret's name and version; an attempt that writes the value to its
    outputs fails naming the output."""
    value = f"e2e-{secrets.token_urlsafe(24)}/+=&?"
    api = Recorder(cluster)
    status, _ = await api(
        "PUT", "/api/v1/secrets/E2E_TOKEN", json={"value": value, "group": "/e2e"}
    )
    assert status == 204
    cluster.start_executor("e1", concurrency=2)
    config = {
        "tasks": [
            {
                "name": "prints",
                "env": {"T": "${{ secrets.E2E_TOKEN }}"},
                "run": SCRIPT,
                "artifacts": ["report.txt"],
            },
            {
                "name": "outputs",
                "env": {"T": "Bearer ${{ secrets.E2E_TOKEN }}"},
                "run": 'echo "leak=x$T" >> "$RUNSVC_OUTPUT"',
            },
            {
                "name": "bad-outputs",
                "env": {"T": "${{ secrets.E2E_TOKEN }}"},
                "run": 'printf "%s\\n" "$T" >> "$RUNSVC_OUTPUT"',
            },
            {"name": "after", "depends": ["prints"], "run": "echo after"},
        ]
    }
    body = {"group": "/e2e/project", "name": "secrets", "config": config}
    status, run = await api("POST", "/api/v1/runs", json=body)
    assert status == 201, run
    view = await finished(cluster, run["id"])
    prints, outputs = view["tasks"]["prints"], view["tasks"]["outputs"]
    assert prints["status"] == "success", prints
    assert view["tasks"]["after"]["status"] == "success"
    assert outputs["status"] == "failed"
    assert "output leak holds a secret's value" in outputs["error"]
    assert view["tasks"]["bad-outputs"]["error"] == (
        "$RUNSVC_OUTPUT line 1: refused (its text is not quoted: the attempt was given secrets)"
    )

    status, log = await api("GET", f"/api/v1/tasks/{prints['id']}/logs")
    assert status == 200
    text = log.decode()
    lines = text.splitlines()
    assert lines[:3] == ["plain ***", "b64 ***", "url ***"]
    assert lines[3] == "a" * 65530 + "***"
    assert lines[4] == "cut ***"

    # The log in the bucket (archived once the attempt ended) and an index dump.
    async with asyncio.timeout(60):
        while True:  # the move to object storage follows the completion closely
            if any(k.startswith(f"logs/{prints['id']}/") for k in await keys_of(object_store)):
                break
            await asyncio.sleep(0.1)
    dumped = subprocess.run(
        [sys.executable, "-m", "runsvc", "snapshot", "create", "--database-url", cluster.dsn],
        cwd=ROOT,
        env=cluster.environment(),
        capture_output=True,
        check=False,
    )
    assert dumped.returncode == 0, dumped.stderr.decode()

    status, events = await api("GET", f"/api/v1/runs/{run['id']}/events")
    assert status == 200
    started = [
        e
        for e in events["events"]
        if e["type"] == "task_status_changed"
        and e["data"]["status"] == "running"
        and e["data"]["task"] == "prints"
    ]
    assert started[0]["data"]["secrets"] == {"E2E_TOKEN": 1}
    assert started[0]["data"]["resolved"]["env"] == {"T": "***"}
    for path in (
        f"/api/v1/runs/{run['id']}",
        f"/api/v1/runs/{run['id']}/state?at_version={len(events['events'])}",
        f"/api/v1/runs/{run['id']}/verify",
        f"/api/v1/tasks/{outputs['id']}/logs",
        f"/api/v1/tasks/{prints['id']}/artifacts",
        "/api/v1/events?limit=1000",
        "/api/v1/runs?group=/e2e/project",
        "/api/v1/secrets",
    ):
        status, _ = await api("GET", path)
        assert status == 200, path
    status, simulated = await api(
        "POST", "/api/v1/simulations", json={"config": config, "group": "/e2e/project"}
    )
    assert simulated["secrets"] == [{"name": "E2E_TOKEN", "exists": True}]

    keys, in_bucket = await bucket_text(object_store)
    assert any(k.startswith("snapshots/index/") for k in keys)
    assert any(k.startswith(f"artifacts/{prints['id']}/") for k in keys)
    places = {
        "the database": await database_text(cluster.dsn),
        "the bucket": in_bucket,
        "the API's answers": "\n".join(api.answers),
        "the websocket": await websocket_text(cluster, run["id"], len(events["events"])),
        "the processes' files": files_text(cluster.root),
    }
    assert "***" in places["the bucket"]  # the archived log
    for place, text in places.items():
        assert not found_in(text, value), f"{found_in(text, value)} of the value in {place}"


async def keys_of(objects: ObjectStore) -> list[str]:
    return [info.key async for info in objects.list("")]


def files_text(root: Path) -> str:
    """Every file under the cluster's directory: the server's and the executor's own
    output, their data directory, the executors' work directories."""
    texts = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = Path(directory) / name
            if path.is_file() and not path.is_symlink():
                texts.append(path.read_bytes().decode(errors="replace"))
    assert any("secret set" in text for text in texts)  # the server's own log is here
    return "\n".join(texts)


def test_a_server_given_another_key_refuses_to_start(cluster: Cluster) -> None:
    """The cluster's server sealed the canary under the data directory's key; a server
    given another key (in RUNSVC_SECRETS_KEY) exits 2 at once, saying which setting and
    that values sealed under another key cannot be read, and never listens."""
    other = base64.b64encode(os.urandom(32)).decode()
    refused = subprocess.run(
        [sys.executable, "-m", "runsvc", "serve", "--port", str(free_port())],
        cwd=ROOT,
        env=cluster.environment(RUNSVC_SECRETS_KEY=other),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    said = refused.stderr.decode()
    assert "runsvc: refusing to start: RUNSVC_SECRETS_KEY does not hold the key" in said
    assert "values sealed under another key cannot be read" in said
    assert "listening" not in said
