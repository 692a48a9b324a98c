"""Projection benchmark: rebuild throughput against the log's own read_all throughput, and
the index dump to object storage (size, time, peak memory), on a generated log.

    .venv/bin/python scripts/bench/projections.py [--runs 200000]   # --runs 1000000: full

Starts its own durable embedded PostgreSQL and SeaweedFS in a temporary directory. Each
generated run has 10 events (created, running, two tasks scheduled/running/succeeded,
result, finished). Dump and restore run in child processes so their peak RSS is their own;
sizes and RSS are scaled to a million runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

sys.path[0] = str(Path(__file__).resolve().parents[2])
sys.path.append(str(Path(__file__).resolve().parent))

import asyncpg
from _report import emit, note

from eventlog.postgres import create_pool, migrate
from eventlog.records import Metadata
from eventlog.store import NO_STREAM, EventStore
from projections.rebuild import rebuild_all
from projections.registry import all_projections
from projections.runner import ensure_tables
from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.events import (
    SYSTEM,
    Event,
    RunCreated,
    RunPhaseChanged,
    RunResultChanged,
    TaskStatusChanged,
)
from runsvc.infra.postgres import EmbeddedPostgres
from runsvc.service.schema import MIGRATION_SETS

if TYPE_CHECKING:
    from runsvc.infra.seaweed import EmbeddedSeaweed

T0 = datetime(2026, 1, 1, tzinfo=UTC)
META = Metadata(actor=SYSTEM, recorded_at=T0)
CONFIG = RunConfig(
    tasks=[
        TaskConfig(name="build", run="make"),
        TaskConfig(name="test", run="make test", depends=["build"]),
    ]
)
GROUPS = [f"/org{o}/project{p}/{b}" for o in range(20) for p in range(10) for b in ("main", "dev")]


def history(index: int, rng: random.Random) -> list[Event]:
    at = T0 + timedelta(seconds=index)
    run_id = f"R{index:010d}"
    events: list[Event] = [
        RunCreated(
            run_id=run_id,
            group=rng.choice(GROUPS),
            name="ci",
            counter=index + 1,
            config=CONFIG,
            created_at=at,
            annotations={"commit": f"{rng.getrandbits(40):010x}"},
        ),
        RunPhaseChanged(phase="running", at=at),
    ]
    for task in ("build", "test"):
        events += [
            TaskStatusChanged(task=task, status="scheduled", attempt=1, at=at),
            TaskStatusChanged(task=task, status="running", attempt=1, at=at, executor="e1"),
            TaskStatusChanged(task=task, status="success", attempt=1, at=at, exit_code=0),
        ]
    result = "success" if rng.random() < 0.8 else "failed"
    events += [RunResultChanged(result=result, at=at), RunPhaseChanged(phase="finished", at=at)]
    return events


async def generate(store: EventStore, runs: int) -> None:
    rng = random.Random(1)
    next_run = 0
    started = time.perf_counter()

    async def writer() -> None:
        nonlocal next_run
        while next_run < runs:
            index = next_run
            next_run += 1
            events = history(index, rng)
            group = events[0].group  # type: ignore[attr-defined]
            await store.append(f"run-R{index:010d}", events, NO_STREAM, meta=META, scope=group)
            if index % 50_000 == 0 and index:
                note(f"  {index:,} runs written ({time.perf_counter() - started:.0f}s)")

    await asyncio.gather(*(writer() for _ in range(64)))


async def bench(args: argparse.Namespace, root: Path) -> None:
    server = EmbeddedPostgres(root / "pg")
    server_dsn = await asyncio.to_thread(server.start)
    try:
        connection = await asyncpg.connect(server_dsn)
        await migrate(connection, MIGRATION_SETS)
        for projection in all_projections():
            await ensure_tables(connection, projection)
        await connection.close()
        pool = await create_pool(server_dsn, max_size=16)
        store = EventStore(pool, dsn=server_dsn)
        await store.start()
        note(f"generating {args.runs:,} runs")
        await generate(store, args.runs)
        # A log at rest, as autovacuum leaves it: hint bits set and statistics current, so
        # neither measure pays the first scan's one-off page writes.
        await pool.execute("VACUUM ANALYZE events")
        head = await store.head()

        after, count = 0, 0
        started = time.perf_counter()
        while after < head:
            page = await store.read_all(after=after, limit=20_000)
            count += len(page.events)
            after = page.next_after
        read_rate = count / (time.perf_counter() - started)
        note(f"read_all: {count:,} events at {read_rate:,.0f}/s")

        started = time.perf_counter()
        await rebuild_all(store, server_dsn, all_projections())
        elapsed = time.perf_counter() - started
        note(f"rebuilt {', '.join(p.name for p in all_projections())} in {elapsed:.1f}s")
        rebuild_rate = head / elapsed
        emit(
            "rebuild_events_per_s",
            rebuild_rate,
            "events/s",
            baseline=read_rate,
            target="ratio>=0.3 and value>=100000",
        )
        await store.close()
        await pool.close()
        if not args.skip_dump:
            await bench_dump(server_dsn, root, args.runs)
    finally:
        await asyncio.to_thread(server.stop)


async def bench_dump(dsn: str, root: Path, runs: int) -> None:
    from runsvc.infra.seaweed import EmbeddedSeaweed

    seaweed = EmbeddedSeaweed(root / "s3")
    await asyncio.to_thread(seaweed.start)
    try:
        scale = 1_000_000 / runs
        dump = child("dump", dsn, seaweed)
        restore = child("restore", dsn, seaweed)
        note(f"dump: {dump}; restore: {restore}")
        emit("index_dump_mb_per_million_runs", dump["size"] / 1e6 * scale, "MB", target="value<=40")
        emit("index_dump_s", dump["seconds"] * scale, "s per million runs")
        emit("index_restore_s", restore["seconds"] * scale, "s per million runs")
        emit(
            "index_dump_peak_rss_mb",
            scaled_rss(dump["rss_mb"], dump["idle_rss_mb"], scale),
            "MB",
            target="value<=300",
        )
        emit(
            "index_restore_peak_rss_mb",
            scaled_rss(restore["rss_mb"], restore["idle_rss_mb"], scale),
            "MB",
            target="value<=300",
        )
    finally:
        await asyncio.to_thread(seaweed.stop)


def scaled_rss(peak: float, idle: float, scale: float) -> float:
    """The process's baseline (interpreter and libraries) plus its growth while dumping,
    the growth scaled to a million runs (it stays flat when the work streams)."""
    return idle + (peak - idle) * scale


def child(kind: str, dsn: str, seaweed: EmbeddedSeaweed) -> dict[str, float]:
    # The keys go in the environment: every user on the machine can read a command line.
    keys = {
        "RUNSVC_S3_ACCESS_KEY": seaweed.credentials.access_key,
        "RUNSVC_S3_SECRET_KEY": seaweed.credentials.secret_key,
    }
    result = subprocess.run(
        [sys.executable, __file__, "--child", kind, dsn, seaweed.endpoint],
        env={**os.environ, **keys},
        capture_output=True,
        text=True,
        check=True,
    )
    parsed: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


async def child_main(kind: str, dsn: str, endpoint: str) -> None:
    from projections import snapshot
    from runsvc.infra.objectstore import ObjectStore, ObjectStoreConfig

    # The interpreter with everything imported: what any process doing this would need.
    idle = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    pool = await create_pool(dsn, max_size=2)
    config = ObjectStoreConfig(
        endpoint=endpoint,
        bucket="bench",
        access_key=os.environ["RUNSVC_S3_ACCESS_KEY"],
        secret_key=os.environ["RUNSVC_S3_SECRET_KEY"],
    )
    async with ObjectStore.connect(config) as objects:
        await objects.ensure_bucket()
        started = time.perf_counter()
        if kind == "dump":
            info = await snapshot.create_dump(pool, objects)
            size = info.size
        else:
            pointer = await snapshot.latest_pointer(objects)
            assert pointer is not None
            await snapshot.restore_dump(pool, objects, pointer.key)
            size = pointer.size
        seconds = time.perf_counter() - started
    await pool.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "size": size, "rss_mb": peak, "idle_rss_mb": idle}))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        asyncio.run(child_main(*sys.argv[2:5]))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--skip-dump", action="store_true", help="rebuild measures only")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-") as directory:
        asyncio.run(bench(arguments, Path(directory)))
