"""Execution benchmark: a 1,000-task DAG of no-op commands (`true`) through a real
`runsvc serve` and 4 `runsvc executor` processes of concurrency 8.

    .venv/bin/python scripts/bench/execution.py [--tasks 1000] [--width 100]

`sched_overhead_ms_per_task` is the wall time minus the time the commands themselves
needed (each `true` timed here, packed perfectly onto the 32 slots), divided by the tasks:
the cost of claiming, starting, reporting and deciding per task.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)
sys.path.append(str(Path(__file__).resolve().parent))

import aiohttp
import asyncpg
from _processes import free_port, service_environment, stop_all, wait_ready
from _report import emit, note

from runsvc.infra.postgres import EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed
from runsvc.service.auth import create_token

EXECUTORS, CONCURRENCY = 4, 8


def dag(tasks: int, width: int) -> dict[str, object]:
    spec = []
    for index in range(tasks):
        layer, slot = divmod(index, width)
        depends = []
        if layer:
            base = (layer - 1) * width
            depends = sorted({f"t{base + slot}", f"t{base + (slot * 7 + 3) % width}"})
        spec.append({"name": f"t{index}", "command": ["true"], "depends": depends})
    return {"group": "/bench", "name": "execution", "config": {"tasks": spec}}


def command_time() -> float:
    """Seconds one `true` takes from spawn to exit, on this machine, now."""
    started = time.perf_counter()
    for _ in range(200):
        subprocess.run(["true"], check=True)
    return (time.perf_counter() - started) / 200


async def bench(args: argparse.Namespace, root: Path) -> None:
    postgres = EmbeddedPostgres(root / "pg")
    dsn = await asyncio.to_thread(postgres.start)
    seaweed = EmbeddedSeaweed(root / "s3")
    await seaweed.astart()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = service_environment(
        dsn,
        seaweed,
        root,
        RUNSVC_MAX_TASKS="100000",
    )
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "runsvc", "serve", "--port", str(port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
        await wait_ready(url)
        connection = await asyncpg.connect(dsn)
        admin = (await create_token(connection, role="admin", name="bench")).token
        executor = (await create_token(connection, role="executor", name="bench-x")).token
        await connection.close()
        for index in range(EXECUTORS):
            processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "runsvc",
                        "executor",
                        "--server",
                        url,
                        "--concurrency",
                        str(CONCURRENCY),
                        "--name",
                        f"x{index}",
                        "--work-dir",
                        str(root / "work" / str(index)),
                        # Tasks as the bench's own user: the temporary root is private,
                        # so a task user (nobody, under root) could not reach it.
                        "--task-user",
                        "",
                    ],
                    cwd=ROOT,
                    env={**env, "RUNSVC_TOKEN": executor},
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        headers = {"Authorization": f"Bearer {admin}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            started = time.perf_counter()
            async with session.post(f"{url}/api/v1/runs", json=dag(args.tasks, args.width)) as r:
                run = await r.json()
                assert r.status == 201, run
            types = "run_result_changed,run_phase_changed"
            ws_url = f"{url}/api/v1/events/ws?run={run['id']}&types={types}"
            result = "unknown"
            async with session.ws_connect(ws_url) as ws, asyncio.timeout(600):
                async for message in ws:
                    data = message.json()["data"]
                    result = data.get("result", result)
                    if data.get("phase") == "finished":
                        break
            wall = time.perf_counter() - started
            if result != "success":
                async with session.get(f"{url}/api/v1/runs/{run['id']}/events") as r:
                    events = (await r.json())["events"]
                failures = [
                    e["data"]
                    for e in events
                    if e["type"] == "task_status_changed"
                    and e["data"]["status"] in ("failed", "lost")
                ]
                note(f"failed tasks: {failures[:5]}")
        assert result == "success", result
        per_command = command_time()
        ideal = args.tasks * per_command / (EXECUTORS * CONCURRENCY)
        note(f"{args.tasks} tasks in {wall:.2f}s; one `true` takes {per_command * 1000:.2f}ms")
        emit("execution_1k_wall_s", wall, "s")
        emit(
            "sched_overhead_ms_per_task",
            (wall - ideal) / args.tasks * 1000,
            "ms",
            target="value<=10",
        )
    finally:
        stop_all(processes)
        await seaweed.astop()
        await asyncio.to_thread(postgres.stop)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--width", type=int, default=100)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-") as directory:
        asyncio.run(bench(arguments, Path(directory)))
