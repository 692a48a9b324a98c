"""API benchmark: reading a run over HTTP against a trivial aiohttp handler, creating runs,
and the websocket fan-out of the live log to many subscribers, through a real `runsvc
serve` on embedded PostgreSQL and SeaweedFS.

    .venv/bin/python scripts/bench/api.py [--seconds 10] [--clients 64]
        [--subscribers 1000] [--unfiltered 10] [--rate 500]

The load generator (HTTP clients and websocket subscribers) runs in its own process; this
process starts the servers and, for the fan-out, writes the events straight into the log
through `eventlog.store`, as a second service instance would. The baseline handler
(`_trivial_server.py`) answers with the very bytes the service sent for the run. Server,
load generator and PostgreSQL share the machine's cores, as they do for the baseline.

Fan-out: the writer appends `--rate` events/s for `--seconds` to 100 streams, each with its
own scope `/bench/g<j>/r<k>` in 10 groups, so that a scope filter stands for "one run".
Of the subscribers, `--unfiltered` take every event; of the rest, nine in ten follow one
such run and one in ten a whole group. The default mix is what a deployment watching runs
looks like; `--unfiltered 1000` is the hardest case (every event to every subscriber:
500,000 websocket messages/s at the defaults, more than two cores can send and receive in
Python). Latency is receive time minus the time the writer made the event (carried as
`recorded_at`; both processes read the same clock), so it includes the append's commit.
Missed counts, per subscriber, the events its filter matches that it had not received when
all had arrived or, at the latest, 10 s after the writer stopped (1 s more per 100 events
beyond 1,000).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[0] = str(ROOT)
sys.path.append(str(HERE))

import aiohttp
import asyncpg
import msgspec
from _processes import free_port, service_environment, stop_all, wait_ready
from _report import emit, note

from eventlog.filter import scope_matches
from eventlog.postgres import create_pool
from eventlog.records import Metadata
from eventlog.store import NO_STREAM, EventStore
from runsvc.domain.events import SYSTEM, TaskStatusChanged
from runsvc.infra.postgres import EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.service.auth import create_token

GROUPS, RUNS = 10, 100
WARMUP_S = 1.0
SMALL_RUN = {
    "group": "/bench/api",
    "name": "api",
    "config": {
        "tasks": [
            {"name": "build", "command": ["make"]},
            {"name": "test", "command": ["make", "test"], "depends": ["build"]},
            {"name": "deploy", "command": ["make", "deploy"], "depends": ["test"]},
        ]
    },
}


def percentile(values: array[float] | list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """How busy each named process was over a span, in cores (1.0 = one core all along):
    says which side of a measurement was saturated."""

    def __init__(self, **pids: int) -> None:
        self.pids = pids
        self.started = time.perf_counter()
        self.used = {name: cpu_seconds(pid) for name, pid in pids.items()}

    def __str__(self) -> str:
        wall = time.perf_counter() - self.started
        shares = {n: (cpu_seconds(p) - self.used[n]) / wall for n, p in self.pids.items()}
        return "CPU in cores: " + ", ".join(f"{n} {v:.2f}" for n, v in shares.items())


def run_scope(k: int) -> str:
    return f"/bench/g{k % GROUPS}/r{k}"


def subscriber_scopes(subscribers: int, unfiltered: int) -> list[str | None]:
    """The scope each subscriber follows (None: everything): `unfiltered` of them take
    every event, then nine in ten follow one run's scope and one in ten a group's."""
    scopes: list[str | None] = [None] * min(unfiltered, subscribers)
    for i in range(subscribers - len(scopes)):
        scopes.append(f"/bench/g{i % GROUPS}" if i % 10 == 9 else run_scope(i % RUNS))
    return scopes


# --- the load generator (its own process) ------------------------------------------------


@dataclass
class HttpResult:
    requests: int = 0
    errors: int = 0
    latencies: array[float] = field(default_factory=lambda: array("d"))


async def http_load(
    url: str,
    headers: dict[str, str],
    clients: int,
    seconds: float,
    request: Callable[[aiohttp.ClientSession], Awaitable[int]],
) -> dict[str, float]:
    """`clients` loops each sending `request` back to back; after a warm-up, count for
    `seconds`."""
    result = HttpResult()
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + WARMUP_S
        end = measure_from + seconds

        async def client() -> None:
            while (started := loop.time()) < end:
                try:
                    status = await request(session)
                except aiohttp.ClientError:
                    status = 0
                finished = loop.time()
                if started >= measure_from and finished <= end:
                    if status >= 400 or status == 0:
                        result.errors += 1
                    else:
                        result.requests += 1
                        result.latencies.append(finished - started)

        await asyncio.gather(*(client() for _ in range(clients)))
    return {
        "per_s": result.requests / seconds,
        "p50_ms": percentile(result.latencies, 0.50) * 1000,
        "p99_ms": percentile(result.latencies, 0.99) * 1000,
        "errors": result.errors,
    }


async def get_load(url: str, headers: dict[str, str], path: str, clients: int, s: float) -> Any:
    async def get(session: aiohttp.ClientSession) -> int:
        async with session.get(path) as response:
            await response.read()
            return response.status

    return await http_load(url, headers, clients, s, get)


async def create_load(url: str, headers: dict[str, str], clients: int, s: float) -> Any:
    body = msgspec.json.encode(SMALL_RUN)
    post_headers = {"Content-Type": "application/json"}

    async def post(session: aiohttp.ClientSession) -> int:
        async with session.post("/api/v1/runs", data=body, headers=post_headers) as response:
            await response.read()
            return response.status

    return await http_load(url, headers, clients, s, post)


class Received(msgspec.Struct):
    position: int
    stream: str
    recorded_at: datetime


@dataclass
class Subscriber:
    scope: str | None
    positions: set[int] = field(default_factory=set)
    out_of_order: int = 0
    last: int = 0


async def fan_out(
    pipe: Connection, url: str, headers: dict[str, str], scopes: list[str | None], after: int
) -> dict[str, Any]:
    """Connect one websocket per scope, tell the parent, record what arrives until the
    parent sends the events written and every subscriber has its share or time is up."""
    decode = msgspec.json.Decoder(Received).decode
    latencies: array[float] = array("d")
    subscribers = [Subscriber(scope) for scope in scopes]
    connector = aiohttp.TCPConnector(limit=0)
    sockets: list[aiohttp.ClientWebSocketResponse] = []
    refused: list[str] = []
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as session:
        handshakes = asyncio.Semaphore(32)

        async def connect(subscriber: Subscriber) -> aiohttp.ClientWebSocketResponse | None:
            query = f"after={after}" + (f"&group={subscriber.scope}" if subscriber.scope else "")
            async with handshakes:
                try:
                    return await session.ws_connect(f"/api/v1/events/ws?{query}", autoping=True)
                except aiohttp.ClientError as exc:
                    refused.append(repr(exc))
                    return None

        async def read(subscriber: Subscriber, ws: aiohttp.ClientWebSocketResponse) -> None:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                now = time.time()
                event = decode(message.data)
                if not event.stream.startswith("bench-"):
                    continue
                latencies.append(now - event.recorded_at.timestamp())
                if event.position <= subscriber.last:
                    subscriber.out_of_order += 1
                subscriber.last = event.position
                subscriber.positions.add(event.position)

        started = time.perf_counter()
        connected = await asyncio.gather(*(connect(s) for s in subscribers))
        readers = []
        for subscriber, ws in zip(subscribers, connected, strict=True):
            if ws is not None:
                sockets.append(ws)
                readers.append(asyncio.create_task(read(subscriber, ws)))
        pipe.send(
            {
                "connected": len(sockets),
                "refused": refused[:3],
                "connect_s": round(time.perf_counter() - started, 2),
            }
        )

        written: list[tuple[int, str]] = await asyncio.to_thread(pipe.recv)
        written_at = time.perf_counter()
        deadline = written_at + 10.0 + max(0, len(written) - 1000) / 100
        expected = [
            {p for p, scope in written if s.scope is None or scope_matches(s.scope, scope)}
            for s in subscribers
        ]
        while time.perf_counter() < deadline:
            if all(e <= s.positions for e, s in zip(expected, subscribers, strict=True)):
                break
            await asyncio.sleep(0.1)
        drained_s = time.perf_counter() - written_at
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    missed = sum(len(e - s.positions) for e, s in zip(expected, subscribers, strict=True))
    return {
        "connected": len(sockets),
        "expected": sum(len(e) for e in expected),
        "delivered": len(latencies),
        "missed": missed,
        "out_of_order": sum(s.out_of_order for s in subscribers),
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
        "drained_s": drained_s,
    }


def load_generator(pipe: Connection) -> None:
    """The child process: runs each command the parent sends and sends back its result."""

    async def serve() -> None:
        while True:
            command = await asyncio.to_thread(pipe.recv)
            kind = command.pop("kind")
            if kind == "exit":
                return
            if kind == "get":
                result = await get_load(**command)
            elif kind == "create":
                result = await create_load(**command)
            else:
                result = await fan_out(pipe, **command)
            pipe.send(result)

    asyncio.run(serve())


class LoadGenerator:
    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(target=load_generator, args=(child,), daemon=True)
        self.process.start()
        self.pid = int(self.process.pid or 0)

    async def call(self, kind: str, **arguments: Any) -> Any:
        self.pipe.send({"kind": kind, **arguments})
        return await self.receive()

    async def receive(self) -> Any:
        return await asyncio.to_thread(self.pipe.recv)

    def close(self) -> None:
        if self.process.is_alive():
            self.pipe.send({"kind": "exit"})
            self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()


# --- the writer (this process) -----------------------------------------------------------


async def write_events(store: EventStore, rate: float, seconds: float) -> list[tuple[int, str]]:
    """`rate` events/s for `seconds`, round-robin over RUNS streams. Each stream's events
    are appended by one task, in order, all waiting ones in one append (so a stream never
    has two appends in flight); different streams' appends are group-committed together."""
    written: list[tuple[int, str]] = []
    commits: list[float] = []
    queues: list[asyncio.Queue[datetime]] = [asyncio.Queue() for _ in range(RUNS)]

    async def stream_writer(k: int) -> None:
        stream, scope, version = f"bench-{os.getpid()}-{k}", run_scope(k), NO_STREAM
        queue = queues[k]
        while True:
            made = [await queue.get()]
            while not queue.empty():
                made.append(queue.get_nowait())
            events = [
                TaskStatusChanged(task="t", status="running", attempt=1, at=at, executor="bench")
                for at in made
            ]
            meta = [Metadata(actor=SYSTEM, recorded_at=at) for at in made]
            started = time.perf_counter()
            positions = await store.append(stream, events, version, meta=meta, scope=scope)
            commits.append(time.perf_counter() - started)
            version += len(made)
            written.extend((p, scope) for p in positions)
            for _ in made:
                queue.task_done()

    writers = [asyncio.create_task(stream_writer(k)) for k in range(RUNS)]
    total = int(rate * seconds)
    sent = 0
    started = time.perf_counter()
    while sent < total:
        due = min(total, int((time.perf_counter() - started) * rate) + 1)
        now = datetime.now(UTC)
        for n in range(sent, due):
            queues[n % RUNS].put_nowait(now)
        sent = due
        await asyncio.sleep(0.002)
    for queue in queues:
        await queue.join()
    elapsed = time.perf_counter() - started
    for writer in writers:
        writer.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    note(
        f"wrote {len(written)} events in {elapsed:.2f}s ({len(written) / elapsed:.0f}/s); "
        f"append p50 {percentile(commits, 0.5) * 1000:.1f}ms, "
        f"p99 {percentile(commits, 0.99) * 1000:.1f}ms, max {max(commits) * 1000:.1f}ms"
    )
    return written


# --- orchestration -----------------------------------------------------------------------


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as output:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)


async def bench(args: argparse.Namespace, root: Path) -> None:
    postgres = EmbeddedPostgres(root / "pg")
    dsn = await asyncio.to_thread(postgres.start)
    seaweed = EmbeddedSeaweed(root / "s3")
    await seaweed.astart()
    port, trivial_port = free_port(), free_port()
    url, trivial_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{trivial_port}"
    env = service_environment(
        dsn,
        seaweed,
        root,
        RUNSVC_MAX_SUBSCRIBERS=str(max(2000, 2 * args.subscribers)),
    )
    processes: list[subprocess.Popen[bytes]] = []
    load = LoadGenerator()
    store: EventStore | None = None
    try:
        command = [sys.executable, "-m", "runsvc", "serve", "--port", str(port)]
        processes.append(start(command, env, root / "serve.log"))
        await wait_ready(url)
        connection = await asyncpg.connect(dsn)
        token = (await create_token(connection, role="admin", name="bench")).token
        await connection.close()
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.post(f"{url}/api/v1/runs", json=SMALL_RUN) as response,
        ):
            assert response.status == 201, await response.text()
            run_id = (await response.json())["id"]
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{url}/api/v1/runs/{run_id}") as response,
        ):
            body = await response.read()
        (root / "run.json").write_bytes(body)
        trivial = [sys.executable, str(HERE / "_trivial_server.py"), "--port", str(trivial_port)]
        trivial += ["--body", str(root / "run.json")]
        processes.append(start(trivial, env, root / "trivial.log"))
        await wait_ready(trivial_url, "/healthz")
        note(
            f"run {run_id}: {len(body)} bytes of JSON; {args.clients} clients, {args.seconds}s each"
        )

        path = f"/api/v1/runs/{run_id}"
        server, loader = processes[0].pid, load.pid
        cpu = CpuShare(server=server, load_generator=loader)
        service = await load.call(
            "get", url=url, headers=headers, path=path, clients=args.clients, s=args.seconds
        )
        note(f"GET run from the service: {service}; {cpu}")
        cpu = CpuShare(server=processes[1].pid, load_generator=loader)
        baseline = await load.call(
            "get", url=trivial_url, headers=headers, path=path, clients=args.clients, s=args.seconds
        )
        note(f"GET from the trivial handler: {baseline}; {cpu}")
        emit(
            "get_run_rps",
            service["per_s"],
            "req/s",
            baseline=baseline["per_s"],
            target="ratio>=0.5",
        )
        emit("get_run_p99_ms", service["p99_ms"], "ms", baseline=baseline["p99_ms"])

        cpu = CpuShare(server=server, load_generator=loader)
        creates = await load.call(
            "create", url=url, headers=headers, clients=args.clients, s=max(3.0, args.seconds / 2)
        )
        note(f"POST run: {creates}; {cpu}")
        emit("create_run_per_s", creates["per_s"], "runs/s")

        # Let the projections digest the creations before the fan-out is timed.
        await wait_ready(url)
        pool = await create_pool(dsn, max_size=8)
        store = EventStore(pool, dsn=dsn)
        await store.start()
        scopes = subscriber_scopes(args.subscribers, args.unfiltered)
        load.pipe.send(
            {
                "kind": "fan_out",
                "url": url,
                "headers": headers,
                "scopes": scopes,
                "after": await store.head(),
            }
        )
        connected = await load.receive()
        note(f"subscribers: {connected}")
        cpu = CpuShare(server=server, load_generator=loader, writer=os.getpid())
        written = await write_events(store, args.rate, args.seconds)
        load.pipe.send(written)
        fanout = await load.receive()
        unfiltered = min(args.unfiltered, args.subscribers)
        filtered = args.subscribers - unfiltered
        note(
            f"fan-out of {args.rate:g} events/s to {fanout['connected']} subscribers "
            f"({unfiltered} unfiltered, {filtered - filtered // 10} following one of {RUNS} "
            f"runs' scopes, {filtered // 10} one of {GROUPS} groups): {fanout}; {cpu}"
        )
        emit("ws_fanout_p99_ms", fanout["p99_ms"], "ms", target="value<=100")
        emit("ws_fanout_missed", fanout["missed"], "events", target="value<=0")
    finally:
        load.close()
        if store is not None:
            await store.close()
            await store.pool.close()
        stop_all(processes)
        await seaweed.astop()
        await asyncio.to_thread(postgres.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement's length")
    parser.add_argument("--clients", type=int, default=64, help="concurrent HTTP clients")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--unfiltered", type=int, default=10, help="subscribers taking all")
    parser.add_argument("--rate", type=float, default=500.0, help="events/s during fan-out")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-") as directory:
        asyncio.run(bench(arguments, Path(directory)))
