"""The runs page in a real browser: sign-in, keyset pages, filters, groups, live rows."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from playwright.sync_api import Page, expect

from tests.browser.conftest import create_run, screenshot, sign_in, token
from tests.fixtures.processes import Cluster

# No executor has this label: the runs stay `running`, with their task scheduled.
PARKED = [{"name": "wait", "run": "true", "runs_on": {"pool": "none"}}]


def shown_runs(page: Page) -> list[str]:
    return page.locator("tr[data-run]").evaluate_all("rows => rows.map(r => r.dataset.run)")


def test_pages_through_250_runs_once_each_and_filters(page: Page, web_cluster: Cluster) -> None:
    with ThreadPoolExecutor(8) as pool:
        made = list(
            pool.map(
                lambda i: create_run(web_cluster, f"/web/list/{'ab'[i % 2]}", f"r{i}", PARKED),
                range(250),
            )
        )
    special = create_run(web_cluster, "/web/list/a", "special", PARKED)
    sign_in(page, web_cluster)
    page.goto(web_cluster.url + "/ui/#/runs?group=/web/list")
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.locator("ul.groups li a")).to_have_text(["a", "b"])
    seen: list[str] = []
    pages = 0
    while True:
        page.locator("tr[data-run]").first.wait_for()
        seen += shown_runs(page)
        pages += 1
        if pages == 1:
            screenshot(page, "runs")
        older = page.get_by_role("link", name="Older runs")
        if older.count() == 0:
            break
        cursor_before = page.url
        first_before = page.locator("tr[data-run]").first.get_attribute("data-run")
        older.click()
        page.wait_for_url(lambda url, before=cursor_before: url != before)
        assert "cursor=" in page.url  # the page can be shared
        # The address changes before the older page's rows arrive: until they replace the
        # table, the rows shown are still the page before (pages share no run).
        expect(page.locator("tr[data-run]").first).not_to_have_attribute(
            "data-run", first_before or ""
        )
    # Every run once, nothing else of the group; the newest (made last) first.
    assert len(seen) == len(set(seen)) == 251
    assert set(seen) == {special, *made}
    assert seen[0] == special
    assert pages == 6

    page.get_by_label("Name").fill("special")
    page.get_by_role("button", name="Filter").click()
    # The last page held one run too: the filtered table is there once its run is special.
    expect(page.locator("tr[data-run]").first).to_have_attribute("data-run", special)
    expect(page.locator("tr[data-run]")).to_have_count(1)
    assert shown_runs(page) == [special]
    assert "name=special" in page.url


def test_a_new_run_appears_without_reload(page: Page, web_cluster: Cluster) -> None:
    create_run(web_cluster, "/web/live", "first", PARKED)
    sign_in(page, web_cluster)
    page.goto(web_cluster.url + "/ui/#/runs?group=/web/live")
    expect(page.locator("tr[data-run]")).to_have_count(1)
    expect(page.locator(".live")).to_have_text("● live")
    second = create_run(web_cluster, "/web/live", "second", PARKED)
    expect(page.locator("tr[data-run]").first).to_have_attribute("data-run", second)
    expect(page.locator("tr[data-run]")).to_have_count(2)


def test_a_reader_signs_in_and_an_executor_token_is_refused(
    page: Page, web_cluster: Cluster
) -> None:
    sign_in(page, web_cluster, token(web_cluster, "reader"))
    expect(page.locator("#who")).to_have_text("web-reader (reader)")
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").fill(web_cluster.tokens["executor"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("executor")
    screenshot(page, "sign-in-refused")
    # The token is kept for the tab only, never in the address.
    assert web_cluster.tokens["executor"] not in page.url
