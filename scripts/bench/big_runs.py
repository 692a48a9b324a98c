"""Big runs: how long the service stops answering while it handles a run of 10,000 tasks,
and how much memory many such runs leave behind, through a real `runsvc serve` on
embedded PostgreSQL and SeaweedFS.

    .venv/bin/python scripts/bench/big_runs.py [--tasks 10000] [--runs 25]

A probe asks `/healthz` every 5 ms throughout. For a run of `--tasks` tasks, and then as the
baseline for one of 100, the same actions follow each other: create, read five times,
stop, verify, read again once the stop is projected. The measure is the longest `/healthz`
answer while they happen (the event loop stalled for about that long). Then `--runs` big
runs are created and each read once; the measure is how much the server's resident memory
grew, against its size before.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[0] = str(ROOT)
sys.path.append(str(HERE))

import aiohttp
import asyncpg
from _processes import served
from _report import emit, note

from runsvc.service.auth import create_token


def run_body(tasks: int) -> dict[str, object]:
    return {
        "group": "/bench/big",
        "name": f"fan-{tasks}",
        "config": {"tasks": [{"name": f"t{n}", "run": "true"} for n in range(tasks)]},
    }


class Probe:
    """Asks /healthz every 5 ms and keeps the slowest answer since the last reset."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.slowest = 0.0

    def reset(self) -> None:
        self.slowest = 0.0

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.perf_counter()
                async with session.get(f"{self.url}/healthz") as response:
                    await response.read()
                self.slowest = max(self.slowest, time.perf_counter() - started)
                await asyncio.sleep(0.005)


async def actions(
    session: aiohttp.ClientSession, url: str, tasks: int, probe: Probe
) -> dict[str, float]:
    """Create, read, stop, verify and read again one run of `tasks` tasks; returns the
    slowest /healthz answer (seconds) during each of those steps."""
    slowest: dict[str, float] = {}

    def step(name: str) -> None:
        slowest[name] = max(slowest.get(name, 0.0), probe.slowest)
        probe.reset()

    probe.reset()
    async with session.post(f"{url}/api/v1/runs", json=run_body(tasks)) as response:
        assert response.status == 201, await response.text()
        run_id = (await response.json())["id"]
    step("create")
    for _ in range(5):
        async with session.get(f"{url}/api/v1/runs/{run_id}") as response:
            assert response.status == 200
            await response.read()
    step("read")
    async with session.post(f"{url}/api/v1/runs/{run_id}/stop") as response:
        assert response.status in (202, 204), await response.text()
    step("stop")
    async with session.get(f"{url}/api/v1/runs/{run_id}/verify") as response:
        assert response.status == 200
        assert (await response.json())["ok"]
    step("verify")
    for _ in range(600):
        async with session.get(f"{url}/api/v1/runs/{run_id}") as response:
            if (await response.json())["stop_requested"]:
                step("read until stopped")
                return slowest
        await asyncio.sleep(0.05)
    raise RuntimeError("the stop never reached the run's view")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def bench(args: argparse.Namespace, root: Path) -> None:
    big_bodies = {
        "RUNSVC_MAX_BODY_BYTES": str(64 * 1024 * 1024),
        "RUNSVC_MAX_EVENT_BYTES": str(16 * 1024 * 1024),
    }
    async with served(root, **big_bodies) as service:
        url, processes = service.url, service.processes
        connection = await asyncpg.connect(service.dsn)
        token = (await create_token(connection, role="admin", name="bench")).token
        await connection.close()
        headers = {"Authorization": f"Bearer {token}"}
        probe = Probe(url)
        probing = asyncio.create_task(probe.run())
        timeout = aiohttp.ClientTimeout(total=600)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            await actions(session, url, 10, probe)  # warm up
            slowest = {}
            for tasks in (100, args.tasks):
                started = time.perf_counter()
                steps = await actions(session, url, tasks, probe)
                slowest[tasks] = max(steps.values())
                note(
                    f"{tasks} tasks: actions took {time.perf_counter() - started:.1f}s; "
                    "slowest /healthz during "
                    + ", ".join(f"{name} {value * 1000:.0f} ms" for name, value in steps.items())
                )
            emit(
                f"healthz_slowest_ms_during_{args.tasks}_task_run",
                slowest[args.tasks] * 1000,
                "ms",
                baseline=slowest[100] * 1000,
                target="value <= 300",
            )
            server = processes[0].pid
            before = rss_mb(server)
            for n in range(args.runs):
                async with session.post(f"{url}/api/v1/runs", json=run_body(args.tasks)) as r:
                    assert r.status == 201, await r.text()
                    run_id = (await r.json())["id"]
                async with session.get(f"{url}/api/v1/runs/{run_id}") as r:
                    await r.read()
                note(f"big run {n + 1}/{args.runs}: server RSS {rss_mb(server):.0f} MB")
            after = rss_mb(server)
            emit(
                f"rss_growth_mb_after_{args.runs}_runs_of_{args.tasks}_tasks",
                after - before,
                "MB",
                baseline=before,
                target="value <= 350 (the caches' budgets: 128 + 64 + 64 MB, and slack)",
            )
        probing.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=25)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-big-") as root:
        asyncio.run(bench(args, Path(root)))


if __name__ == "__main__":
    main()
