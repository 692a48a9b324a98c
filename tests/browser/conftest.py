"""Browser tests: Debian's chromium (scripts/test installs it), driven by Playwright's
Python package, against a real `runsvc serve` with a real executor. Each test saves a
screenshot of what it checked under `tests/browser/screenshots/` for review."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from runsvc.infra.seaweed import EmbeddedSeaweed
from tests.fixtures.processes import Cluster, cluster_of_its_own

CHROMIUM = os.environ.get("RUNSVC_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).parent / "screenshots"


@pytest.fixture(scope="module")
def browser(web_cluster: Cluster) -> Iterator[Browser]:
    # After the cluster, which runs asyncio at its setup and teardown: Playwright's sync
    # API keeps a loop running on this thread while it is open.
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package")
    with sync_playwright() as playwright:
        # As root, chromium's sandbox cannot start; the pages are our own.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def web_cluster(
    postgres_server: str, seaweed: EmbeddedSeaweed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """A server and an executor shared by a module's tests."""
    with cluster_of_its_own(postgres_server, seaweed, tmp_path_factory.mktemp("web")) as cluster:
        cluster.start_executor("web", concurrency=4)
        yield cluster


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    opened = browser.new_context(viewport={"width": 1280, "height": 800})
    yield opened
    opened.close()


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda error: errors.append(str(error)))

    def console(message: ConsoleMessage) -> None:
        # An API answer the page expects (a 403 it explains) is logged as a failed load.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            errors.append(message.text)

    opened.on("console", console)
    yield opened
    # A script error or a blocked request (the CSP) is a failure even when the page looked
    # right.
    assert errors == []


def screenshot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOTS / f"{name}.png", full_page=True)


def sign_in(page: Page, cluster: Cluster, token: str | None = None) -> None:
    page.goto(cluster.url + "/")
    page.get_by_label("API token").fill(token or cluster.tokens["admin"])
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("heading", name="Runs").wait_for()


def call(
    cluster: Cluster, method: str, path: str, body: Any = None, token: str | None = None
) -> Any:
    """The API, synchronously: the browser tests drive Playwright's sync API, which owns
    the thread's event loop."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        cluster.url + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {token or cluster.tokens['admin']}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def create_run(cluster: Cluster, group: str, name: str, tasks: list[dict[str, Any]]) -> str:
    run = call(
        cluster, "POST", "/api/v1/runs", {"group": group, "name": name, "config": {"tasks": tasks}}
    )
    return str(run["id"])


def token(cluster: Cluster, role: str) -> str:
    return str(
        call(cluster, "POST", "/api/v1/tokens", {"role": role, "name": f"web-{role}"})["token"]
    )
