"""What every chaos test checks once the dust settles: runs terminal and verified, each
attempt executed once and never beside another of its task, projections equal to a
rebuild from the log, and no process left behind."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp

from eventlog.postgres import create_pool
from eventlog.store import EventStore
from projections.rebuild import rebuild_all
from projections.registry import all_projections
from projections.runner import ProjectionRunner
from tests.e2e.test_execution import TERMINAL
from tests.fixtures.processes import Cluster, api
from tests.integration.test_rebuild import table_rows


def dag(
    ledger: Path, *, pause: str = "0.05", slow_on: str | None = None, slow_pause: str = "20"
) -> dict[str, Any]:
    """Five tasks (a fan-out and a fan-in); each notes its start and end in `ledger`,
    with its work directory (which names the executor running it). Run where the work
    directory contains `slow_on`, a task takes `slow_pause` seconds instead of `pause`."""
    sleep = f"sleep {pause}"
    if slow_on is not None:
        sleep = f'case "$PWD" in *{slow_on}*) sleep {slow_pause};; *) sleep {pause};; esac'
    step = (
        f'echo "$RUNSVC_TASK_ID $RUNSVC_ATTEMPT start $(date +%s%N) $PWD" >> {ledger}; '
        f"{sleep}; "
        f'echo "$RUNSVC_TASK_ID $RUNSVC_ATTEMPT end $(date +%s%N) $PWD" >> {ledger}'
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
    for task_id, attempt, what, at, _ in ledger_lines(ledger):
        marks[(task_id, attempt)].append((what, at))
    return marks


def ledger_lines(ledger: Path) -> list[tuple[str, int, str, int, str]]:
    """(task id, attempt, start or end, nanoseconds, work directory) per line."""
    if not ledger.exists():
        return []
    lines = []
    for line in ledger.read_text().splitlines():
        task_id, attempt, what, at, where = line.split()
        lines.append((task_id, int(attempt), what, int(at), where))
    return lines


def running_in(ledger: Path, marker: str, *, since_ns: int = 0) -> set[tuple[str, int]]:
    """Attempts that started (at `since_ns` or later) in a work directory containing
    `marker` and have not ended."""
    started, ended = set(), set()
    for task_id, attempt, what, at, where in ledger_lines(ledger):
        if marker in where:
            if what == "start" and at >= since_ns:
                started.add((task_id, attempt))
            elif what == "end":
                ended.add((task_id, attempt))
    return started - ended


def assert_each_attempt_ran_once_alone(ledger: Path) -> set[tuple[str, int]]:
    """Each attempt started once and ended at most once; attempts of one task never
    overlap. Returns the attempts that started and never ended (their executor died)."""
    by_task: dict[str, list[tuple[int, int]]] = defaultdict(list)
    cut_short = set()
    for (task_id, attempt), marks in attempts_in(ledger).items():
        starts = [at for what, at in marks if what == "start"]
        ends = [at for what, at in marks if what == "end"]
        assert len(starts) == 1, f"{task_id} attempt {attempt} started {len(starts)} times"
        assert len(ends) <= 1, f"{task_id} attempt {attempt} ended {len(ends)} times"
        if not ends:
            cut_short.add((task_id, attempt))
        by_task[task_id].append((starts[0], ends[0] if ends else starts[0]))
    for task_id, spans in by_task.items():
        spans.sort()
        for (_, end), (start, _) in itertools.pairwise(spans):
            assert end <= start, f"attempts of {task_id} overlapped"
    return cut_short


async def run_of(cluster: Cluster, run_id: str) -> dict[str, Any]:
    status, run = await api(cluster, "GET", f"/api/v1/runs/{run_id}")
    assert status == 200, run
    return dict(run)


async def all_finished(cluster: Cluster, run_ids: list[str], within_s: int = 240) -> list[Any]:
    """The runs once every one is terminal (polled; `within_s` at most), checked to have
    succeeded and to verify."""
    for _ in range(within_s * 2):
        runs = [await run_of(cluster, run_id) for run_id in run_ids]
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
    for run_id in run_ids:
        status, report = await api(cluster, "GET", f"/api/v1/runs/{run_id}/verify")
        assert (status, report["ok"]) == (200, True), report
    return runs


async def all_events(url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The whole log, read page by page."""
    events: list[dict[str, Any]] = []
    async with aiohttp.ClientSession(headers=headers) as session:
        while True:
            after = events[-1]["position"] if events else 0
            query = {"after": str(after), "limit": "1000"}
            async with session.get(f"{url}/api/v1/events", params=query) as response:
                assert response.status == 200
                page = (await response.json())["events"]
            if not page:
                return events
            events += page


async def assert_projections_equal_a_rebuild(dsn: str) -> None:
    """With the servers stopped: the projections, caught up to the head, equal what a
    rebuild from the whole log makes of it."""
    pool = await create_pool(dsn, max_size=4)
    try:
        async with EventStore(pool, dsn=dsn) as store:
            for projection in all_projections():
                runner = ProjectionRunner(store, projection)
                await runner.start()
                await runner.catch_up()
            live = await table_rows(pool)
            await rebuild_all(store, dsn, all_projections(), workers=1, progress_every=0)
            assert await table_rows(pool) == live
    finally:
        await pool.close()


def stray_processes(marker: str) -> list[str]:
    """Command lines of live processes that mention `marker` (a test's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in command and state != "Z":
            found.append(command)
    return found
