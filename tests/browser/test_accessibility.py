"""What a keyboard, a screen reader and a dark screen get from the dashboard."""

from __future__ import annotations

from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import call, screenshot, sign_in
from tests.fixtures.processes import Cluster


def test_the_keyboard_reaches_sign_in_and_the_content(page: Page, web_cluster: Cluster) -> None:
    page.goto(web_cluster.url + "/")
    # The token field has the focus; typing and Enter sign in, no mouse needed.
    expect(page.get_by_label("API token")).to_be_focused()
    page.keyboard.type(web_cluster.tokens["admin"])
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    # From the top of a page the first Tab offers the skip link, which leads to the
    # content without leaving the page (the address's fragment is the route).
    page.reload()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    address = page.url
    page.keyboard.press("Tab")
    skip = page.get_by_role("link", name="Skip to content")
    expect(skip).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("#main")).to_be_focused()
    assert page.url == address
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    # Every field of the filters is labelled.
    for label in ("Name", "Phase", "Result", "Created after", "before"):
        expect(page.get_by_label(label, exact=True)).to_have_count(1)


def test_a_dark_system_gets_a_dark_page(browser: Browser, web_cluster: Cluster) -> None:
    context = browser.new_context(color_scheme="dark", viewport={"width": 1280, "height": 800})
    try:
        page = context.new_page()
        sign_in(page, web_cluster)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        text = page.evaluate("getComputedStyle(document.body).color")
        assert background == "rgb(13, 17, 23)"
        assert text == "rgb(230, 237, 243)"
        screenshot(page, "runs-dark")
    finally:
        context.close()


def test_the_schedules_table_is_described_for_a_screen_reader(
    page: Page, web_cluster: Cluster
) -> None:
    body = {
        "group": "/web/a11y/schedules",
        "name": "described",
        "cron": "0 6 * * MON",
        "timezone": "Europe/Berlin",
        "run": {"config": {"tasks": [{"name": "hello", "run": "true"}]}},
    }
    call(web_cluster, "POST", "/api/v1/schedules", body)
    sign_in(page, web_cluster)
    page.goto(web_cluster.url + "/ui/#/schedules?group=/web/a11y/schedules")
    table = page.get_by_role("table", name="Schedules, by group and name")
    expect(table).to_be_visible()
    # Every header says what it heads; the schedule's name heads its row.
    assert table.locator("th:not([scope])").count() == 0
    expect(table.get_by_role("rowheader", name="described")).to_be_visible()
    # Each button names its schedule, and the keyboard reaches it from the content.
    expect(page.get_by_role("button", name="Pause described", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Run now described", exact=True)).to_be_visible()
    page.locator("#main").focus()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.dataset.action") == "toggle":
            break
    expect(page.get_by_role("button", name="Pause described")).to_be_focused()
    # On a phone, the buttons fit beside the schedule without a sideways scroll.
    page.set_viewport_size({"width": 390, "height": 844})
    expect(page.get_by_role("button", name="Run now described")).to_be_visible()
    screenshot(page, "schedules-phone-submitter")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
