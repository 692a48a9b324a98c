"""The dashboard's "done when": the CI example watched, approved, read and audited in the
browser alone, as README tells a newcomer to do."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from runsvc.infra.documents import Document
from tests.browser.conftest import call, screenshot, sign_in
from tests.browser.test_run_page import card
from tests.fixtures.processes import ROOT, Cluster


def test_the_ci_example_is_watched_approved_read_and_verified(
    page: Page, web_cluster: Cluster
) -> None:
    # Read as `runsvc submit` reads it (YAML 1.2's booleans: `on:` is a key).
    document = Document.read(ROOT / "examples" / "ci.yaml").data
    # The deploy credential, as an admin sets it once (docs/secrets.md).
    secret = {"value": "ci-example-deploy-token", "group": "/acme"}
    call(web_cluster, "PUT", "/api/v1/secrets/DEPLOY_TOKEN", secret)
    run = call(web_cluster, "POST", "/api/v1/runs", document)
    sign_in(page, web_cluster)
    # From the runs list, as a person would get there.
    page.goto(f"{web_cluster.url}/ui/#/runs?group=/acme/shop/main")
    page.get_by_role("link", name="ci #1").click()
    expect(page.get_by_role("heading", name="ci #1")).to_be_visible()

    deploy = card(page, "deploy")
    expect(deploy.locator(".badge")).to_have_text("waiting approval", timeout=60_000)
    expect(deploy.locator(".reason")).to_contain_text("Deploy 1.0.0+3f9c2e1 to production?")
    deploy.get_by_label("Comment (optional)").fill("ship it")
    deploy.get_by_role("button", name="Approve").click()
    expect(page.locator(".run-summary .badge").nth(1)).to_have_text("success", timeout=60_000)
    screenshot(page, "ci-example")

    deploy.get_by_role("link", name="deploy").click()
    log = page.get_by_role("log")
    expect(log).to_contain_text(
        "deploying shop-1.0.0+3f9c2e1.tar.gz as 1.0.0+3f9c2e1 to production"
    )
    screenshot(page, "ci-example-deploy-log")

    page.goto(f"{web_cluster.url}/ui/#/runs/{run['id']}/history")
    approval = page.locator("tr", has_text="task_approved")
    expect(approval.locator("q.comment")).to_have_text("ship it")
    page.get_by_role("button", name="Verify").click()
    expect(page.locator(".verdict.ok")).to_contain_text("hash chain intact")
