"""Chaos: the service broken on purpose under load, then checked for what it promised.

Every test here runs real processes (`runsvc serve`, `runsvc executor`) on the session's
PostgreSQL and SeaweedFS and asserts, whatever was killed: no acknowledged run lost, every
run terminal and its history verified, no task attempt executed twice or overlapping
another attempt of its task (each attempt writes its start and end to a ledger)."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.e2e.test_execution import TERMINAL
from tests.fixtures.processes import Cluster, api


def dag(ledger: Path) -> dict[str, Any]:
    """Five tasks (a fan-out and a fan-in); each notes its start and end in `ledger`."""
    step = (
        f'echo "$RUNSVC_TASK_ID $RUNSVC_ATTEMPT start $(date +%s%N)" >> {ledger}; sleep 0.05; '
        f'echo "$RUNSVC_TASK_ID $RUNSVC_ATTEMPT end $(date +%s%N)" >> {ledger}'
    )
    return {
        "tasks": [
            {"name": "a", "run": step},
            {"name": "b", "run": step, "depends": ["a"]},
            {"name": "c", "run": step, "depends": ["a"]},
            {"name": "d", "run": step, "depends": ["b", "c"]},
            {"name": "e", "run": step, "depends": ["d"]},
        ]
    }


def attempts_in(ledger: Path) -> dict[tuple[str, int], list[tuple[str, int]]]:
    marks: dict[tuple[str, int], list[tuple[str, int]]] = defaultdict(list)
    for line in ledger.read_text().splitlines():
        task_id, attempt, what, at = line.split()
        marks[(task_id, int(attempt))].append((what, int(at)))
    return marks


def assert_each_attempt_ran_once_alone(ledger: Path) -> None:
    """Each attempt started once and ended once; attempts of one task never overlap."""
    by_task: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for (task_id, attempt), marks in attempts_in(ledger).items():
        starts = [at for what, at in marks if what == "start"]
        ends = [at for what, at in marks if what == "end"]
        assert len(starts) == 1, f"{task_id} attempt {attempt} started {len(starts)} times"
        assert len(ends) <= 1, f"{task_id} attempt {attempt} ended {len(ends)} times"
        by_task[task_id].append((starts[0], ends[0] if ends else starts[0]))
    for task_id, spans in by_task.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"attempts of {task_id} overlapped"


async def test_serve_killed_three_times_under_load(cluster: Cluster, tmp_path: Path) -> None:
    """`runsvc serve` SIGKILLed at three moments while 90 runs of a five-task DAG are
    being created and executed, restarted each time on the same database and port: every
    run whose create was acknowledged finishes with success and verifies, and no attempt
    ran twice or beside another attempt of its task."""
    ledger = tmp_path / "ledger"
    port = urlsplit(cluster.url).port
    assert port is not None
    # Leases outlive the few seconds a restart takes, so executors keep their attempts.
    cluster.overrides["RUNSVC_LEASE_TTL_S"] = "30"
    for name in ("x1", "x2"):
        cluster.start_executor(name, concurrency=4)
    acknowledged: list[str] = []
    progress = asyncio.Condition()
    config = dag(ledger)

    async def submit_runs(count: int) -> None:
        """Create runs until `count` were acknowledged; a create the server died under
        is not acknowledged (it may or may not exist) and is not retried."""
        body = {"group": "/chaos", "name": "dag", "config": config}
        async with aiohttp.ClientSession(headers=cluster.headers()) as session:
            while len(acknowledged) < count:
                try:
                    async with session.post(cluster.url + "/api/v1/runs", json=body) as answer:
                        if answer.status == 201:
                            acknowledged.append((await answer.json())["id"])
                            async with progress:
                                progress.notify_all()
                    await asyncio.sleep(0.02)
                except aiohttp.ClientError:
                    await asyncio.sleep(0.2)  # the server is down: it comes back

    submitting = asyncio.create_task(submit_runs(90))
    for threshold in (15, 40, 65):
        async with progress, asyncio.timeout(120):
            await progress.wait_for(lambda t=threshold: len(acknowledged) >= t)
        process, _ = cluster.servers[0]
        process.send_signal(signal.SIGKILL)
        await asyncio.to_thread(process.wait)
        await cluster.start_server(port)
    await submitting

    for _ in range(480):  # every run ends within 4 minutes
        runs = [await run_of(cluster, run_id) for run_id in acknowledged]
        if all(run["phase"] in TERMINAL for run in runs):
            break
        await asyncio.sleep(0.5)
    stuck = {
        run["id"]: {name: (task["status"], task["attempt"]) for name, task in run["tasks"].items()}
        for run in runs
        if run["phase"] not in TERMINAL
    }
    assert not stuck, stuck
    assert {(run["phase"], run["result"]) for run in runs} == {("finished", "success")}
    for run_id in acknowledged:
        status, report = await api(cluster, "GET", f"/api/v1/runs/{run_id}/verify")
        assert (status, report["ok"]) == (200, True), report
    assert len(acknowledged) >= 60
    assert_each_attempt_ran_once_alone(ledger)


async def run_of(cluster: Cluster, run_id: str) -> dict[str, Any]:
    status, run = await api(cluster, "GET", f"/api/v1/runs/{run_id}")
    assert status == 200, run
    return dict(run)
