"""Chaos across processes: three `runsvc serve` on one database and object store, and
executors SIGKILLed while their tasks run. See tests/chaos/checks.py for what is checked
after each."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.chaos.checks import (
    all_events,
    all_finished,
    assert_each_attempt_ran_once_alone,
    assert_projections_equal_a_rebuild,
    dag,
    running_in,
    stray_processes,
)
from tests.fixtures.processes import Cluster


async def follow(url: str, headers: dict[str, str], into: list[tuple[int, str]]) -> None:
    """Subscribe to every event from the start of the log, noting (position, id)."""
    async with (
        aiohttp.ClientSession(headers=headers) as session,
        session.ws_connect(f"{url}/api/v1/events/ws") as ws,
    ):
        async for message in ws:
            event = message.json()
            into.append((event["position"], event["id"]))


async def create_runs(
    urls: list[str], headers: dict[str, str], config: dict[str, Any], count: int
) -> list[str]:
    """`count` runs, created round robin on `urls`."""
    created = []
    async with aiohttp.ClientSession(headers=headers) as session:
        for n in range(count):
            body = {"group": f"/chaos/{n % 3}", "name": "dag", "config": config}
            async with session.post(f"{urls[n % len(urls)]}/api/v1/runs", json=body) as answer:
                assert answer.status == 201, await answer.text()
                created.append((await answer.json())["id"])
    return created


async def test_three_servers_tell_every_subscriber_the_same_history(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Three servers share the work (creates on each, an executor on each) while a
    subscriber on each follows the log: all three receive the whole log, in the same
    order, with no gap or duplicate, exactly as it is stored."""
    ledger = tmp_path / "ledger"
    urls = [cluster.url, await cluster.start_server(), await cluster.start_server()]
    for n, url in enumerate(urls):
        cluster.start_executor(f"x{n}", concurrency=3, server=url)
    seen: list[list[tuple[int, str]]] = [[] for _ in urls]
    followers = [
        asyncio.create_task(follow(url, cluster.headers(), into))
        for url, into in zip(urls, seen, strict=True)
    ]
    try:
        run_ids = await create_runs(urls, cluster.headers(), dag(ledger), 45)
        await all_finished(cluster, run_ids)
        stored = [(e["position"], e["id"]) for e in await all_events(urls[1], cluster.headers())]
        for _ in range(200):  # the last events reach the subscribers; 20 s at most
            if all(len(into) >= len(stored) for into in seen):
                break
            await asyncio.sleep(0.1)
    finally:
        for task in followers:
            task.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
    for into in seen:
        assert into == stored
    assert_each_attempt_ran_once_alone(ledger)
    await asyncio.to_thread(cluster.stop_all)
    assert stray_processes(str(tmp_path)) == []
    await assert_projections_equal_a_rebuild(cluster.dsn)


async def test_executors_killed_mid_task_lose_their_attempts_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    """An executor SIGKILLed twice while its tasks run, and started again: the attempts it
    held end `lost` and are retried elsewhere, never overlapping their retry (the task's
    processes die with the executor); every attempt that started and never ended is a
    recorded loss; every run succeeds."""
    ledger = tmp_path / "ledger"
    cluster.start_executor("steady", concurrency=3)
    doomed = cluster.start_executor("doomed", concurrency=3)
    # The doomed executor's tasks take 20 s, so an attempt it started is still running
    # when it dies however slowly a loaded machine delivers the kill (with 2 s, one in
    # twenty rounds on a machine four times oversubscribed saw an attempt finish first).
    config = dag(ledger, pause="2", slow_on="/work/doomed/")
    run_ids = await create_runs([cluster.url], cluster.headers(), config, 24)
    fresh: set[tuple[str, int]] = set()
    for kill in range(2):
        # Until a task of the doomed executor started (its ledger line names the
        # executor's work directory) less than half a second ago; 60 s at most.
        for _ in range(600):
            started = running_in(ledger, "/work/doomed/", since_ns=time.time_ns() - 500_000_000)
            if started:
                fresh |= started
                break
            await asyncio.sleep(0.1)
        doomed.send_signal(signal.SIGKILL)
        await asyncio.to_thread(doomed.wait)
        # Started again; after the last kill under another name, whose tasks are quick.
        doomed = cluster.start_executor("doomed" if kill == 0 else "revived", concurrency=3)
    runs = await all_finished(cluster, run_ids)

    cut_short = assert_each_attempt_ran_once_alone(ledger)
    # An attempt that had just started (19.5 s of work or more ahead) when its executor
    # was killed never finished: its processes died with the executor.
    assert fresh, "no attempt was running when the executor was killed"
    assert fresh <= cut_short
    lost = set()
    events = await all_events(cluster.url, cluster.headers())
    task_ids = {
        (run["id"], name): task["id"] for run in runs for name, task in run["tasks"].items()
    }
    for event in events:
        data = event["data"]
        if event["type"] == "task_status_changed" and data["status"] == "lost":
            run_id = event["stream"].removeprefix("run-")
            lost.add((task_ids[(run_id, data["task"])], data["attempt"]))
    assert cut_short <= lost
    await asyncio.to_thread(cluster.stop_all)
    assert stray_processes(str(tmp_path)) == []
    await assert_projections_equal_a_rebuild(cluster.dsn)
