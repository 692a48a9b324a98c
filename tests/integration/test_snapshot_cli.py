"""`runsvc snapshot create|list|restore` as an operator runs them: a separate process
against the real PostgreSQL and SeaweedFS, with JSON output parsed back and exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass

import asyncpg

from eventlog.store import EventStore
from projections import snapshot
from runsvc.infra.objectstore import ObjectStore, ObjectStoreConfig
from tests.workload import generate


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    def json_lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stdout.splitlines()]


async def runsvc(dsn: str, objects: ObjectStoreConfig, *args: str) -> Outcome:
    env = {
        **os.environ,
        "RUNSVC_S3_BUCKET": objects.bucket,
        "RUNSVC_S3_ACCESS_KEY": objects.access_key,
        "RUNSVC_S3_SECRET_KEY": objects.secret_key,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runsvc",
        "snapshot",
        *args,
        "--database-url",
        dsn,
        "--s3-endpoint",
        objects.endpoint,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return Outcome(process.returncode, out.decode(), err.decode())


async def index_rows(pool: asyncpg.Pool) -> list[tuple[object, ...]]:
    return [tuple(r) for r in await pool.fetch("SELECT * FROM runs_index ORDER BY run_id")]


async def test_create_list_and_restore_bring_the_index_back(
    store: EventStore,
    database_dsn: str,
    object_store_config: ObjectStoreConfig,
    object_store: ObjectStore,
) -> None:
    """`create` catches the index up and dumps it; `list` shows it as the latest; after
    more runs and a wiped index, `restore KEY` loads the dump and replays the events
    after it, so the index equals what it was, and reports how many it replayed."""
    await generate(store, 40, seed=31)
    created = await runsvc(database_dsn, object_store_config, "create", "--format", "json")
    assert created.code == 0, created.stderr
    info = created.json_lines()[0]
    assert info["rows"] == 40
    assert info["position"] == await store.head()

    listed = await runsvc(database_dsn, object_store_config, "list", "--format", "json")
    assert listed.code == 0, listed.stderr
    assert [(d["key"], d["latest"]) for d in listed.json_lines()] == [(info["key"], True)]

    await generate(store, 10, seed=32, prefix="late")
    again = await runsvc(database_dsn, object_store_config, "create", "--format", "json")
    original = await index_rows(store.pool)
    assert len(original) == 50
    assert again.json_lines()[0]["rows"] == 50

    await store.pool.execute("TRUNCATE runs_index")
    restored = await runsvc(
        database_dsn, object_store_config, "restore", str(info["key"]), "--format", "json"
    )
    assert restored.code == 0, restored.stderr
    outcome = restored.json_lines()[0]
    assert outcome["position"] == info["position"]
    assert outcome["replayed_events"] > 0
    assert await index_rows(store.pool) == original


async def test_restore_refuses_a_corrupt_dump_and_names_a_missing_one(
    store: EventStore,
    database_dsn: str,
    object_store_config: ObjectStoreConfig,
    object_store: ObjectStore,
) -> None:
    """A truncated dump is refused with exit code 3 and the index is untouched; an
    unknown key is exit code 4 with a message pointing at `snapshot list`; neither prints
    a traceback."""
    await generate(store, 20, seed=33)
    created = await runsvc(database_dsn, object_store_config, "create", "--format", "json")
    key = str(created.json_lines()[0]["key"])
    before = await index_rows(store.pool)
    whole = await object_store.get(key)
    truncated = key.replace("-", "-9", 1)
    await object_store.put(truncated, whole[: len(whole) // 2])

    refused = await runsvc(database_dsn, object_store_config, "restore", truncated)
    assert refused.code == 3
    assert "dump refused, nothing changed" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert await index_rows(store.pool) == before

    missing = await runsvc(database_dsn, object_store_config, "restore", "snapshots/index/nope")
    assert missing.code == 4
    assert "snapshot list" in missing.stderr
    assert "Traceback" not in missing.stderr

    # Without a key the newest dump that reads back whole wins over the truncated one.
    newest = await runsvc(database_dsn, object_store_config, "restore", "--format", "json")
    assert newest.code == 0, newest.stderr
    assert newest.json_lines()[0]["key"] == key
    assert await snapshot.latest_pointer(object_store) is not None
    assert await index_rows(store.pool) == before
