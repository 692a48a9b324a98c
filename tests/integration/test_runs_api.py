"""The runs API and the command side on a real PostgreSQL: creation with both key rules
under concurrency, actions, history and audit, simulation, timers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from runsvc.domain import commands
from runsvc.domain.events import SYSTEM, Actor, stream_of
from runsvc.domain.fold import fold
from runsvc.domain.view import run_view
from runsvc.http.keys import PROJECTIONS, SERVICE, STORE
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.service.timers import tick_due
from runsvc.service.writer import Caller
from tests.fixtures.service import Service, service_settings, start_service

PIPELINE: dict[str, Any] = {
    "tasks": [
        {"name": "build", "run": "make"},
        {"name": "test", "run": "make test", "depends": ["build"]},
        {"name": "deploy", "run": "./deploy", "depends": ["test"], "approval": True},
    ]
}


def body(**fields: Any) -> dict[str, Any]:
    return {"group": "/acme/shop/main", "name": "ci", "config": PIPELINE, **fields}


async def caught_up(service: Service) -> None:
    for runner in service.app[PROJECTIONS]:
        await runner.catch_up()


async def create(service: Service, **fields: Any) -> dict[str, Any]:
    response = await service.client.post(
        "/api/v1/runs", json=body(**fields), headers=service.auth("submitter")
    )
    assert response.status in (200, 201), await response.text()
    created: dict[str, Any] = await response.json()
    return created


async def run_tasks(service: Service, run_id: str, *names: str, ok: bool = True) -> None:
    """Play an executor for the named tasks through the command side."""
    runs = service.app[SERVICE]
    caller = Caller(SYSTEM)
    for name in names:
        run = await runs.load(run_id)
        attempt = run.tasks[name].attempt
        await runs.execute(
            run_id,
            lambda r, now, n=name, a=attempt: commands.start_attempt(
                r, n, attempt=a, executor="e", now=now
            ),
            caller,
        )
        await runs.execute(
            run_id,
            lambda r, now, n=name, a=attempt: commands.finish_attempt(
                r, n, attempt=a, succeeded=ok, exit_code=0 if ok else 1, error=None, now=now
            ),
            caller,
        )


async def test_create_get_list_and_errors(service: Service) -> None:
    """Create answers 201 with Location and the run; it can be read back and listed; bad
    input is 400 with paths; unknown runs are 404."""
    client = service.client
    response = await client.post("/api/v1/runs", json=body(), headers=service.auth("submitter"))
    assert response.status == 201
    run = await response.json()
    assert response.headers["Location"] == f"/api/v1/runs/{run['id']}"
    assert (run["phase"], run["result"], run["counter"]) == ("running", "unknown", 1)
    assert run["tasks"]["build"]["status"] == "scheduled"
    assert run["tasks"]["test"]["reason"] == "waiting for build"
    fetched = await (
        await client.get(f"/api/v1/runs/{run['id']}", headers=service.auth("reader"))
    ).json()
    assert fetched["id"] == run["id"]
    await caught_up(service)
    from_projection = await (
        await client.get(f"/api/v1/runs/{run['id']}", headers=service.auth())
    ).json()
    assert from_projection == run
    second = await create(service)
    assert second["counter"] == 2
    await caught_up(service)
    listed = await (
        await client.get("/api/v1/runs?group=/acme&limit=1", headers=service.auth())
    ).json()
    assert [r["id"] for r in listed["runs"]] == [second["id"]]
    assert listed["next_cursor"]

    bad = await client.post(
        "/api/v1/runs",
        json=body(config={"tasks": [{"name": "a", "run": "x", "depends": ["ghost"]}]}),
        headers=service.auth(),
    )
    assert bad.status == 400
    error = await bad.json()
    assert error["code"] == "bad_request"
    assert error["details"][0]["path"] == "config.tasks[0].depends[0]"
    unknown_field = await client.post(
        "/api/v1/runs", json=body(colour="red"), headers=service.auth()
    )
    assert unknown_field.status == 400
    assert "colour" in (await unknown_field.json())["message"]
    typo = await client.post(
        "/api/v1/runs",
        json=body(config={"tasks": [{"name": "a", "run": "x", "timout": "1m"}]}),
        headers=service.auth(),
    )
    assert (await typo.json())["details"][0] == {
        "path": "config.tasks[0]",
        "message": "Object contains unknown field `timout` (did you mean 'timeout'?)",
    }
    malformed = await client.post("/api/v1/runs", data=b"{not json", headers=service.auth())
    assert malformed.status == 400
    missing = await client.get("/api/v1/runs/NOPE", headers=service.auth())
    assert missing.status == 404
    assert (await missing.json())["code"] == "not_found"
    readers_cannot_create = await client.post(
        "/api/v1/runs", json=body(), headers=service.auth("reader")
    )
    assert readers_cannot_create.status == 403


async def test_twenty_concurrent_creates_with_one_idempotency_key_give_one_run(
    service: Service,
) -> None:
    """Concurrent creates with one key return the same run (one 201, the rest 200); once
    that run has ended, the key creates a new run."""
    responses = await asyncio.gather(
        *(
            service.client.post(
                "/api/v1/runs", json=body(idempotency_key="deploy-42"), headers=service.auth()
            )
            for _ in range(20)
        )
    )
    statuses = sorted(r.status for r in responses)
    ids = {(await r.json())["id"] for r in responses}
    assert len(ids) == 1
    assert statuses == [200] * 19 + [201]
    run_id = ids.pop()
    assert await service.app[STORE].stream_version(stream_of(run_id)) > 0
    await service.client.post(f"/api/v1/runs/{run_id}/stop", headers=service.auth())
    fresh = await create(service, idempotency_key="deploy-42")
    assert fresh["id"] != run_id


@pytest.mark.parametrize("key", ["idempotency_key", "concurrency_key"])
async def test_creates_waiting_on_one_key_cannot_starve_its_holder(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig, key: str
) -> None:
    """Creates with one key wait for its lock each on a pooled connection. The create
    holding the lock must read the key's run (is it still going?) without a second
    pooled connection: with every one held by a waiter, it would wait for ever, and the
    waiters for it (seen as a suite that hung in teardown). A pool of four, a run that
    holds the key, and sixteen creates with the same key at once: all are answered."""
    settings = service_settings(database_dsn, tmp_path, object_store_config, db_pool_size=4)
    async for service in start_service(settings):
        holder = await create(service, **{key: "shared"})
        async with asyncio.timeout(60):  # a deadlock stays put; this only ends the test
            created = await asyncio.gather(*(create(service, **{key: "shared"}) for _ in range(16)))
        ids = {run["id"] for run in created}
        if key == "idempotency_key":
            assert ids == {holder["id"]}
        else:
            assert len(ids) == 16
            assert holder["id"] not in ids


async def test_concurrency_key_queues_runs_first_in_first_out(service: Service) -> None:
    """One active run per concurrency key; the others queue in order and show their
    position; when the active run ends the next one starts."""
    first = await create(service, concurrency_key="prod")
    second = await create(service, concurrency_key="prod")
    third = await create(service, concurrency_key="prod")
    assert first["phase"] == "running"
    assert (second["phase"], second["queue_position"]) == ("queued", 1)
    assert (third["phase"], third["queue_position"]) == ("queued", 2)
    assert second["tasks"]["build"]["reason"].startswith("the run is queued")
    await run_tasks(service, first["id"], "build", "test")
    await service.client.post(f"/api/v1/runs/{first['id']}/stop", headers=service.auth())
    runs = service.app[SERVICE]
    assert (await runs.load(second["id"])).phase == "running"
    third_now = await (
        await service.client.get(f"/api/v1/runs/{third['id']}", headers=service.auth())
    ).json()
    assert (third_now["phase"], third_now["queue_position"]) == ("queued", 1)
    cancel = await service.client.post(f"/api/v1/runs/{third['id']}/cancel", headers=service.auth())
    assert cancel.status == 204
    assert (await runs.load(third["id"])).phase == "cancelled"


async def test_concurrent_creates_with_a_concurrency_key_admit_exactly_one(
    service: Service,
) -> None:
    """However many creates race on one concurrency key, exactly one run is admitted."""
    created = await asyncio.gather(*(create(service, concurrency_key="race") for _ in range(10)))
    assert sorted(r["phase"] for r in created) == ["queued"] * 9 + ["running"]
    positions = sorted(r["queue_position"] for r in created if r["phase"] == "queued")
    assert positions == list(range(1, 10))


async def test_two_concurrent_stops_give_one_stop(service: Service) -> None:
    """Two stops at once on a run with a task running: both answer 204, the history holds
    one stop request; once the run has ended, a stop is a conflict."""
    run = await create(service)
    runs = service.app[SERVICE]
    await runs.execute(
        run["id"],
        lambda r, now: commands.start_attempt(r, "build", attempt=1, executor="e", now=now),
        Caller(SYSTEM),
    )
    responses = await asyncio.gather(
        *(
            service.client.post(f"/api/v1/runs/{run['id']}/stop", headers=service.auth())
            for _ in range(2)
        )
    )
    assert [r.status for r in responses] == [204, 204]
    events = await service.app[STORE].read_stream(stream_of(run["id"]))
    assert [e.type for e in events].count("run_stop_requested") == 1
    await runs.execute(
        run["id"],
        lambda r, now: commands.finish_attempt(
            r, "build", attempt=1, succeeded=False, exit_code=143, error="terminated", now=now
        ),
        Caller(SYSTEM),
    )
    stopped = await runs.load(run["id"])
    assert (stopped.phase, stopped.result, stopped.tasks["build"].status) == (
        "finished",
        "stopped",
        "stopped",
    )
    again = await service.client.post(f"/api/v1/runs/{run['id']}/stop", headers=service.auth())
    assert again.status == 409
    assert (await again.json())["code"] == "conflict"


async def test_approval_racing_a_stop_ends_consistent(service: Service) -> None:
    """An approval and a stop at once: either order is fine, but the run ends stopped,
    nothing starts after the stop, and a late approval is a conflict."""
    run = await create(service)
    run_id = run["id"]
    await run_tasks(service, run_id, "build", "test")
    approve, stop = await asyncio.gather(
        service.client.post(
            f"/api/v1/runs/{run_id}/tasks/deploy/approve",
            json={"comment": "go"},
            headers=service.auth(),
        ),
        service.client.post(f"/api/v1/runs/{run_id}/stop", headers=service.auth()),
    )
    assert stop.status == 204
    assert approve.status in (204, 409)
    final = await service.app[SERVICE].load(run_id)
    assert (final.phase, final.result) == ("finished", "stopped")
    assert final.tasks["deploy"].status == "cancelled"
    events = await service.app[STORE].read_stream(stream_of(run_id))
    types = [e.type for e in events]
    stop_at = types.index("run_stop_requested")
    assert not any(
        e.type == "task_status_changed" and e.event.status in ("scheduled", "running")  # type: ignore[union-attr]
        for e in events[stop_at:]
    )


async def test_approve_records_who_and_actions_answer_204(service: Service) -> None:
    """Approving records the token's name; approving again is a conflict; unknown tasks
    are 404; cancelling a running run is a conflict."""
    run = await create(service)
    run_id = run["id"]
    await run_tasks(service, run_id, "build", "test")
    approved = await service.client.post(
        f"/api/v1/runs/{run_id}/tasks/deploy/approve", headers=service.auth("submitter")
    )
    assert approved.status == 204
    view = run_view(await service.app[SERVICE].load(run_id))
    assert view.tasks["deploy"].approved_by == "submitter-token"
    twice = await service.client.post(
        f"/api/v1/runs/{run_id}/tasks/deploy/approve", headers=service.auth()
    )
    assert twice.status == 409
    ghost = await service.client.post(
        f"/api/v1/runs/{run_id}/tasks/ghost/approve", headers=service.auth()
    )
    assert ghost.status == 404
    running_cancel = await service.client.post(
        f"/api/v1/runs/{run_id}/cancel", headers=service.auth()
    )
    assert running_cancel.status == 409


async def test_list_filters_runs_waiting_for_an_approval(service: Service) -> None:
    """`waiting_approval=true` lists the runs with a task whose approval nobody has given
    yet, newest first and paged like every list; `false` the others. An approved gate,
    a stopped run and a run not at its gate yet are not waiting."""
    waiting = [await create(service) for _ in range(3)]
    not_there_yet = await create(service)
    approved, stopped = await create(service), await create(service)
    for run in (*waiting, approved, stopped):
        await run_tasks(service, run["id"], "build", "test")
    assert (
        await service.client.post(
            f"/api/v1/runs/{approved['id']}/tasks/deploy/approve", headers=service.auth()
        )
    ).status == 204
    stop = await service.client.post(f"/api/v1/runs/{stopped['id']}/stop", headers=service.auth())
    assert stop.status == 204
    await caught_up(service)

    async def listed(query: str) -> dict[str, Any]:
        response = await service.client.get(f"/api/v1/runs?{query}", headers=service.auth())
        assert response.status == 200, await response.text()
        page: dict[str, Any] = await response.json()
        return page

    newest_first = [r["id"] for r in reversed(waiting)]
    assert [r["id"] for r in (await listed("waiting_approval=true"))["runs"]] == newest_first
    first = await listed("waiting_approval=true&limit=2")
    assert [r["id"] for r in first["runs"]] == newest_first[:2]
    rest = await listed(f"waiting_approval=true&limit=2&cursor={first['next_cursor']}")
    assert ([r["id"] for r in rest["runs"]], rest["next_cursor"]) == (newest_first[2:], None)
    others = [r["id"] for r in (await listed("waiting_approval=false"))["runs"]]
    assert others == [stopped["id"], approved["id"], not_there_yet["id"]]
    combined = await listed("waiting_approval=true&group=/elsewhere")
    assert combined["runs"] == []
    for not_a_boolean in ("null", "maybe"):
        refused = await service.client.get(
            f"/api/v1/runs?waiting_approval={not_a_boolean}", headers=service.auth()
        )
        assert refused.status == 400
        assert (await refused.json())["details"][0]["path"] == "query.waiting_approval"

    # The gate of the last one approved: it no longer waits.
    await service.client.post(
        f"/api/v1/runs/{waiting[-1]['id']}/tasks/deploy/approve", headers=service.auth()
    )
    await caught_up(service)
    assert [r["id"] for r in (await listed("waiting_approval=true"))["runs"]] == newest_first[1:]
    bad = await service.client.get("/api/v1/runs?waiting_approval=maybe", headers=service.auth())
    assert bad.status == 400
    assert (await bad.json())["details"][0]["path"] == "query.waiting_approval"


async def test_history_state_at_version_and_verify(service: Service) -> None:
    """The run's events in order; the state at version N equals the fold of the first N
    events; verify passes, and fails once a stored event is altered."""
    run = await create(service)
    run_id = run["id"]
    await run_tasks(service, run_id, "build")
    history = await (
        await service.client.get(f"/api/v1/runs/{run_id}/events", headers=service.auth())
    ).json()
    versions = [e["version"] for e in history["events"]]
    assert versions == list(range(1, len(versions) + 1))
    stored = await service.app[STORE].read_stream(stream_of(run_id))
    for n in (1, 3, len(stored)):
        state = await (
            await service.client.get(
                f"/api/v1/runs/{run_id}/state?at_version={n}", headers=service.auth()
            )
        ).json()
        folded = fold(stored[:n])
        assert folded is not None
        expected = run_view(folded)
        assert state["version"] == n == expected.version
        assert {k: v["status"] for k, v in state["tasks"].items()} == {
            k: v.status for k, v in expected.tasks.items()
        }
    by_position = await (
        await service.client.get(
            f"/api/v1/runs/{run_id}/state?at_position={stored[1].position}", headers=service.auth()
        )
    ).json()
    assert by_position["version"] == 2
    bad = await service.client.get(
        f"/api/v1/runs/{run_id}/state?at_version=999", headers=service.auth()
    )
    assert bad.status == 400
    await caught_up(service)
    verified = await (
        await service.client.get(f"/api/v1/runs/{run_id}/verify", headers=service.auth())
    ).json()
    assert verified == {"ok": True, "events": len(stored), "problems": []}
    await service.app[STORE].pool.execute(
        "UPDATE events SET data = set_byte(data, 5, 66) WHERE stream = $1 AND version = 2",
        stream_of(run_id),
    )
    tampered = await (
        await service.client.get(f"/api/v1/runs/{run_id}/verify", headers=service.auth())
    ).json()
    assert tampered["ok"] is False
    assert tampered["problems"]


async def test_recreate_from_failed(service: Service) -> None:
    """Recreating a failed run carries its successes and records where it came from."""
    run = await create(service)
    await run_tasks(service, run["id"], "build")
    await run_tasks(service, run["id"], "test", ok=False)
    response = await service.client.post(
        f"/api/v1/runs/{run['id']}/recreate", json={"from": "failed"}, headers=service.auth()
    )
    assert response.status == 201
    new = await response.json()
    assert new["recreated_from"] == run["id"]
    assert new["tasks"]["build"]["status"] == "success"
    assert new["tasks"]["build"]["id"] == run["tasks"]["build"]["id"]
    assert new["tasks"]["test"]["status"] == "scheduled"
    running = await create(service)
    refused = await service.client.post(
        f"/api/v1/runs/{running['id']}/recreate", headers=service.auth()
    )
    assert refused.status == 409


async def test_simulation_endpoint_writes_nothing(service: Service) -> None:
    """A simulation previews with injected outcomes and leaves the log untouched."""
    before = await service.app[STORE].head()
    response = await service.client.post(
        "/api/v1/simulations",
        json={"config": PIPELINE, "outcomes": {"test": "failure"}},
        headers=service.auth("reader"),
    )
    assert response.status == 200
    result = await response.json()
    assert result["result"] == "failed"
    assert {t["name"]: t["status"] for t in result["tasks"]}["deploy"] == "skipped"
    assert await service.app[STORE].head() == before
    unknown = await service.client.post(
        "/api/v1/simulations",
        json={"config": PIPELINE, "outcomes": {"nope": "failure"}},
        headers=service.auth(),
    )
    assert unknown.status == 400
    assert (await unknown.json())["details"][0]["path"] == "outcomes.nope"


async def test_timers_fail_an_attempt_past_its_timeout(service: Service) -> None:
    """A running attempt past its timeout is failed by the timer loop (claimed from the
    timers table), without any new event from outside."""
    config = {"tasks": [{"name": "slow", "run": "sleep 100", "timeout": "1s"}]}
    run = await create(service, config=config)
    runs = service.app[SERVICE]
    await runs.execute(
        run["id"],
        lambda r, now: commands.start_attempt(r, "slow", attempt=1, executor="e", now=now),
        Caller(SYSTEM),
    )
    await caught_up(service)
    due = await runs.pool.fetchval("SELECT due_at FROM run_timers WHERE run_id = $1", run["id"])
    assert due is not None
    async with asyncio.timeout(15):
        while (await runs.load(run["id"])).phase != "finished":
            await tick_due(runs)
            await asyncio.sleep(0.2)
    final = await runs.load(run["id"])
    assert final.tasks["slow"].status == "failed"
    assert final.tasks["slow"].error == "timed out after 1s"


async def test_concurrent_commands_on_one_run_are_coalesced(service: Service) -> None:
    """Thirty executors starting tasks of one run at once: every start succeeds once,
    each event keeps its own actor, and the commands share far fewer appends."""
    config = {"tasks": [{"name": f"t{i}", "run": "true"} for i in range(30)]}
    run = await create(service, config=config)
    runs = service.app[SERVICE]
    store = service.app[STORE]
    before = store.appender.batches_written

    def start(name: str) -> Any:
        return lambda r, now: commands.start_attempt(r, name, attempt=1, executor=name, now=now)

    await asyncio.gather(
        *(
            runs.execute(run["id"], start(f"t{i}"), Caller(Actor(kind="executor", id=f"t{i}")))
            for i in range(30)
        )
    )
    final = await runs.load(run["id"])
    assert all(final.tasks[f"t{i}"].executor == f"t{i}" for i in range(30))
    events = await store.read_stream(stream_of(run["id"]))
    starts = [e for e in events if e.type == "task_status_changed" and e.event.status == "running"]  # type: ignore[union-attr]
    assert len(starts) == 30
    assert all(e.meta.actor.id == e.event.task for e in starts)  # type: ignore[union-attr]
    assert store.appender.batches_written - before < 30


async def test_a_submitter_cannot_approve_its_own_gate_when_the_rule_says_so(
    service: Service,
) -> None:
    """`approval: {not_submitter: true}`: the token that created the run gets a 403 with
    the error body and nothing is appended; another token approves; the submitter is
    recorded in the run's `run_created` event."""
    gated = {"tasks": [{"name": "deploy", "run": "true", "approval": {"not_submitter": True}}]}
    run = await create(service, config=gated)
    run_id = run["id"]
    store = service.app[STORE]
    created = (await store.read_stream(stream_of(run_id)))[0].event
    assert getattr(created, "submitted_by", None) == "submitter-token"
    before = await store.stream_version(stream_of(run_id))

    own = await service.client.post(
        f"/api/v1/runs/{run_id}/tasks/deploy/approve", headers=service.auth("submitter")
    )
    assert own.status == 403
    error = await own.json()
    assert error["code"] == "forbidden"
    assert "submitter (submitter-token)" in error["message"]
    assert await store.stream_version(stream_of(run_id)) == before

    other = await service.client.post(
        f"/api/v1/runs/{run_id}/tasks/deploy/approve", headers=service.auth("admin")
    )
    assert other.status == 204
    view = run_view(await service.app[SERVICE].load(run_id))
    assert view.tasks["deploy"].approved_by == "admin-token"
