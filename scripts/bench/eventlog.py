"""Event log benchmark: append throughput (batched, concurrent, two processes), read_all
throughput and subscription delivery latency, against baselines measured in the same run
on the same embedded PostgreSQL with raw asyncpg.

    .venv/bin/python scripts/bench/eventlog.py [--events N]

Starts its own durable embedded PostgreSQL in a temporary directory (default settings,
fsync on) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# This script's own name would shadow the `eventlog` package: put the repository first and
# the benchmark folder (for `_report`) last.
sys.path[0] = str(ROOT)
sys.path.append(str(Path(__file__).resolve().parent))

import asyncpg
from _report import emit, note

from eventlog.hashchain import GENESIS, chain_hash
from eventlog.postgres import EVENTLOG_MIGRATIONS, create_pool, migrate
from eventlog.records import Metadata, encode_metadata, new_event_id
from eventlog.store import NO_STREAM, EventStore
from runsvc.domain.events import SYSTEM, TaskStatusChanged, encode_event
from runsvc.infra.postgres import EmbeddedPostgres

META = Metadata(actor=SYSTEM, recorded_at=datetime(2026, 1, 1, tzinfo=UTC))


def sample_event(i: int, at: datetime | None = None) -> TaskStatusChanged:
    return TaskStatusChanged(
        task=f"task-{i % 97}",
        status="running",
        attempt=1,
        at=at or datetime(2026, 1, 1, tzinfo=UTC),
        executor="exec-1",
    )


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def fresh_database(server_dsn: str, name: str) -> str:
    admin = await asyncpg.connect(server_dsn)
    await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await admin.execute(f"CREATE DATABASE {name}")
    await admin.close()
    dsn = server_dsn.replace("/postgres?", f"/{name}?")
    connection = await asyncpg.connect(dsn)
    await migrate(connection, [EVENTLOG_MIGRATIONS])
    # The baseline's table: same columns and indexes as `events`, written by raw asyncpg.
    await connection.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
    await connection.close()
    return dsn


def raw_rows(count: int, offset: int, stream: str) -> list[tuple[object, ...]]:
    rows = []
    previous = GENESIS
    data = encode_event(sample_event(0))
    meta = encode_metadata(META)
    for i in range(count):
        event_id = new_event_id()
        previous = chain_hash(
            previous,
            event_id=event_id,
            stream=stream,
            version=i + 1,
            type_="task_status_changed",
            data=data,
            meta=meta,
        )
        rows.append(
            (offset + i, stream, i + 1, event_id, "task_status_changed", data, meta, previous, None)
        )
    return rows


async def bench_batched(dsn: str, batches: int) -> None:
    pool = await create_pool(dsn, max_size=4)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    events = [sample_event(i) for i in range(1000)]
    started = time.perf_counter()
    for b in range(batches):
        await store.append(f"batched-{b}", events, NO_STREAM, meta=META)
    store_rate = batches * 1000 / (time.perf_counter() - started)
    await store.close()

    # Baseline: the same rows (hashes precomputed, outside the clock) copied in with one
    # COPY per 1,000 rows, each in its own transaction.
    prepared = [raw_rows(1000, 1 + b * 1000, f"raw-{b}") for b in range(batches)]
    async with pool.acquire() as connection:
        started = time.perf_counter()
        for rows in prepared:
            async with connection.transaction():
                await connection.copy_records_to_table("raw_events", records=rows)
        raw_rate = batches * 1000 / (time.perf_counter() - started)
    await pool.close()
    emit(
        "append_batched_events_per_s",
        store_rate,
        "events/s",
        baseline=raw_rate,
        target="ratio>=0.5",
    )


async def bench_concurrent16(dsn: str, per_caller: int) -> None:
    pool = await create_pool(dsn, max_size=20)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    latencies: list[float] = []

    async def caller(index: int) -> None:
        for version in range(per_caller):
            t = time.perf_counter()
            await store.append(f"c16-{index}", [sample_event(version)], version, meta=META)
            latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(caller(i) for i in range(16)))
    store_rate = 16 * per_caller / (time.perf_counter() - started)
    batches = store.appender.batches_written
    await store.close()
    note(f"concurrent16: {16 * per_caller} events in {batches} transactions")

    data = encode_event(sample_event(0))
    meta = encode_metadata(META)
    counter = iter(range(10_000_000, 20_000_000))

    async def raw_caller(index: int) -> None:
        async with pool.acquire() as connection:
            for version in range(per_caller):
                await connection.execute(
                    "INSERT INTO raw_events (position, stream, version, event_id, type, data, "
                    "meta, hash, scope) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)",
                    next(counter),
                    f"raw16-{index}",
                    version + 1,
                    new_event_id(),
                    "task_status_changed",
                    data,
                    meta,
                    b"h" * 32,
                )

    started = time.perf_counter()
    await asyncio.gather(*(raw_caller(i) for i in range(16)))
    raw_rate = 16 * per_caller / (time.perf_counter() - started)
    await pool.close()
    emit(
        "append_concurrent16_events_per_s",
        store_rate,
        "events/s",
        baseline=raw_rate,
        target="ratio>=1.0",
    )
    emit("append_concurrent16_p50_ms", percentile(latencies, 0.5) * 1000, "ms")
    emit("append_concurrent16_p99_ms", percentile(latencies, 0.99) * 1000, "ms")


async def bench_read_all(dsn: str) -> None:
    pool = await create_pool(dsn, max_size=4)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    head = await store.head()
    count = 0
    after = 0
    started = time.perf_counter()
    while after < head:
        page = await store.read_all(after=after, limit=5000)
        count += len(page.events)
        after = page.next_after
    rate = count / (time.perf_counter() - started)
    await store.close()
    await pool.close()
    note(f"read_all: scanned {count} events")
    emit("read_all_events_per_s", rate, "events/s", target="value>=200000")


async def bench_subscribe(dsn: str, seconds: float, rate: int) -> None:
    pool = await create_pool(dsn, max_size=4)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    start_after = await store.head()
    expected = int(seconds * rate)
    writer = subprocess.Popen(
        [sys.executable, __file__, "--worker", "paced", dsn, str(seconds), str(rate)],
        stdout=subprocess.PIPE,
    )
    delays: list[float] = []
    async with asyncio.timeout(seconds * 4 + 30):
        async for recorded in store.subscribe(after=start_after):
            if not recorded.stream.startswith("paced-"):
                continue
            event = recorded.event
            assert isinstance(event, TaskStatusChanged)
            delays.append(time.time() - event.at.timestamp())
            if len(delays) == expected:
                break
    writer.wait()
    await store.close()
    await pool.close()
    emit("subscribe_delivery_p50_ms", percentile(delays, 0.5) * 1000, "ms")
    emit("subscribe_delivery_p99_ms", percentile(delays, 0.99) * 1000, "ms", target="value<=50")


async def paced_writer(dsn: str, seconds: float, rate: int) -> None:
    """Appends `rate` events/s from many small callers, each stamped with its submit time."""
    pool = await create_pool(dsn, max_size=8)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    tick = 0.01
    per_tick = max(1, int(rate * tick))
    ticks = int(seconds / tick)
    pending: set[asyncio.Task[list[int]]] = set()
    loop = asyncio.get_running_loop()
    begin = loop.time()
    for t in range(ticks):
        await asyncio.sleep(max(0.0, begin + t * tick - loop.time()))
        for i in range(per_tick):
            now = datetime.now(UTC)
            task = asyncio.create_task(
                store.append(f"paced-{t}-{i}", [sample_event(i, now)], NO_STREAM, meta=META)
            )
            pending.add(task)
            task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await store.close()
    await pool.close()


async def concurrent_worker(dsn: str, callers: int, per_caller: int, start_at: float) -> None:
    pool = await create_pool(dsn, max_size=callers + 2)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    prefix = f"c32-{os.getpid()}"
    await asyncio.sleep(max(0.0, start_at - time.time()))
    began = time.time()

    async def caller(index: int) -> None:
        for version in range(per_caller):
            await store.append(f"{prefix}-{index}", [sample_event(version)], version, meta=META)

    await asyncio.gather(*(caller(i) for i in range(callers)))
    ended = time.time()
    await store.close()
    await pool.close()
    print(json.dumps({"began": began, "ended": ended, "events": callers * per_caller}))


def bench_concurrent32(dsn: str, per_caller: int) -> None:
    start_at = time.time() + 3.0
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--worker",
                "c32",
                dsn,
                "16",
                str(per_caller),
                str(start_at),
            ],
            stdout=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        results.append(json.loads(out.decode().strip().splitlines()[-1]))
    began = min(r["began"] for r in results)
    ended = max(r["ended"] for r in results)
    total = sum(r["events"] for r in results)
    emit(
        "append_concurrent32_events_per_s",
        total / (ended - began),
        "events/s",
        target="value>=15000",
    )


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-") as tmp:
        server = EmbeddedPostgres(Path(tmp))
        server_dsn = await asyncio.to_thread(server.start)
        note(f"embedded postgresql at {server_dsn}")
        try:
            dsn = await fresh_database(server_dsn, "bench_eventlog")
            note("append: batched")
            await bench_batched(dsn, batches=args.batches)
            note("append: 16 concurrent callers")
            await bench_concurrent16(dsn, per_caller=args.per_caller)
            note("append: 32 callers over two processes")
            bench_concurrent32(dsn, per_caller=args.per_caller)
            note("read_all: full scan")
            await bench_read_all(dsn)
            note("subscribe: delivery latency at 5,000 events/s")
            await bench_subscribe(dsn, seconds=args.seconds, rate=5000)
        finally:
            await asyncio.to_thread(server.stop)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        kind, dsn, *rest = sys.argv[2:]
        if kind == "paced":
            asyncio.run(paced_writer(dsn, float(rest[0]), int(rest[1])))
        else:
            asyncio.run(concurrent_worker(dsn, int(rest[0]), int(rest[1]), float(rest[2])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=200, help="1,000-event appends")
    parser.add_argument("--per-caller", type=int, default=1500, help="appends per caller")
    parser.add_argument("--seconds", type=float, default=10.0, help="subscribe load duration")
    asyncio.run(main(parser.parse_args()))
