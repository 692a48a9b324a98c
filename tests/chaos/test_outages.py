"""Chaos: the stores under a loaded service fail. PostgreSQL hung (SIGSTOP) and stopped,
SeaweedFS stopped, one after the other, while runs are created and executed: clients get
503s that say so (never a 500, never a hang), work resumes on its own when each store is
back, and nothing acknowledged is lost (see tests/chaos/checks.py)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.infra.postgres import TEST_SETTINGS, EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed
from tests.chaos.checks import (
    all_finished,
    assert_each_attempt_ran_once_alone,
    assert_projections_equal_a_rebuild,
    dag,
    stray_processes,
)
from tests.fixtures.postgres import server_directory, server_processes
from tests.fixtures.processes import Cluster


class Load:
    """Creates runs without pause and keeps count of every answer."""

    def __init__(self, cluster: Cluster, config: dict[str, object]) -> None:
        self.cluster = cluster
        self.config = config
        self.acknowledged: list[str] = []
        self.statuses: Counter[int] = Counter()
        self.last_status = 0
        self.changed = asyncio.Condition()

    async def run(self, stop: asyncio.Event) -> None:
        body = {"group": "/chaos", "name": "outage", "config": self.config}
        timeout = aiohttp.ClientTimeout(total=60)  # a hang shows up as a failed test
        async with aiohttp.ClientSession(headers=self.cluster.headers(), timeout=timeout) as s:
            while not stop.is_set():
                async with s.post(f"{self.cluster.url}/api/v1/runs", json=body) as answer:
                    if answer.status == 201:
                        self.acknowledged.append((await answer.json())["id"])
                    else:
                        assert answer.status == 503, await answer.text()
                        assert int(answer.headers["Retry-After"]) > 0
                    self.statuses[answer.status] += 1
                    self.last_status = answer.status
                async with self.changed:
                    self.changed.notify_all()
                await asyncio.sleep(0.05)

    async def until(self, check: Callable[[], bool], within_s: float = 60) -> float:
        """Seconds until `check` holds, asked after each answer."""
        started = time.monotonic()
        async with self.changed, asyncio.timeout(within_s):
            await self.changed.wait_for(check)
        return time.monotonic() - started


@pytest.fixture
async def own_cluster(
    object_store_config: ObjectStoreConfig, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, EmbeddedPostgres]]:
    """A service on a PostgreSQL of this test's own, which it may freeze and stop."""
    directory = server_directory()
    server = EmbeddedPostgres(directory, settings=TEST_SETTINGS)
    dsn = await asyncio.to_thread(server.start)
    cluster = Cluster(dsn, object_store_config, tmp_path)
    # Leases outlive the outages, so executors keep their attempts through them; requests
    # give up after 2 s.
    cluster.overrides.update(RUNSVC_LEASE_TTL_S="30", RUNSVC_REQUEST_TIMEOUT_S="2")
    try:
        await cluster.start_server()
        yield cluster, server
    finally:
        await asyncio.to_thread(cluster.stop_all)
        await asyncio.to_thread(server.stop)
        shutil.rmtree(directory, ignore_errors=True)


async def test_stores_failing_under_load(
    own_cluster: tuple[Cluster, EmbeddedPostgres], seaweed: EmbeddedSeaweed, tmp_path: Path
) -> None:
    cluster, postgres = own_cluster
    ledger = tmp_path / "ledger"
    for name in ("x1", "x2"):
        cluster.start_executor(name, concurrency=3)
    load = Load(cluster, dag(ledger))
    stop = asyncio.Event()
    loading = asyncio.create_task(load.run(stop))
    figures = {}
    try:
        await load.until(lambda: len(load.acknowledged) >= 10)

        frozen = server_processes(postgres)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            figures["hung: first 503 after (s)"] = await load.until(lambda: load.last_status == 503)
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        figures["hung: recovered after (s)"] = await load.until(lambda: load.last_status == 201)

        await asyncio.to_thread(postgres.stop)
        try:
            figures["stopped: first 503 after (s)"] = await load.until(
                lambda: load.last_status == 503
            )
        finally:
            await asyncio.to_thread(postgres.start)
        figures["stopped: recovered after (s)"] = await load.until(lambda: load.last_status == 201)

        await asyncio.to_thread(seaweed.stop)
        try:
            count = len(load.acknowledged)
            await load.until(lambda: len(load.acknowledged) >= count + 5)
        finally:
            await asyncio.to_thread(seaweed.start)
        count = len(load.acknowledged)
        await load.until(lambda: len(load.acknowledged) >= count + 5)
    finally:
        stop.set()
        await loading

    print(f"\noutage figures: {figures}, answers: {dict(load.statuses)}")
    assert set(load.statuses) == {201, 503}
    await all_finished(cluster, load.acknowledged)
    assert_each_attempt_ran_once_alone(ledger)
    await asyncio.to_thread(cluster.stop_all)
    assert stray_processes(str(tmp_path)) == []
    await assert_projections_equal_a_rebuild(cluster.dsn)
