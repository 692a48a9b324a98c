"""The simulate page (a pasted or uploaded run file, outcomes, what would run wave by wave,
nothing created) and the health page (projections, dumps, executors, refreshed)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from playwright.sync_api import Page, expect

from tests.browser.conftest import call, screenshot, sign_in
from tests.fixtures.processes import Cluster

CHAIN = """\
group: /web/sim
name: release
environment:
  BRANCH: main
config:
  tasks:
    - name: build
      run: make
    - name: lint
      run: make lint
    - name: test
      run: make test
      depends: [build]
    - name: deploy
      run: ./deploy.sh
      depends: [test, lint]
"""


def simulate(page: Page) -> None:
    page.get_by_role("button", name="Simulate", exact=True).click()


def test_simulates_a_pasted_and_an_uploaded_run_file(
    page: Page, web_cluster: Cluster, tmp_path: Path
) -> None:
    sign_in(page, web_cluster)
    page.get_by_role("link", name="Simulate", exact=True).click()
    expect(page.get_by_role("heading", name="Simulate")).to_be_visible()
    page.get_by_label("Run file (YAML or JSON)").fill(CHAIN)
    simulate(page)
    result = page.locator("#sim-result")
    expect(result).to_contain_text("success")
    expect(result).to_contain_text("4 tasks in 3 waves")

    # The outcomes are offered per task once the file was read.
    page.get_by_label("test", exact=True).select_option("failure")
    simulate(page)
    expect(result).to_contain_text("failed")
    waves = page.locator(".wave")
    expect(waves).to_have_count(3)
    expect(waves.nth(0).locator("h3")).to_have_text("Wave 0")
    expect(waves.nth(0).locator(".sim-name")).to_have_text(["build", "lint"])
    expect(waves.nth(1).locator(".sim-name")).to_have_text(["test"])
    expect(waves.nth(1)).to_contain_text("runs and fails")
    skipped = page.locator(".not-run li[data-task=deploy]")
    expect(skipped.locator(".badge")).to_have_text("skipped")
    expect(skipped.locator(".sim-reason")).to_contain_text("test ended failed")
    expect(page.locator(".legend")).to_contain_text("will not run")
    screenshot(page, "simulate")

    # A JSON bare config, uploaded: its own file name in any error, its tasks offered.
    bare = {
        "tasks": [
            {"name": "plan", "run": "plan"},
            {
                "name": "apply",
                "run": "apply",
                "depends": ["plan"],
                "approval": True,
            },
        ]
    }
    upload = tmp_path / "infra.json"
    upload.write_text(json.dumps(bare, indent=2))
    page.get_by_label("Or upload a file").set_input_files(upload)
    expect(page.get_by_label("Run file (YAML or JSON)")).to_have_value(upload.read_text())
    page.get_by_role("button", name="Add variable").click()
    page.get_by_label("Variable 1 name").fill("STAGE")
    page.get_by_label("Variable 1 value").fill("prod")
    simulate(page)
    expect(result).to_contain_text("2 tasks in 2 waves")
    expect(page.locator("li[data-task=apply] .badge")).to_have_text("requires approval")
    expect(page.get_by_label("plan", exact=True)).to_be_visible()
    expect(page.get_by_label("test", exact=True)).to_have_count(0)
    page.get_by_label("apply", exact=True).select_option("no_approval")
    simulate(page)
    expect(result).to_contain_text("blocked")
    expect(page.locator("li[data-task=apply] .badge")).to_have_text("blocked")

    # A mistake in the file names the file and the line.
    page.get_by_label("Run file (YAML or JSON)").fill(
        "config:\n  tasks:\n    - name: a\n     run: x\n"
    )
    simulate(page)
    error = page.locator("#sim-error")
    expect(error).to_contain_text("invalid run file")
    expect(error.locator("code")).to_have_text("run file:4")
    expect(page.locator(".wave")).to_have_count(0)
    page.get_by_label("Run file (YAML or JSON)").fill(CHAIN.replace("[test, lint]", "[test, lnit]"))
    simulate(page)
    expect(error.locator("code")).to_have_text("run file:16: config.tasks[3].depends[1]")
    expect(error).to_contain_text("did you mean 'lint'")
    screenshot(page, "simulate-error")

    # Nothing was created.
    assert call(web_cluster, "GET", "/api/v1/runs?group=/web/sim")["runs"] == []


def test_simulate_reads_well_on_a_phone(page: Page, web_cluster: Cluster) -> None:
    page.set_viewport_size({"width": 390, "height": 844})
    sign_in(page, web_cluster)
    page.goto(web_cluster.url + "/ui/#/simulate")
    page.get_by_label("Run file (YAML or JSON)").fill(CHAIN)
    simulate(page)
    expect(page.locator("#sim-result")).to_contain_text("success")
    wide = page.evaluate("document.documentElement.scrollWidth")
    assert wide <= 390
    screenshot(page, "simulate-phone")


def test_the_health_page_shows_the_executor_and_refreshes(page: Page, web_cluster: Cluster) -> None:
    sign_in(page, web_cluster)
    page.get_by_role("link", name="Health", exact=True).click()
    expect(page.get_by_role("heading", name="Health")).to_be_visible()
    executor = page.locator("tr[data-executor=web]")
    expect(executor).to_be_visible()
    expect(executor.locator("td").nth(1)).to_contain_text("s ago")
    for name in ("run_state", "index"):
        lag = page.locator(f"tr[data-projection={name}] .lag")
        expect(lag).to_have_text(re.compile(r"^\d+ events?$"))
    expect(page.get_by_role("heading", name="Index dumps")).to_be_visible()
    updated = page.locator("#health-updated")
    expect(updated).to_contain_text("updated ")
    first = updated.inner_text()
    screenshot(page, "health")
    # Re-read every 5 s while open.
    expect(updated).not_to_have_text(first, timeout=12_000)
    # Leaving stops the refreshing: the runs page shows, and no error follows.
    page.get_by_role("link", name="Runs", exact=True).click()
    expect(page.get_by_role("heading", name="Runs")).to_be_visible()
    expect(page.locator("#health-updated")).to_have_count(0)
