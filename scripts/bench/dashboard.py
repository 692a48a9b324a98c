"""Dashboard benchmark: the first render of the runs page, in Debian's chromium, with a
million runs in the index, against the same page on an index of fifty (the baseline,
measured in the same run on the same server).

    .venv/bin/python scripts/bench/dashboard.py [--runs 1000000] [--repeat 5]

A run of the runs page reads one keyset page (50 rows) and the groups below the group;
neither should grow with the index. The million rows are written straight into the index
table (the page reads nothing else), in one group and in 1,000 groups below it, in steps
of 100,000 with progress on stderr. "First render" is the time from the start of the
navigation to the moment the page shows its 50 rows, as the browser's own clock
(`performance.now()`) reads it; the median of `--repeat` loads, each in a fresh tab.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[0] = str(ROOT)
sys.path.append(str(HERE))

import asyncpg
from _processes import served
from _report import emit, note
from playwright.async_api import Browser, async_playwright

from runsvc.service.auth import create_token

CHROMIUM = "/usr/bin/chromium"
STEP = 100_000


async def fill(dsn: str, total: int, group: str) -> None:
    """`total` index rows below `group`, newest positions above every real run."""
    connection = await asyncpg.connect(dsn)
    try:
        start = await connection.fetchval(
            "SELECT coalesce(max(created_position), 0) FROM runs_index"
        )
        for offset in range(0, total, STEP):
            count = min(STEP, total - offset)
            await connection.execute(
                """
                INSERT INTO runs_index
                SELECT $1 || '-' || n, $1 || '/g' || (n % 1000), 'run', n, 'finished', 'success',
                       now(), now(), now(), $2 + n, $2 + n
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


async def first_render(browser: Browser, url: str, token: str, group: str, rows: int) -> float:
    """Milliseconds from navigation to `rows` rows on screen, in a fresh tab."""
    context = await browser.new_context()
    # The token as the sign-in form would leave it, for this tab only.
    await context.add_init_script(f"sessionStorage.setItem('runsvc.token', {token!r})")
    page = await context.new_page()
    try:
        await page.goto(f"{url}/ui/#/runs?group={group}")
        await page.locator("tr[data-run]").nth(rows - 1).wait_for(timeout=60_000)
        elapsed: float = await page.evaluate("performance.now()")
        return elapsed
    finally:
        await context.close()


async def median_render(browser: Browser, url: str, token: str, group: str, repeat: int) -> float:
    times = [await first_render(browser, url, token, group, 50) for _ in range(repeat)]
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
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
            await browser.close()
    emit(
        f"runs page first render, {args.runs:,} runs in the index",
        big,
        "ms",
        baseline=baseline,
        target="value<=1000 and ratio<=2",
    )


if __name__ == "__main__":
    asyncio.run(main())
