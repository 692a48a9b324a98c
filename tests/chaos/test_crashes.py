"""Chaos: the service broken on purpose under load, then checked for what it promised.

Every test here runs real processes (`runsvc serve`, `runsvc executor`) on the session's
PostgreSQL and SeaweedFS and asserts, whatever was killed: no acknowledged run lost, every
run terminal and its history verified, no task attempt executed twice or overlapping
another attempt of its task (each attempt writes its start and end to a ledger), the
projections equal to a rebuild from the log, and no process left behind."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from tests.chaos.checks import (
    all_finished,
    assert_each_attempt_ran_once_alone,
    assert_projections_equal_a_rebuild,
    dag,
    stray_processes,
)
from tests.fixtures.processes import Cluster


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

    await all_finished(cluster, acknowledged)
    assert len(acknowledged) >= 60
    assert_each_attempt_ran_once_alone(ledger)
    await asyncio.to_thread(cluster.stop_all)
    assert stray_processes(str(tmp_path)) == []
    await assert_projections_equal_a_rebuild(cluster.dsn)
