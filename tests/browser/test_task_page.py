"""The task page in a real browser, on a real executor: a log followed live while the
command prints, terminal colours, artifacts downloaded, and a 100 MB log opened at its
end without the page fetching or holding all of it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, Response, expect

from runsvc.infra.seaweed import EmbeddedSeaweed
from tests.browser.conftest import call, create_run, screenshot, sign_in
from tests.fixtures.processes import Cluster, cluster_of_its_own

LOG_LIMIT = 256 * 1024 * 1024
BIG_LOG = 100_000_000
# What the page may fetch and hold for a log of any size: its last 256 KB, plus slack.
FETCH_BUDGET = 600 * 1024
HEAP_BUDGET = 50 * 1024 * 1024


@pytest.fixture(scope="module")
def web_cluster(
    postgres_server: str, seaweed: EmbeddedSeaweed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """conftest's cluster, with a server that keeps a 100 MB log (the default keeps 64
    MiB of an attempt's log)."""
    with cluster_of_its_own(postgres_server, seaweed, tmp_path_factory.mktemp("web")) as cluster:
        cluster.overrides["RUNSVC_MAX_LOG_BYTES"] = str(LOG_LIMIT)
        process, url = cluster.servers[0]
        process.terminate()
        process.wait(timeout=20)
        port = int(url.rsplit(":", 1)[1])
        # On a thread: the session's event loop policy may not allow one on this thread
        # later, when Playwright's sync API runs here.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, cluster.start_server(port)).result()
        cluster.start_executor("web", concurrency=4)
        yield cluster


def task_of(cluster: Cluster, run_id: str, name: str) -> dict[str, Any]:
    return dict(call(cluster, "GET", f"/api/v1/runs/{run_id}")["tasks"][name])


def wait_for_status(
    cluster: Cluster, run_id: str, name: str, wanted: set[str], timeout: float = 120
) -> dict[str, Any]:
    """The task once its status is one of `wanted` (the API polled: a condition, not a
    guess at how long it takes)."""
    deadline = time.monotonic() + timeout
    while True:
        task = task_of(cluster, run_id, name)
        if task["status"] in wanted:
            return task
        assert time.monotonic() < deadline, f"{name} still {task['status']}"
        time.sleep(0.1)


def open_task(page: Page, cluster: Cluster, run_id: str, name: str) -> None:
    page.goto(f"{cluster.url}/ui/#/runs/{run_id}/tasks/{name}")
    expect(page.get_by_role("heading", name=name)).to_be_visible()


def test_a_log_follows_live_while_the_command_prints(
    page: Page, web_cluster: Cluster, tmp_path: Path
) -> None:
    gate = tmp_path / "go-on"
    command = (
        "for i in 1 2 3; do echo line $i; sleep 0.3; done; "
        f"while [ ! -e {gate} ]; do sleep 0.05; done; "
        "for i in 4 5; do echo line $i; sleep 0.3; done; exit 3"
    )
    sign_in(page, web_cluster)
    run_id = create_run(web_cluster, "/web/task", "live", [{"name": "slow", "run": command}])
    open_task(page, web_cluster, run_id, "slow")
    log = page.get_by_role("log")
    expect(log).to_contain_text("line 1")
    expect(log).to_contain_text("line 3")
    # Shown while the command still runs: it waits for the gate.
    assert task_of(web_cluster, run_id, "slow")["status"] == "running"
    expect(page.locator(".heading .badge")).to_have_text("running")
    screenshot(page, "task-live")

    gate.touch()
    expect(page.locator('[data-fact="exit code"]')).to_have_text("3")
    expect(page.locator(".heading .badge")).to_have_text("failed")
    assert log.locator(".line").all_inner_texts() == [
        *(f"line {i}" for i in range(1, 6)),
        "[runsvc] attempt failed: exit code 3",
    ]


def test_terminal_colours_render_as_classes(page: Page, web_cluster: Cluster) -> None:
    command = (
        r"printf '\033[31mred\033[0m plain\n\033[1;92mbright\033[0m\n'; "
        r"printf 'progress 10%%\rprogress 100%%\r\n\033]0;title\007\033[2Kafter\n'"
    )
    run_id = create_run(web_cluster, "/web/task", "colours", [{"name": "paint", "run": command}])
    wait_for_status(web_cluster, run_id, "paint", {"success"})
    sign_in(page, web_cluster)
    open_task(page, web_cluster, run_id, "paint")
    log = page.get_by_role("log")
    expect(log.locator(".ansi-fg1")).to_have_text("red")
    expect(log.locator(".ansi-fg10.ansi-bold")).to_have_text("bright")
    # No escape byte is left in the text, and a rewritten line shows its last state.
    assert log.locator(".line").all_inner_texts() == [
        "red plain",
        "bright",
        "progress 100%",
        "after",
    ]
    assert log.locator("[style]").count() == 0
    screenshot(page, "task-colours")

    # The parser itself, as the browser loads it.
    parsed = page.evaluate(
        """async () => {
            const { parse, visible } = await import("/ui/ansi.js");
            const first = parse("\\x1b[1;31;44mA\\x1b[39mB\\x1b[0mC\\x1b[38;5;2mD");
            return {
                runs: first.runs.map((r) => [r.text, r.fg, r.bg, r.bold]),
                carried: parse("E", parse("\\x1b[33mx").state).runs[0].fg,
                progress: visible("1%\\r50%\\r99%").shown,
            };
        }"""
    )
    assert parsed == {
        "runs": [
            ["A", 1, 4, True],
            ["B", None, 4, True],
            ["C", None, None, False],
            ["D", None, None, False],
        ],
        "carried": 3,
        "progress": "99%",
    }


def test_a_followed_log_keeps_its_last_lines_and_can_fetch_the_rest(
    page: Page, web_cluster: Cluster
) -> None:
    """The log view alone, in the page: a log followed for long drops its oldest lines
    past the limit and counts their bytes as earlier output, to be fetched again; colours
    carry from one line to the next, and a line arriving in pieces is shown whole."""
    sign_in(page, web_cluster)
    result = page.evaluate(
        """async () => {
            const { LogView, MAX_LINES } = await import("/ui/pages/task.js");
            const box = document.createElement("div");
            document.body.append(box);
            const view = new LogView(box, () => {});
            const encoder = new TextEncoder();
            view.start(0, encoder.encode("\\x1b[32mgreen\\nstill green\\x1b[0m\\nhalf"));
            const colours = [...box.querySelectorAll(".line")].map((l) => l.innerHTML);
            view.append(encoder.encode(" a line\\n"));
            const joined = box.querySelectorAll(".line")[2].textContent;
            const before = view.end;
            for (let chunk = 0; chunk < 12; chunk += 1) {
                view.append(encoder.encode("0123456789\\n".repeat(5000)));
            }
            const lines = box.querySelectorAll(".line").length;
            box.remove();
            return { colours, joined, lines, max: MAX_LINES, earlier: view.earlier,
                     expected: before + 60000 * 11 - MAX_LINES * 11 };
        }"""
    )
    assert result["colours"] == [
        '<span class="ansi-fg2">green</span>',
        '<span class="ansi-fg2">still green</span>',
        "half",
    ]
    assert result["joined"] == "half a line"
    assert result["lines"] == result["max"]
    assert result["earlier"] == result["expected"]


def test_artifacts_are_listed_and_downloaded(page: Page, web_cluster: Cluster) -> None:
    command = "mkdir -p dist && printf 'the bytes\\n' > dist/app.txt && echo built"
    run_id = create_run(
        web_cluster,
        "/web/task",
        "artifacts",
        [{"name": "build", "run": command, "artifacts": ["dist"]}],
    )
    wait_for_status(web_cluster, run_id, "build", {"success"})
    sign_in(page, web_cluster)
    open_task(page, web_cluster, run_id, "build")
    row = page.locator('tr[data-artifact="dist/app.txt"]')
    expect(row).to_contain_text("10 B")
    with page.expect_download() as downloading:
        row.get_by_role("button", name="Download dist/app.txt").click()
    download = downloading.value
    assert download.suggested_filename == "app.txt"
    assert Path(download.path()).read_bytes() == b"the bytes\n"
    screenshot(page, "task-artifacts")


def test_a_100_mb_log_opens_at_its_end_within_budget(page: Page, web_cluster: Cluster) -> None:
    command = (
        f"yes 'some log line text here' 2>/dev/null | head -c {BIG_LOG}; "
        "echo; echo 'the very last line'"
    )
    run_id = create_run(web_cluster, "/web/task", "big", [{"name": "loud", "run": command}])
    task = wait_for_status(web_cluster, run_id, "loud", {"success", "failed"})
    assert task["status"] == "success"
    log_responses: list[Response] = []
    page.on("response", lambda r: log_responses.append(r) if "/logs" in r.url else None)
    sign_in(page, web_cluster)
    open_task(page, web_cluster, run_id, "loud")
    log = page.get_by_role("log")
    last = log.locator(".line").last
    expect(last).to_have_text("the very last line")
    expect(last).to_be_in_viewport()
    earlier = page.get_by_role("button", name="earlier — load more")
    expect(earlier).to_contain_text("MB earlier")
    fetched = sum(len(response.body()) for response in log_responses)
    assert 0 < fetched <= FETCH_BUDGET
    heap = js_heap(page)
    assert heap < HEAP_BUDGET, f"{heap / 2**20:.1f} MiB of JS heap"
    screenshot(page, "task-big-log")

    lines = log.locator(".line").count()
    assert cut_lines(page) == 2  # the last two: what `head` cut, and the one after it
    earlier.click()
    expect(log.locator(".line")).not_to_have_count(lines)
    assert log.locator(".line").count() - lines > 10000  # another 256 KB of 24-byte lines
    # The line the first range started in the middle of is whole now, as is every other.
    assert cut_lines(page) == 2
    fetched = sum(len(response.body()) for response in log_responses)
    assert fetched <= 2 * FETCH_BUDGET


def cut_lines(page: Page) -> int:
    """Lines of the big log's page that are not the whole repeated line."""
    return int(
        page.get_by_role("log")
        .locator(".line")
        .evaluate_all(
            "lines => lines.filter(l => l.textContent !== 'some log line text here').length"
        )
    )


def js_heap(page: Page) -> float:
    """The page's used JS heap after a garbage collection (CDP: exact, unlike
    `performance.memory`, which Chromium rounds)."""
    cdp = page.context.new_cdp_session(page)
    cdp.send("HeapProfiler.collectGarbage")
    cdp.send("Performance.enable")
    metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
    cdp.detach()
    return float(metrics["JSHeapUsedSize"])


def test_the_task_page_reads_on_a_phone(page: Page, web_cluster: Cluster) -> None:
    run_id = create_run(
        web_cluster,
        "/web/task",
        "phone",
        [{"name": "short", "run": "echo a rather long line of output that has to wrap on a phone"}],
    )
    wait_for_status(web_cluster, run_id, "short", {"success"})
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, web_cluster)
    open_task(page, web_cluster, run_id, "short")
    expect(page.get_by_role("log")).to_contain_text("has to wrap")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390
    screenshot(page, "task-phone")


def test_markup_a_task_writes_stays_text(page: Page, web_cluster: Cluster) -> None:
    """A task is untrusted: what it prints, outputs or fails with is shown as text on the
    task and run pages, never made into elements (no image loads, no handler runs)."""
    payload = '<img src=x onerror="document.title=42"><b>bold</b>'
    command = (
        f"echo '{payload}'; echo 'note={payload}' >> \"$RUNSVC_OUTPUT\"; "
        f"echo '{payload}' >&2; exit 3"
    )
    run_id = create_run(web_cluster, "/web/task", "markup", [{"name": "evil", "run": command}])
    wait_for_status(web_cluster, run_id, "evil", {"failed"})
    sign_in(page, web_cluster)
    open_task(page, web_cluster, run_id, "evil")
    log = page.get_by_role("log")
    expect(log).to_contain_text(payload)
    expect(page.get_by_text("note")).not_to_have_count(0)
    for shown in (page.locator("main img"), page.locator("main b")):
        expect(shown).to_have_count(0)
    page.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
    expect(page.locator('li.card[data-task="evil"]')).to_be_visible()
    expect(page.locator("main img")).to_have_count(0)
    assert page.title() != "42"
