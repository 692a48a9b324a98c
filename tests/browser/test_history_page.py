"""The history page in a real browser: the run as of an event, and a long history read a
page at a time."""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from playwright.sync_api import Page, Request, expect

from tests.browser.conftest import call, create_run, screenshot, sign_in
from tests.fixtures.processes import Cluster


def test_clicking_an_event_shows_the_run_as_of_that_version(
    page: Page, web_cluster: Cluster
) -> None:
    run_id = create_run(
        web_cluster,
        "/web/history/state",
        "steps",
        [
            {"name": "first", "run": "true"},
            {"name": "second", "run": "true", "depends": ["first"]},
        ],
    )
    sign_in(page, web_cluster)
    page.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
    expect(page.locator(".run-summary .badge").nth(1)).to_have_text("success", timeout=20_000)
    page.get_by_role("link", name="History", exact=True).click()
    expect(page.get_by_role("heading", name="steps #1 — history")).to_be_visible()
    finished = call(web_cluster, "GET", f"/api/v1/runs/{run_id}")["version"]
    expect(page.locator("table.events tbody tr")).to_have_count(finished)

    as_of = page.locator("section.as-of")
    expect(as_of).to_be_hidden()
    page.get_by_role("button", name="Show the run as of version 1", exact=True).click()
    expect(as_of.get_by_role("heading", name="As of version 1")).to_be_visible()
    expect(as_of.locator('li.card[data-task="first"] .badge')).to_have_text("notstarted")
    expect(as_of.locator('li.card[data-task="second"] .badge')).to_have_text("notstarted")
    expect(page.locator("tr.chosen")).to_have_attribute("data-version", "1")
    # What the state read from the server, with nothing to act on.
    expect(as_of.get_by_role("button")).to_have_count(0)

    # The event where `first` succeeded: from there on, `second` can start.
    succeeded = page.locator("tr", has_text="first → success")
    version = succeeded.get_attribute("data-version")
    succeeded.get_by_role("button").click()
    expect(as_of.get_by_role("heading", name=f"As of version {version}")).to_be_visible()
    expect(as_of.locator('li.card[data-task="first"] .badge')).to_have_text("success")
    expect(as_of.locator('li.card[data-task="second"] .badge')).to_have_text("notstarted")
    expect(as_of.locator(".badge").first).to_have_text("running")
    screenshot(page, "history-as-of")


def test_a_long_history_loads_a_page_at_a_time(page: Page, web_cluster: Cluster) -> None:
    # Two fan-outs whose items no executor takes: each item's scheduling is an event.
    parked = {"run": "true", "runs_on": {"pool": "none"}}
    run_id = create_run(
        web_cluster,
        "/web/history/long",
        "wide",
        [
            {"name": "east", "foreach": [f"e{i}" for i in range(160)], **parked},
            {"name": "west", "foreach": [f"w{i}" for i in range(160)], **parked},
        ],
    )
    sign_in(page, web_cluster)
    page.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
    expect(page.locator('li.card[data-task="west"] .counts')).to_contain_text("160")
    total = call(web_cluster, "GET", f"/api/v1/runs/{run_id}")["version"]
    assert total > 320

    pages: list[dict[str, list[str]]] = []

    def read(request: Request) -> None:
        if f"/api/v1/runs/{run_id}/events" in request.url:
            pages.append(parse_qs(urlparse(request.url).query))

    page.on("request", read)
    page.get_by_role("link", name="History", exact=True).click()
    rows = page.locator("table.events tbody tr")
    expect(rows).to_have_count(200)
    expect(page.locator(".history-status")).to_have_text("200 events shown; more follow.")
    assert pages == [{"after_version": ["0"], "limit": ["200"]}]
    screenshot(page, "history-long")

    # Scrolling to the end of the table reads the next page.
    page.get_by_role("button", name="Load more").scroll_into_view_if_needed()
    expect(rows).to_have_count(total)
    expect(page.locator(".history-status")).to_have_text(f"All {total} events shown.")
    assert pages[1:] == [{"after_version": ["200"], "limit": ["200"]}]
    versions = rows.evaluate_all("rows => rows.map(r => Number(r.dataset.version))")
    assert versions == list(range(1, total + 1))

    # At the end the button asks for what was written since: here, the stop.
    call(web_cluster, "POST", f"/api/v1/runs/{run_id}/stop")
    page.get_by_role("button", name="Check for newer events").click()
    expect(page.locator("table.events tbody tr", has_text="stop requested")).to_have_count(1)
    assert rows.count() > total
