"""The dashboard's task page on a 100 MB log, in Chromium, through a real `runsvc serve`
and `runsvc executor` on embedded PostgreSQL and SeaweedFS.

    .venv/bin/python scripts/bench/dashboard_log.py [--repeat 5] [--megabytes 100]

A task writes `--megabytes` of log lines, another a 1 KB log (the baseline: the same page
with nothing to spare it). The page is opened `--repeat` times on each, alternately;
measures are medians:

- the time from asking for the page to its log's last line being on screen,
- the page's JS heap once it shows the log (after a garbage collection; CDP's
  `JSHeapUsedSize`, which Chromium does not round as it does `performance.memory`),
- the log bytes the page fetched, against the log's size.

Targets: the big log's first render within 3x the small one's, its heap within 2x, and
at most 600 KB fetched (the page reads the last 256 KB of a log, not the log).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path[0] = str(ROOT)
sys.path.append(str(Path(__file__).resolve().parent))

import aiohttp
import asyncpg
from _processes import served
from _report import emit, note
from playwright.async_api import Page, async_playwright

from runsvc.service.auth import create_token

CHROMIUM = os.environ.get("RUNSVC_TEST_CHROMIUM", "/usr/bin/chromium")
LAST_LINE = "the very last line"

# Until the log's last line is in the page (checked every frame), then one more frame
# so that it has been painted: milliseconds since the page was asked for, and the bytes
# of log the page fetched meanwhile.
OPEN_AND_TIME = """async ({ target, lastLine }) => {
    performance.clearResourceTimings();
    const started = performance.now();
    location.hash = target;
    await new Promise((resolve) => {
        const check = () => {
            const lines = document.querySelectorAll(".log .line");
            if (lines.length && lines[lines.length - 1].textContent === lastLine) resolve();
            else requestAnimationFrame(check);
        };
        check();
    });
    await new Promise((resolve) => requestAnimationFrame(() => setTimeout(resolve, 0)));
    const took = performance.now() - started;
    const fetched = performance.getEntriesByType("resource")
        .filter((entry) => entry.name.includes("/logs"))
        .reduce((sum, entry) => sum + entry.decodedBodySize, 0);
    return { took, fetched };
}"""


def tasks(megabytes: int) -> list[dict[str, str]]:
    return [
        {
            "name": "big",
            "run": f"yes 'some log line text here' 2>/dev/null | head -c {megabytes * 10**6}; "
            f"echo; echo '{LAST_LINE}'",
        },
        {
            "name": "small",
            "run": f"yes 'a line of a small log' 2>/dev/null | head -n 45; echo '{LAST_LINE}'",
        },
    ]


async def finished_run(url: str, admin: str, megabytes: int) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {admin}"}
    body = {"group": "/bench", "name": "log", "config": {"tasks": tasks(megabytes)}}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{url}/api/v1/runs", json=body) as response:
            run = await response.json()
            assert response.status == 201, run
        # The run's view follows its events within moments: read it until both ended.
        async with asyncio.timeout(600):
            while True:
                async with session.get(f"{url}/api/v1/runs/{run['id']}") as response:
                    run = await response.json()
                if run["phase"] == "finished":
                    break
                await asyncio.sleep(0.5)
    for name in ("big", "small"):
        assert run["tasks"][name]["status"] == "success", run["tasks"][name]
    return dict(run)


async def js_heap(page: Page) -> float:
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("HeapProfiler.collectGarbage")
    await cdp.send("Performance.enable")
    metrics = await cdp.send("Performance.getMetrics")
    await cdp.detach()
    return float(next(m["value"] for m in metrics["metrics"] if m["name"] == "JSHeapUsedSize"))


async def open_once(page: Page, run_id: str, task: str) -> dict[str, float]:
    """One opening of the task page: ms to the last line, log bytes fetched, JS heap
    bytes. The page goes to the runs list first, so each opening starts from a page
    without a log."""
    await page.evaluate("location.hash = '#/runs'")
    await page.get_by_role("heading", name="Runs").wait_for()
    await js_heap(page)
    target = f"#/runs/{run_id}/tasks/{task}"
    opened = await page.evaluate(OPEN_AND_TIME, {"target": target, "lastLine": LAST_LINE})
    return {"ms": opened["took"], "bytes": opened["fetched"], "heap": await js_heap(page)}


async def measure(url: str, admin: str, run: dict[str, Any], repeat: int) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {"big": [], "small": []}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 800})
        await page.goto(f"{url}/ui/")
        await page.get_by_label("API token").fill(admin)
        await page.get_by_role("button", name="Sign in").click()
        await page.get_by_role("heading", name="Runs").wait_for()
        await open_once(page, run["id"], "small")  # warm: modules, caches
        for _ in range(repeat):
            for task in ("big", "small"):
                opened = await open_once(page, run["id"], task)
                results[task].append(opened)
                note(
                    f"{task}: {opened['ms']:.0f} ms, heap {opened['heap'] / 2**20:.1f} MiB, "
                    f"{opened['bytes']:.0f} B of log"
                )
        await browser.close()
    return {
        task: {key: statistics.median(o[key] for o in openings) for key in ("ms", "heap", "bytes")}
        for task, openings in results.items()
    }


async def bench(args: argparse.Namespace, root: Path) -> None:
    log_limit = str(2 * args.megabytes * 10**6)
    async with served(root, RUNSVC_MAX_LOG_BYTES=log_limit) as service:
        connection = await asyncpg.connect(service.dsn)
        admin = (await create_token(connection, role="admin", name="bench")).token
        executor = (await create_token(connection, role="executor", name="bench-x")).token
        await connection.close()
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSVC_")}
        service.processes.append(
            subprocess.Popen(
                [
                    *[sys.executable, "-m", "runsvc", "executor", "--server", service.url],
                    *["--name", "bench", "--work-dir", str(root / "work"), "--task-user", ""],
                ],
                cwd=ROOT,
                env={**env, "RUNSVC_TOKEN": executor},
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        run = await finished_run(service.url, admin, args.megabytes)
        note(f"a {args.megabytes} MB log and a 1 KB one written; opening each {args.repeat}x")
        medians = await measure(service.url, admin, run, args.repeat)
    big, small = medians["big"], medians["small"]
    name = f"{args.megabytes} MB log"
    emit(
        f"dashboard log: first render of the tail ({name})",
        big["ms"],
        "ms",
        baseline=small["ms"],
        target="ratio<=3",
    )
    emit(
        f"dashboard log: JS heap ({name})",
        big["heap"] / 2**20,
        "MiB",
        baseline=small["heap"] / 2**20,
        target="ratio<=2",
    )
    emit(
        f"dashboard log: bytes fetched ({name})",
        big["bytes"] / 1024,
        "KiB",
        baseline=args.megabytes * 10**6 / 1024,
        target="value<=600",
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--megabytes", type=int, default=100)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-") as directory:
        asyncio.run(bench(arguments, Path(directory)))
