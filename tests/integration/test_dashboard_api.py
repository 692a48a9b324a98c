"""What the dashboard needs from the server: its files, served with a strict policy, and
the small questions it asks (who am I, which groups, runs by name)."""

from __future__ import annotations

import gzip
import json
import random
from datetime import UTC, datetime

import asyncpg
import msgspec

from projections.index_queries import child_groups, group_bounds
from runsvc.http.dashboard import ROOT
from runsvc.infra.settings import Settings
from tests.fixtures.service import Service, start_service
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


CHAIN_YAML = """\
group: /sim/web
name: deploy
environment:
  BRANCH: main
config:
  tasks:
    - name: build
      run: make
    - name: test
      run: make test
      depends: [build]
    - name: deploy
      run: ./deploy.sh
      depends: [test]
"""


async def test_a_yaml_run_file_is_simulated_as_written(service: Service) -> None:
    """The dashboard has no YAML parser: the server reads the run file, a whole run
    document or a bare config, and simulates it; nothing is created."""
    client = service.client
    answer = await client.post(
        "/api/v1/simulations/run-file",
        json={"run_file": CHAIN_YAML, "file_name": "ci.yaml", "outcomes": {"test": "failure"}},
        headers=service.auth("reader"),
    )
    assert answer.status == 200, await answer.text()
    result = await answer.json()
    assert result["result"] == "failed"
    assert [(t["name"], t["status"], t["wave"]) for t in result["tasks"]] == [
        ("build", "would_run", 0),
        ("test", "would_run", 1),
        ("deploy", "skipped", None),
    ]
    bare = await client.post(
        "/api/v1/simulations/run-file",
        json={
            "run_file": json.dumps(
                {"tasks": [{"name": "a", "run": "true", "when": {"env": "GO", "equals": "yes"}}]}
            ),
            "environment": {"GO": "false"},
        },
        headers=service.auth("reader"),
    )
    assert bare.status == 200, await bare.text()
    assert [t["status"] for t in (await bare.json())["tasks"]] == ["skipped"]
    await caught_up(service)
    runs = await (await client.get("/api/v1/runs?group=/sim", headers=service.auth())).json()
    assert runs["runs"] == []


async def test_a_bad_run_file_is_refused_with_its_line(service: Service) -> None:
    client = service.client

    async def refused(text: str, **extra: object) -> list[dict[str, str]]:
        answer = await client.post(
            "/api/v1/simulations/run-file",
            json={"run_file": text, "file_name": "ci.yaml", **extra},
            headers=service.auth("reader"),
        )
        assert answer.status == 400, await answer.text()
        body = await answer.json()
        assert body["code"] == "bad_request"
        return list(body["details"])

    syntax = await refused("config:\n  tasks:\n    - name: a\n     run: x\n")
    assert syntax[0]["path"] == "ci.yaml:4"
    typo = await refused(CHAIN_YAML.replace("depends: [test]", "depend: [test]"))
    assert typo[0]["path"] == "ci.yaml:12: config.tasks[2]"
    assert "did you mean 'depends'" in typo[0]["message"]
    unknown = await refused(CHAIN_YAML.replace("depends: [build]", "depends: [biuld]"))
    assert unknown[0]["path"] == "ci.yaml:11: config.tasks[1].depends[0]"
    bare = await refused("tasks:\n  - name: a\n    run: x\n    depends: [nope]\n")
    assert bare[0]["path"] == "ci.yaml:4: config.tasks[0].depends[0]"
    outcome = await refused(CHAIN_YAML, outcomes={"tset": "failure"})
    assert outcome[0]["path"] == "outcomes.tset"
    top = await refused("- a\n- b\n")
    assert top == [{"path": "ci.yaml:1", "message": "expected a mapping at the top"}]
    laughs = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n"
        for i in range(8)
    )
    bomb = await refused(laughs)
    assert "aliases" in bomb[0]["message"]


async def test_a_run_file_over_the_body_limit_is_413(service_config: Settings) -> None:
    settings = msgspec.structs.replace(service_config, max_body_bytes=2000)
    async for service in start_service(settings):
        answer = await service.client.post(
            "/api/v1/simulations/run-file",
            json={"run_file": CHAIN_YAML + "#" * 3000},
            headers=service.auth("reader"),
        )
        assert answer.status == 413
        assert (await answer.json())["code"] == "too_large"


async def test_the_status_names_projections_dumps_and_executors(service: Service) -> None:
    client = service.client
    await create(service, config={"tasks": [{"name": "a", "run": "true"}]})
    await caught_up(service)
    claimed = await client.post(
        "/api/v1/executor/claim",
        json={"executor": "box-1", "labels": {"pool": "default"}, "wait": "0s"},
        headers=service.auth("executor"),
    )
    assert claimed.status == 200, await claimed.text()
    answer = await client.get("/api/v1/status", headers=service.auth("reader"))
    assert answer.status == 200, await answer.text()
    status = await answer.json()
    assert set(status) == {
        "version",
        "now",
        "head",
        "projections",
        "snapshot",
        "executors_within_s",
        "executors",
        "websocket_subscribers",
        "max_subscribers",
    }
    assert status["head"] >= 2
    names = {p["name"] for p in status["projections"]}
    assert {"run_state", "index"} <= names
    for projection in status["projections"]:
        assert projection["lag"] == status["head"] - projection["position"]
    assert set(status["snapshot"]) >= {"age_s", "failures", "created_at"}
    [seen] = status["executors"]
    assert (seen["name"], seen["labels"], seen["running"]) == ("box-1", {"pool": "default"}, 1)
    assert status["websocket_subscribers"] == 0
    refused = await client.get("/api/v1/status", headers=service.auth("executor"))
    assert refused.status == 403
