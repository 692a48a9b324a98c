"""Dashboard benchmark: the first render of the runs page, in Debian's chromium, with a
million runs in the index, against the same page on an index of fifty; and of a run's
page and its history page for a run of 20,000 events, against a run of 100 (each baseline
measured in the same run on the same server).

    .venv/bin/python scripts/bench/dashboard.py [--runs 1000000] [--events 20000]
        [--repeat 5]

A run of the runs page reads one keyset page (50 rows) and the groups below the group;
neither should grow with the index. The million rows are written straight into the index
table (the page reads nothing else), in one group and in 1,000 groups below it, in steps
of 100,000 with progress on stderr. "First render" is the time from the start of the
navigation to the moment the page shows its 50 rows, as the browser's own clock
(`performance.now()`) reads it; the median of `--repeat` loads, each in a fresh tab.

The long run is a foreach of a third of `--events` items, each scheduled, run and ended
by the real commands (three events an item), appended straight into the log as executors
would have caused them; the run page is drawn when its cards are, the history page when
its first page of events is.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[0] = str(ROOT)
sys.path.append(str(HERE))

import asyncpg
import msgspec
from _processes import served
from _report import emit, note
from playwright.async_api import Browser, async_playwright

from eventlog.postgres import create_pool
from eventlog.records import Metadata
from eventlog.store import NO_STREAM, EventStore
from runsvc.domain import commands
from runsvc.domain.config import RunConfig
from runsvc.domain.events import SYSTEM, Event, stream_of
from runsvc.domain.fold import apply_event
from runsvc.domain.model import Run
from runsvc.domain.requests import CreateRunRequest
from runsvc.service.auth import create_token

CHROMIUM = "/usr/bin/chromium"
STEP = 100_000


async def fill(dsn: str, total: int, group: str) -> None:
    """`total` index rows below `group`, older than every real run."""
    connection = await asyncpg.connect(dsn)
    try:
        # Below every position the log will hand out, so that no run the bench creates
        # later collides with one of these rows.
        start = await connection.fetchval(
            "SELECT least(coalesce(min(created_position), 0), 0) FROM runs_index"
        )
        for offset in range(0, total, STEP):
            count = min(STEP, total - offset)
            await connection.execute(
                """
                INSERT INTO runs_index
                SELECT $1 || '-' || n, $1 || '/g' || (n % 1000), 'run', n, 'finished', 'success',
                       now(), now(), now(), $2 - n, $2 - n
                FROM generate_series($3::bigint, $4::bigint) AS n
                """,
                group,
                start,
                offset + 1,
                offset + count,
            )
            note(f"index: {offset + count:,} of {total:,} runs written")
        await connection.execute("ANALYZE runs_index")
    finally:
        await connection.close()


def long_run(run_id: str, items: int) -> list[Event]:
    """The events of a run whose foreach of `items` items all ran and succeeded."""
    config = msgspec.convert(
        {"tasks": [{"name": "each", "run": "true", "foreach": list(range(items))}]}, RunConfig
    )
    request = CreateRunRequest(group="/history", name=f"run-{items}", config=config)
    now = datetime.now(UTC)
    events = commands.create_run(request, run_id=run_id, counter=1, now=now, admitted=True)
    run: Run | None = None
    for version, event in enumerate(events, start=1):
        run = apply_event(run, event, version=version)
    assert run is not None
    for index in range(items):
        name = f"each[{index}]"
        started = commands.start_attempt(run, name, attempt=1, executor="bench", now=now)
        run = _applied(run, events, started)
        ended = commands.finish_attempt(
            run, name, attempt=1, succeeded=True, exit_code=0, error=None, now=now
        )
        run = _applied(run, events, ended)
    return events


def _applied(run: Run, events: list[Event], decided: list[Event]) -> Run:
    for event in decided:
        run = apply_event(run, event, version=len(events) + 1)
        events.append(event)
    return run


async def append_run(store: EventStore, run_id: str, events: list[Event]) -> None:
    meta = Metadata(actor=SYSTEM, recorded_at=datetime.now(UTC))
    version = NO_STREAM
    for start in range(0, len(events), 1000):
        chunk = events[start : start + 1000]
        await store.append(stream_of(run_id), chunk, version, meta=meta, scope="/history")
        version = start + len(chunk)


async def caught_up(dsn: str) -> None:
    connection = await asyncpg.connect(dsn)
    try:
        head = await connection.fetchval("SELECT max(position) FROM events")
        async with asyncio.timeout(900):
            while (
                behind := await connection.fetchval(
                    "SELECT min(position) FROM projection_checkpoints"
                )
            ) < head:
                note(f"projections: at {behind:,} of {head:,}")
                await asyncio.sleep(2)
    finally:
        await connection.close()


async def shown(browser: Browser, url: str, token: str, address: str, selector: str) -> float:
    """Milliseconds from navigation to `selector` on screen, in a fresh tab."""
    context = await browser.new_context()
    # The token as the sign-in form would leave it, for this tab only.
    await context.add_init_script(f"sessionStorage.setItem('runsvc.token', {token!r})")
    page = await context.new_page()
    try:
        await page.goto(f"{url}/ui/#{address}")
        await page.locator(selector).first.wait_for(timeout=60_000)
        elapsed: float = await page.evaluate("performance.now()")
        return elapsed
    finally:
        await context.close()


async def median_render(browser: Browser, url: str, token: str, group: str, repeat: int) -> float:
    # The 50th row: a whole page of runs on screen.
    address, row = f"/runs?group={group}", "tr[data-run] >> nth=49"
    times = [await shown(browser, url, token, address, row) for _ in range(repeat)]
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-dashboard-") as tmp:
        async with served(Path(tmp)) as service, async_playwright() as playwright:
            connection = await asyncpg.connect(service.dsn)
            try:
                token = (await create_token(connection, role="reader", name="bench")).token
            finally:
                await connection.close()
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, args=["--no-sandbox"]
            )
            await fill(service.dsn, 50, "/small")
            baseline = await median_render(browser, service.url, token, "/small", args.repeat)
            await fill(service.dsn, args.runs, "/big")
            big = await median_render(browser, service.url, token, "/big", args.repeat)
            pages = await history_renders(service.dsn, browser, service.url, token, args)
            await browser.close()
    emit(
        f"runs page first render, {args.runs:,} runs in the index",
        big,
        "ms",
        baseline=baseline,
        target="value<=1000 and ratio<=2",
    )
    for page, (value, base) in pages.items():
        emit(
            f"{page} first render, {args.events:,}-event run",
            value,
            "ms",
            baseline=base,
            target="value<=1000 and ratio<=2",
        )


async def history_renders(
    dsn: str, browser: Browser, url: str, token: str, args: argparse.Namespace
) -> dict[str, tuple[float, float]]:
    """(long run, short run) medians of the run page and the history page."""
    pool = await create_pool(dsn, max_size=4)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    try:
        runs = {}
        for label, items in (("short", 33), ("long", args.events // 3)):
            run_id = f"bench-{label}-{items}"
            events = long_run(run_id, items)
            await append_run(store, run_id, events)
            note(f"run {run_id}: {len(events):,} events appended")
            runs[label] = run_id
    finally:
        await store.close()
        await pool.close()
    # Once the projections have folded both runs, so that they do not share the cores
    # with the pages being timed.
    await caught_up(dsn)
    found: dict[str, tuple[float, float]] = {}
    for page, suffix, selector in (
        ("run page", "", "li.card"),
        ("history page", "/history", "tbody tr"),
    ):
        times = {}
        for label, run_id in runs.items():
            times[label] = statistics.median(
                [
                    await shown(browser, url, token, f"/runs/{run_id}{suffix}", selector)
                    for _ in range(args.repeat)
                ]
            )
        found[page] = (times["long"], times["short"])
    return found


if __name__ == "__main__":
    asyncio.run(main())
