"""The run page in a real browser: tasks by wave, live over the websocket, approvals,
queues, and a large foreach kept to one card."""

from __future__ import annotations

from playwright.sync_api import Browser, Locator, Page, expect

from tests.browser.conftest import call, create_run, screenshot, sign_in, token
from tests.fixtures.processes import Cluster

GATED = [
    {"name": "build", "run": "true"},
    {"name": "deploy", "run": "true", "depends": ["build"], "approval": True},
    {"name": "announce", "run": "true", "depends": ["deploy"]},
]


def card(page: Page, task: str) -> Locator:
    return page.locator(f'li.card[data-task="{task}"]')


def test_an_approval_gate_advances_live_and_is_approved_with_a_comment(
    page: Page, browser: Browser, web_cluster: Cluster
) -> None:
    sign_in(page, web_cluster)
    run_id = create_run(web_cluster, "/web/run/gate", "release", GATED)
    page.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
    expect(page.get_by_role("heading", name="release #1")).to_be_visible()
    expect(page.locator(".live")).to_have_text("● live")
    # The waves: build first, then the gate, then what follows it.
    expect(page.locator("section.wave h3")).to_have_text(["Wave 1", "Wave 2", "Wave 3"])
    expect(card(page, "build").locator(".badge")).to_have_text("success")
    expect(card(page, "deploy").locator(".badge")).to_have_text("waiting approval")
    expect(card(page, "deploy").locator(".reason")).to_contain_text("waiting for approval")
    expect(card(page, "announce").locator(".after")).to_have_text("after deploy")
    expect(card(page, "build").get_by_role("link", name="build")).to_have_attribute(
        "href", f"#/runs/{run_id}/tasks/build"
    )
    # One line per dependency.
    expect(page.locator("svg.dag-lines path")).to_have_count(2)
    approve = card(page, "deploy").get_by_role("button", name="Approve")
    expect(approve).to_be_visible()
    screenshot(page, "run-waiting-approval")

    # A reader sees the same run, and no button to act on it.
    reader_context = browser.new_context(viewport={"width": 390, "height": 844})
    try:
        reader = reader_context.new_page()
        sign_in(reader, web_cluster, token(web_cluster, "reader"))
        reader.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
        expect(card(reader, "deploy").locator(".badge")).to_have_text("waiting approval")
        expect(reader.get_by_role("button", name="Approve")).to_have_count(0)
        expect(reader.get_by_role("button", name="Recreate from scratch")).to_have_count(0)
        screenshot(reader, "run-phone")

        card(page, "deploy").get_by_label("Comment (optional)").fill("ship it")
        approve.click()
        # Both pages follow the run to its end without a reload.
        for shown in (page, reader):
            expect(card(shown, "announce").locator(".badge")).to_have_text("success")
            expect(shown.locator(".run-summary .badge").nth(1)).to_have_text("success")
        expect(card(reader, "deploy").locator(".approved")).to_contain_text("“ship it”")
    finally:
        reader_context.close()
    expect(page.locator("#announce")).not_to_be_empty()
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("button", name="Recreate from scratch")).to_be_visible()
    screenshot(page, "run")

    page.get_by_role("link", name="History", exact=True).click()
    expect(page.get_by_role("heading", name="release #1 — history")).to_be_visible()
    approval = page.locator("tr", has_text="task_approved")
    expect(approval.locator("td.what")).to_contain_text("deploy approved by")
    expect(approval.locator("q.comment")).to_have_text("ship it")
    page.get_by_role("button", name="Verify").click()
    expect(page.locator(".verdict.ok")).to_contain_text("hash chain intact")
    screenshot(page, "history")

    # Recreate from scratch opens the new run.
    page.go_back()
    page.get_by_role("button", name="Recreate from scratch").click()
    expect(page.get_by_role("heading", name="release #2")).to_be_visible()
    assert run_id not in page.url


def test_a_queued_run_shows_its_place_and_can_be_cancelled(
    page: Page, web_cluster: Cluster
) -> None:
    def submit(name: str) -> str:
        # No executor has the label: the first run holds the key until it is stopped.
        config = {"tasks": [{"name": "wait", "run": "true", "runs_on": {"pool": "none"}}]}
        body = {"group": "/web/run/queue", "name": name, "concurrency_key": "deploy-eu"}
        return str(call(web_cluster, "POST", "/api/v1/runs", {**body, "config": config})["id"])

    holder = submit("holder")
    queued = submit("queued")
    sign_in(page, web_cluster)
    page.goto(f"{web_cluster.url}/ui/#/runs/{queued}")
    expect(page.locator(".queue")).to_have_text(
        "Queued: 1st in line for concurrency key “deploy-eu” (next to start)."
    )
    expect(card(page, "wait").locator(".reason")).to_contain_text("queued behind another run")
    expect(page.get_by_role("button", name="Stop")).to_have_count(0)
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".run-summary .badge").first).to_have_text("cancelled")
    expect(page.locator(".queue")).to_have_count(0)
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)

    page.goto(f"{web_cluster.url}/ui/#/runs/{holder}")
    expect(card(page, "wait").locator(".reason")).to_contain_text(
        "waiting for an executor with labels pool=none"
    )
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".run-summary .badge").nth(1)).to_have_text("stopped")
    assert call(web_cluster, "GET", f"/api/v1/runs/{holder}")["phase"] == "finished"


def test_a_large_foreach_is_one_card_with_its_items_in_a_list(
    page: Page, web_cluster: Cluster
) -> None:
    items = [f"shard-{i}" for i in range(300)]
    run_id = create_run(
        web_cluster,
        "/web/run/fan",
        "fan-out",
        [
            {"name": "plan", "run": "true"},
            {
                "name": "shards",
                "run": "true",
                "depends": ["plan"],
                "foreach": items,
                "runs_on": {"pool": "none"},
            },
            {"name": "report", "run": "true", "depends": ["shards"]},
        ],
    )
    sign_in(page, web_cluster)
    page.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
    shards = card(page, "shards")
    # Expanded once `plan` ran on the executor.
    expect(shards.locator(".counts")).to_contain_text("300", timeout=20_000)
    expect(shards.locator(".counts .badge")).to_have_text(["scheduled"])
    # Three cards, not three hundred; the items are built only when asked for.
    expect(page.locator("li.card")).to_have_count(3)
    expect(shards.locator(".items li")).to_have_count(0)
    shards.locator("summary", has_text="300 items").click()
    expect(shards.locator(".items li")).to_have_count(300)
    expect(shards.locator('.items li[data-task="shards[7]"] a')).to_have_text("shard-7")
    screenshot(page, "run-foreach")
    page.get_by_role("button", name="Stop").click()
    expect(shards.locator(".counts .badge")).to_have_text(["cancelled"])
    # The list stayed open through the updates.
    expect(shards.locator(".items li")).to_have_count(300)


def test_a_refused_approval_shows_the_servers_reason(page: Page, web_cluster: Cluster) -> None:
    run_id = create_run(
        web_cluster,
        "/web/run/refused",
        "guarded",
        [{"name": "deploy", "run": "true", "approval": {"by": ["release-manager"]}}],
    )
    sign_in(page, web_cluster)
    page.goto(f"{web_cluster.url}/ui/#/runs/{run_id}")
    deploy = card(page, "deploy")
    expect(deploy.locator(".reason")).to_contain_text("by release-manager")
    deploy.get_by_label("Comment (optional)").fill("let me")
    deploy.get_by_role("button", name="Approve").click()
    expect(deploy.get_by_role("alert")).to_have_text(
        "task 'deploy' may be approved only by release-manager"
    )
    # The comment is still there to send again once someone else may.
    expect(deploy.get_by_label("Comment (optional)")).to_have_value("let me")
    expect(deploy.locator(".badge")).to_have_text("waiting approval")
