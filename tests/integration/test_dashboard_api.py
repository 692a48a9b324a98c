"""What the dashboard needs from the server: its files, served with a strict policy, and
the small questions it asks (who am I, which groups, runs by name)."""

from __future__ import annotations

import gzip
import random
from datetime import UTC, datetime

import asyncpg

from projections.index_queries import child_groups, group_bounds
from runsvc.http.dashboard import ROOT
from tests.fixtures.service import Service
from tests.integration.test_runs_api import caught_up, create, run_tasks


async def test_the_dashboard_is_served_with_a_strict_policy(service: Service) -> None:
    client = service.client
    root = await client.get("/", allow_redirects=False)
    assert (root.status, root.headers["Location"]) == (302, "/ui/")
    page = await client.get("/ui/", headers={"Accept-Encoding": "identity"})
    assert page.status == 200
    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert await page.read() == (ROOT / "index.html").read_bytes()
    policy = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy
    assert "default-src 'none'" in policy
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    script = await client.get("/ui/pages/runs.js", headers={"Accept-Encoding": "gzip"})
    assert script.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert await script.read() == (ROOT / "pages" / "runs.js").read_bytes()
    assert script.headers["Content-Encoding"] == "gzip"
    again = await client.get("/ui/pages/runs.js", headers={"If-None-Match": script.headers["ETag"]})
    assert again.status == 304
    for missing in ("/ui/nope.js", "/ui/../pyproject.toml", "/ui/%2e%2e/app.py"):
        response = await client.get(missing)
        assert response.status == 404, missing
        assert (await response.json())["code"] == "not_found"


def test_the_whole_dashboard_stays_small() -> None:
    """The issue's budget: under 300 KB compressed, everything included."""
    total = sum(len(gzip.compress(path.read_bytes())) for path in ROOT.rglob("*") if path.is_file())
    assert total < 300_000


async def test_whoami_says_the_role_and_what_it_may_do(service: Service) -> None:
    client = service.client
    reader = await (await client.get("/api/v1/whoami", headers=service.auth("reader"))).json()
    assert reader == {"name": "reader-token", "role": "reader", "permissions": ["read"]}
    submitter = await (await client.get("/api/v1/whoami", headers=service.auth("submitter"))).json()
    assert submitter["permissions"] == ["read", "submit"]
    executor = await client.get("/api/v1/whoami", headers=service.auth("executor"))
    assert executor.status == 403
    nobody = await client.get("/api/v1/whoami")
    assert nobody.status == 401


async def test_runs_by_name_and_the_groups_below_a_group(service: Service) -> None:
    client = service.client
    first = await create(service, group="/shop/web", name="deploy")
    await create(service, group="/shop/web-legacy", name="ci")
    await create(service, group="/shop/api/v2", name="deploy")
    await create(service, group="/shopping", name="deploy")
    await caught_up(service)
    named = await (
        await client.get("/api/v1/runs?group=/shop&name=deploy", headers=service.auth())
    ).json()
    assert [r["group"] for r in named["runs"]] == ["/shop/api/v2", "/shop/web"]
    assert named["runs"][-1]["id"] == first["id"]
    groups = await (await client.get("/api/v1/groups?under=/shop", headers=service.auth())).json()
    assert groups == {
        "under": "/shop",
        "groups": ["/shop/api", "/shop/web", "/shop/web-legacy"],
        "more": False,
    }
    top = await (await client.get("/api/v1/groups?limit=1", headers=service.auth())).json()
    assert top == {"under": "/", "groups": ["/shop"], "more": True}
    bad = await client.get("/api/v1/groups?under=shop", headers=service.auth())
    assert bad.status == 400


async def test_child_groups_agree_with_a_scan_of_every_group(database_dsn: str) -> None:
    """Groups whose names sort around '/' (`b-x` and `b.z` come between `b` and `b/c`)
    are each found once, in order; a random tree agrees with the obvious scan."""
    pool = await asyncpg.create_pool(database_dsn, min_size=1, max_size=2)
    try:
        await pool.execute(
            """CREATE TABLE IF NOT EXISTS runs_index (
                run_id text PRIMARY KEY, group_path text COLLATE "C" NOT NULL,
                name text NOT NULL, counter bigint NOT NULL, phase text NOT NULL,
                result text NOT NULL, created_at timestamptz NOT NULL, started_at timestamptz,
                finished_at timestamptz, created_position bigint NOT NULL,
                updated_position bigint NOT NULL)"""
        )
        rng = random.Random(7)
        segments = ["a", "b", "b-x", "b.z", "b0", "c"]
        paths = {
            "/" + "/".join(rng.choice(segments) for _ in range(rng.randint(1, 4)))
            for _ in range(300)
        }
        paths |= {"/b", "/b-x/y", "/b.z", "/b/c"}
        now = datetime.now(UTC)
        await pool.executemany(
            "INSERT INTO runs_index "
            "VALUES ($1, $2, 'n', 1, 'queued', 'unknown', $3, NULL, NULL, $4, $4)",
            [(f"r{i}", path, now, i) for i, path in enumerate(sorted(paths))],
        )
        for under in ["/", "/b", "/b-x", "/a/b", "/c/c", "/nothing"]:
            _, lower, upper = group_bounds(under)
            below = sorted(p for p in paths if lower <= p < upper)
            expected = sorted({lower + p[len(lower) :].split("/", 1)[0] for p in below})
            found, more = await child_groups(pool, under=under, limit=1000)
            assert (found, more) == (expected, False), under
            if len(expected) > 2:
                assert await child_groups(pool, under=under, limit=2) == (expected[:2], True)
    finally:
        await pool.close()


async def test_a_runs_history_comes_in_pages_that_cover_each_event_once(
    service: Service,
) -> None:
    """The history page reads a long history a page at a time; without `limit` the
    endpoint still answers every event, in the shape it always had."""
    client = service.client
    run_id = (await create(service))["id"]
    await run_tasks(service, run_id, "build", "test")
    path = f"/api/v1/runs/{run_id}/events"
    everything = await (await client.get(path, headers=service.auth("reader"))).json()
    assert set(everything) == {"events"}
    versions = [e["version"] for e in everything["events"]]
    assert len(versions) > 6

    paged: list[int] = []
    after = 0
    while True:
        page = await (
            await client.get(
                path, params={"after_version": after, "limit": 3}, headers=service.auth("reader")
            )
        ).json()
        assert 1 <= len(page["events"]) <= 3
        paged += [e["version"] for e in page["events"]]
        if "next_after_version" not in page:
            break
        after = page["next_after_version"]
        assert after == paged[-1]
    assert paged == versions

    # A page that ends exactly at the last event says nothing follows.
    exact = await (
        await client.get(path, params={"limit": len(versions)}, headers=service.auth())
    ).json()
    assert "next_after_version" not in exact
    assert len(exact["events"]) == len(versions)
    beyond = await (
        await client.get(path, params={"after_version": 10_000, "limit": 5}, headers=service.auth())
    ).json()
    assert beyond == {"events": []}
    tail = await (
        await client.get(path, params={"after_version": 2}, headers=service.auth())
    ).json()
    assert [e["version"] for e in tail["events"]] == versions[2:]

    for bad in (
        {"limit": 0},
        {"limit": 100_000},
        {"limit": "many"},
        {"after_version": -1},
        {"after_version": 2**31},
        {"page": 2},
    ):
        response = await client.get(path, params=bad, headers=service.auth())
        assert response.status == 400, bad
        assert (await response.json())["code"] == "bad_request"
    missing = await client.get(
        "/api/v1/runs/no-such-run/events", params={"limit": 5}, headers=service.auth()
    )
    assert missing.status == 404
