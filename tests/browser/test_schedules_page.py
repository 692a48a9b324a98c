"""The schedules page in a real browser: the table of schedules, Pause/Resume and Run now
for a submitter, none of them for a reader, one schedule's runs and history."""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import call, screenshot, sign_in, token
from tests.fixtures.processes import Cluster

RUN = {"config": {"tasks": [{"name": "hello", "run": "true"}]}}


def create_schedule(cluster: Cluster, group: str, name: str, **fields: Any) -> dict[str, Any]:
    body = {"group": group, "name": name, "run": RUN, **fields}
    created: dict[str, Any] = call(cluster, "POST", "/api/v1/schedules", body)
    return created


def row(page: Page, schedule_id: str) -> Locator:
    return page.locator(f'tr[data-schedule="{schedule_id}"]')


def test_lists_schedules_runs_one_now_and_pauses_and_resumes(
    page: Page, web_cluster: Cluster
) -> None:
    group = "/web/schedules/list"
    nightly = create_schedule(
        web_cluster,
        group,
        "nightly-etl",
        cron="30 2 * * *",
        timezone="Europe/Berlin",
        overlap="skip",
        catchup="latest",
    )
    held = create_schedule(
        web_cluster, group, "held", cron="*/5 * * * *", catchup="all", paused=True
    )
    # A run it made before the page opened, shown as the last run.
    made = call(web_cluster, "POST", f"/api/v1/schedules/{held['id']}/trigger")
    sign_in(page, web_cluster)
    page.get_by_role("link", name="Schedules", exact=True).click()
    expect(page.get_by_role("heading", name="Schedules")).to_be_visible()
    page.goto(f"{web_cluster.url}/ui/#/schedules?group={group}")
    expect(page.locator(".live")).to_have_text("● live")
    expect(page.locator("tr[data-schedule]")).to_have_count(2)

    first = row(page, nightly["id"])
    expect(first.get_by_role("rowheader")).to_have_text("nightly-etl")
    expect(first.locator("td.when")).to_have_text("30 2 * * * in Europe/Berlin")
    # The next fire time in local time, the instant in the title.
    expect(first.locator("td.next time")).to_have_attribute("title", nightly["next_fire_at"])
    expect(first.locator("td.next time")).not_to_be_empty()
    expect(first.locator("td.policies")).to_have_text("overlap skip · catch-up latest")
    expect(first.locator("td.last")).to_have_text("none yet")
    expect(first.locator("td.fired")).to_have_text("0")
    expect(first.get_by_role("button", name="Pause nightly-etl")).to_be_visible()

    second = row(page, held["id"])
    expect(second.locator("td.when")).to_have_text("*/5 * * * * in UTC")
    expect(second.locator("td.next")).to_have_text("paused")
    expect(second.locator("td.policies")).to_have_text("overlap skip · catch-up all (up to 10)")
    expect(second.locator("td.last a")).to_have_attribute("href", f"#/runs/{made['id']}")
    expect(second.locator("td.last")).to_contain_text("(manual)")
    expect(second.locator("td.fired")).to_have_text("1")
    expect(second.get_by_role("button", name="Resume held")).to_be_visible()
    screenshot(page, "schedules")

    # Pause and Resume turn into each other, and the next fire time follows.
    first.get_by_role("button", name="Pause").click()
    expect(first.locator("td.next")).to_have_text("paused")
    expect(page.locator("#announce")).to_have_text("nightly-etl paused.")
    resume = first.get_by_role("button", name="Resume")
    # The focus stays on the schedule's button across the re-read.
    expect(resume).to_be_focused()
    page.keyboard.press("Enter")
    expect(first.locator("td.next time")).to_be_visible()
    expect(first.get_by_role("button", name="Pause")).to_be_visible()
    assert call(web_cluster, "GET", f"/api/v1/schedules/{nightly['id']}")["paused"] is False

    # Run now: announced, linked, and the row's last run is the new one.
    first.get_by_role("button", name="Run now").click()
    expect(first.locator("td.fired")).to_have_text("1")
    fired = call(web_cluster, "GET", f"/api/v1/schedules/{nightly['id']}")["recent_runs"][0]
    assert fired["manual"] is True
    run = call(web_cluster, "GET", f"/api/v1/runs/{fired['run_id']}")
    name = f"nightly-etl #{run['counter']}"
    expect(page.locator("#announce")).to_have_text(f"nightly-etl: run {name} created.")
    expect(first.locator("td.last a")).to_have_attribute("href", f"#/runs/{run['id']}")
    link = page.get_by_role("link", name=f"Open {name}")
    expect(link).to_have_attribute("href", f"#/runs/{run['id']}")
    screenshot(page, "schedules-run-now")
    link.click()
    expect(page.get_by_role("heading", name=name)).to_be_visible()


def test_a_reader_sees_schedules_without_buttons(page: Page, web_cluster: Cluster) -> None:
    group = "/web/schedules/reader"
    create_schedule(web_cluster, group, "watched", cron="@hourly")
    sign_in(page, web_cluster, token(web_cluster, "reader"))
    page.goto(f"{web_cluster.url}/ui/#/schedules?group={group}")
    expect(page.locator("tr[data-schedule]")).to_have_count(1)
    expect(page.locator("td.when")).to_have_text("@hourly in UTC")
    expect(page.get_by_role("button", name="Pause")).to_have_count(0)
    expect(page.get_by_role("button", name="Run now")).to_have_count(0)
    expect(page.get_by_role("columnheader", name="Actions")).to_have_count(0)
    # On a phone the table keeps what matters and fits the screen.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.locator("td.when")).to_be_visible()
    expect(page.locator("td.group")).to_be_hidden()
    expect(page.locator("td.fired")).to_be_hidden()
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    screenshot(page, "schedules-phone")


def test_a_schedule_that_fires_shows_its_runs_and_history_live(
    page: Page, web_cluster: Cluster
) -> None:
    group = "/web/schedules/one"
    ticking = create_schedule(web_cluster, group, "ticking", cron="@every 1s", overlap="allow")
    sign_in(page, web_cluster)
    page.goto(f"{web_cluster.url}/ui/#/schedules?group={group}")
    # It fires by the clock while the page is open: the list follows without a reload.
    expect(row(page, ticking["id"]).locator("td.last a")).to_be_visible(timeout=15_000)
    page.get_by_role("link", name="ticking", exact=True).click()
    expect(page.get_by_role("heading", name="ticking")).to_be_visible()
    expect(page.locator(".live")).to_have_text("● live")
    expect(page.locator(".recent-runs li").first).to_be_visible()
    history = page.locator("table.events tbody tr")
    expect(history.first.locator("td.type")).to_have_text("schedule_created")
    expect(page.locator("table.events td.type", has_text="schedule_fired").first).to_be_visible()
    # Pausing here is recorded in the history shown, live.
    page.get_by_role("button", name="Pause ticking").click()
    expect(page.locator("table.events td.type", has_text="schedule_paused")).to_have_count(1)
    expect(page.locator(".schedule-facts")).to_contain_text("paused")
    screenshot(page, "schedule")
