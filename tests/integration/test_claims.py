"""Crash windows of a claim: what a claim that died halfway leaves behind never blocks the
attempt it was starting (issue: a run stuck forever after a crash)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from runsvc.http.keys import LEASES, SERVICE
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.service.timers import claim_due, tick_due
from runsvc.wire.executor import Completion
from tests.fixtures.service import Service, service_settings, start_service
from tests.integration.test_runs_api import caught_up, create


@pytest.mark.parametrize("state", ["active", "lost"])
async def test_a_claim_that_died_before_the_start_leaves_no_stuck_run(
    service: Service, state: str
) -> None:
    """A lease recorded for an attempt whose start was never appended (the claim crashed in
    between; inserted here by hand), still active or already expired by the lease expiry,
    does not make later claims of that attempt fail: the next claim replaces the orphan,
    starts the attempt, and the run finishes. (Found by the chaos test: an expired orphan
    left the run scheduled forever.)"""
    run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    await caught_up(service)
    leases, runs = service.app[LEASES], service.app[SERVICE]
    entry = await runs.pool.fetchrow("SELECT task_id, attempt FROM ready_tasks")
    assert entry is not None
    now = datetime.now(UTC)
    await runs.pool.execute(
        """
        INSERT INTO leases (lease_id, run_id, task, task_id, attempt, executor, expires_at,
                            last_output_at, state)
        VALUES ('crashed-claim', $1, 'only', $2, $3, 'gone', $4, $5, $6)
        """,
        run["id"],
        entry["task_id"],
        entry["attempt"],
        now + timedelta(seconds=30),
        now,
        state,
    )

    claim = await leases.claim("executor-1", {}, wait_s=0)

    assert claim is not None
    assert claim.task.task == "only"
    rows = await runs.pool.fetch(
        "SELECT lease_id, executor FROM leases WHERE task_id = $1", entry["task_id"]
    )
    assert [(r["lease_id"], r["executor"]) for r in rows] == [(claim.lease, "executor-1")]
    await leases.complete(claim.lease, Completion(status="success", exit_code=0))
    finished = await runs.load(run["id"])
    assert (finished.phase, finished.result) == ("finished", "success")


async def test_a_started_attempt_keeps_its_lease(service: Service) -> None:
    """The other side of the same window: when the attempt did start (the claim died after
    appending the start, before it could settle its reservation), a later claim leaves the
    attempt and its lease alone and hands out nothing."""
    await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    await caught_up(service)
    leases, runs = service.app[LEASES], service.app[SERVICE]
    first = await leases.claim("executor-1", {}, wait_s=0)
    assert first is not None
    # As if the claim had died before settling: its queue entry reserved no more.
    await runs.pool.execute("DELETE FROM claim_reservations")

    assert await leases.claim("executor-2", {}, wait_s=0) is None
    rows = await runs.pool.fetch("SELECT lease_id, state FROM leases")
    assert [(r["lease_id"], r["state"]) for r in rows] == [(first.lease, "active")]


async def test_a_contradicting_completion_is_refused(service: Service) -> None:
    """The same completion sent again (its answer was lost) is 204 again; a different one
    for the same attempt is 409 and appends nothing."""
    run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    await caught_up(service)
    claim = await service.app[LEASES].claim("executor-1", {}, wait_s=0)
    assert claim is not None
    path = f"/api/v1/executor/leases/{claim.lease}/complete"
    headers = service.auth("executor")
    success = {"status": "success", "exit_code": 0}

    first = await service.client.post(path, json=success, headers=headers)
    assert first.status == 204
    version = (await service.app[SERVICE].load(run["id"])).version
    again = await service.client.post(path, json=success, headers=headers)
    assert again.status == 204
    contradiction = await service.client.post(
        path, json={"status": "failed", "exit_code": 1}, headers=headers
    )
    assert contradiction.status == 409
    body = await contradiction.json()
    assert body["code"] == "conflict"
    assert "already completed as success" in body["message"]
    after = await service.app[SERVICE].load(run["id"])
    assert after.version == version
    assert after.tasks["only"].status == "success"


async def test_a_completions_outputs_reach_the_event_the_view_and_the_history(
    service: Service,
) -> None:
    """The outputs of a completion are in the attempt's `task_status_changed` event, the
    run's view (`tasks.<name>.outputs`), its state at that version, and verify still holds.
    The same completion sent again, its outputs in another order, is accepted again;
    other outputs for the same attempt are a 409."""
    run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    run_id = run["id"]
    await caught_up(service)
    claim = await service.app[LEASES].claim("executor-1", {}, wait_s=0)
    assert claim is not None
    assert claim.task.max_output_bytes == 64 * 1024
    path = f"/api/v1/executor/leases/{claim.lease}/complete"
    headers = service.auth("executor")
    outputs = {"version": "1.2.3", "notes": "first line\nsecond line"}
    success = {"status": "success", "exit_code": 0, "outputs": outputs}

    assert (await service.client.post(path, json=success, headers=headers)).status == 204
    again = {**success, "outputs": dict(reversed(outputs.items()))}
    assert (await service.client.post(path, json=again, headers=headers)).status == 204
    other = {**success, "outputs": {"version": "9"}}
    assert (await service.client.post(path, json=other, headers=headers)).status == 409

    await caught_up(service)
    reader = service.auth("reader")
    view = await (await service.client.get(f"/api/v1/runs/{run_id}", headers=reader)).json()
    assert view["tasks"]["only"]["outputs"] == outputs
    history = await (
        await service.client.get(f"/api/v1/runs/{run_id}/events", headers=reader)
    ).json()
    ends = [
        e
        for e in history["events"]
        if e["type"] == "task_status_changed" and "outputs" in e["data"]
    ]
    assert [(e["data"]["status"], e["data"]["outputs"]) for e in ends] == [("success", outputs)]
    state = await (
        await service.client.get(
            f"/api/v1/runs/{run_id}/state?at_version={ends[0]['version']}", headers=reader
        )
    ).json()
    assert state["tasks"]["only"]["outputs"] == outputs
    verified = await (
        await service.client.get(f"/api/v1/runs/{run_id}/verify", headers=reader)
    ).json()
    assert verified["ok"], verified


async def test_outputs_over_the_limit_or_with_bad_names_are_refused(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """With RUNSVC_MAX_OUTPUT_BYTES at 10, claims carry that limit; a completion whose
    names and values hold 11 bytes is a 413 naming the setting, one with a name that is
    not an output name a 400 naming it; neither appends anything, and the attempt can
    still be completed within the rules."""
    settings = service_settings(database_dsn, tmp_path, object_store_config, max_output_bytes=10)
    async for service in start_service(settings):
        run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
        await caught_up(service)
        claim = await service.app[LEASES].claim("executor-1", {}, wait_s=0)
        assert claim is not None
        assert claim.task.max_output_bytes == 10
        version = (await service.app[SERVICE].load(run["id"])).version
        path = f"/api/v1/executor/leases/{claim.lease}/complete"
        headers = service.auth("executor")

        too_large = await service.client.post(
            path,
            json={"status": "success", "exit_code": 0, "outputs": {"key": "1234567x"}},
            headers=headers,
        )
        assert too_large.status == 413
        body = await too_large.json()
        assert body["code"] == "too_large"
        assert body["message"] == (
            "the attempt's outputs hold 11 bytes of names and values; "
            "RUNSVC_MAX_OUTPUT_BYTES allows 10"
        )
        bad_name = await service.client.post(
            path,
            json={"status": "success", "exit_code": 0, "outputs": {"my-key": "1"}},
            headers=headers,
        )
        assert bad_name.status == 400
        assert "outputs" in (await bad_name.json())["message"]
        assert (await service.app[SERVICE].load(run["id"])).version == version

        fits = {"status": "success", "exit_code": 0, "outputs": {"key": "1234567"}}
        assert (await service.client.post(path, json=fits, headers=headers)).status == 204
        task = (await service.app[SERVICE].load(run["id"])).tasks["only"]
        assert (task.status, task.outputs) == ("success", {"key": "1234567"})


async def test_an_executor_that_hung_up_is_granted_nothing(service: Service) -> None:
    """A claim whose executor no longer waits for the answer (it shut down, or gave up its
    long poll) takes nothing: the ready task stays for the next executor, attempt 1."""
    run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    await caught_up(service)
    leases = service.app[LEASES]

    assert await leases.claim("gone", {}, wait_s=5, answerable=lambda: False) is None

    claim = await leases.claim("present", {}, wait_s=0)
    assert claim is not None
    assert (claim.task.task, claim.task.attempt) == ("only", 1)
    task = (await service.app[SERVICE].load(run["id"])).tasks["only"]
    assert task.executor == "present"


async def test_a_task_claimed_as_its_executor_hung_up_is_handed_back(service: Service) -> None:
    """The executor hangs up while its claim is being made: the claimed attempt is handed
    back at once (released, not left to expire) and the next executor gets the task."""
    run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
    await caught_up(service)
    leases, runs = service.app[LEASES], service.app[SERVICE]
    checks = iter([True])  # still there when the claim starts, gone by its answer

    assert await leases.claim("gone", {}, wait_s=5, answerable=lambda: next(checks, False)) is None

    states = [r["state"] for r in await runs.pool.fetch("SELECT state FROM leases")]
    assert states == ["released"]
    await caught_up(service)
    claim = await leases.claim("present", {}, wait_s=0)
    assert claim is not None
    assert claim.task.task == "only"
    assert (await runs.load(run["id"])).tasks["only"].executor == "present"
    # Handed back before anyone had it: a loss that uses no budget.
    assert (await runs.load(run["id"])).tasks["only"].unconfirmed == 1


@pytest.mark.parametrize("confirm", ["none", "heartbeat", "log"])
async def test_a_lease_expired_before_its_executor_confirmed_it_uses_no_budget(
    service: Service, confirm: str
) -> None:
    """The claim's answer never reached its executor (the server crashed after recording
    it): nothing confirms the attempt, its lease expires, and the task is put back as
    never confirmed, even with on_lost=fail. A lease its executor confirmed (a heartbeat,
    output) that expires is an ordinary loss: on_lost=fail fails the task."""
    config = {"tasks": [{"name": "only", "run": "true", "on_lost": "fail"}]}
    run = await create(service, config=config)
    await caught_up(service)
    leases, runs = service.app[LEASES], service.app[SERVICE]
    claim = await leases.claim("executor-1", {}, wait_s=0)
    assert claim is not None
    if confirm == "heartbeat":
        assert await leases.heartbeat(claim.lease) is None
    elif confirm == "log":
        await leases.append_log(claim.lease, 0, b"started\n")
    await runs.pool.execute("UPDATE leases SET expires_at = now() - interval '1 second'")

    assert await leases.expire() == 1

    task = (await runs.load(run["id"])).tasks["only"]
    if confirm == "none":
        assert (task.status, task.attempt, task.lost, task.unconfirmed) == ("scheduled", 2, 0, 1)
        assert task.error == (
            "attempt 1 never confirmed by its executor: "
            "its lease expired before the executor confirmed the attempt"
        )
    else:
        assert (task.status, task.attempt, task.lost, task.unconfirmed) == ("failed", 1, 1, 0)


async def test_an_attempt_log_and_artifact_past_their_limits_are_413(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """An attempt's log keeps what fits its limit and the chunk that crosses it is a 413
    (so the executor stops sending); an artifact over its limit is a 413 and not stored."""
    settings = service_settings(
        database_dsn, tmp_path, object_store_config, max_log_bytes=100, max_artifact_bytes=1000
    )
    async for service in start_service(settings):
        await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
        await caught_up(service)
        claim = await service.app[LEASES].claim("executor-1", {}, wait_s=0)
        assert claim is not None
        headers = service.auth("executor")
        logs = f"/api/v1/executor/leases/{claim.lease}/logs"

        first = await service.client.put(
            logs, data=b"a" * 60, headers={**headers, "X-Log-Offset": "0"}
        )
        assert first.status == 204
        crossing = await service.client.put(
            logs, data=b"b" * 60, headers={**headers, "X-Log-Offset": "60"}
        )
        assert crossing.status == 413
        assert "limit of 100 bytes" in (await crossing.json())["message"]
        beyond = await service.client.put(
            logs, data=b"c", headers={**headers, "X-Log-Offset": "100"}
        )
        assert beyond.status == 413
        stored = await service.client.get(
            f"/api/v1/tasks/{claim.task.task_id}/logs", headers=service.auth("reader")
        )
        assert await stored.read() == b"a" * 60 + b"b" * 40

        artifact = f"/api/v1/executor/leases/{claim.lease}/artifacts/big.bin"
        refused = await service.client.put(artifact, data=b"x" * 2000, headers=headers)
        assert refused.status == 413
        listing = await service.client.get(
            f"/api/v1/tasks/{claim.task.task_id}/artifacts", headers=service.auth("reader")
        )
        assert (await listing.json())["artifacts"] == []


async def test_a_tick_that_decides_nothing_is_not_claimed_again(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    """A due timer whose tick decides nothing and leaves the run nothing to wait for (a
    stale row, as after a crash) is held for good, not ticked again every second."""
    settings = service_settings(
        database_dsn, tmp_path, object_store_config, timer_interval_s=3600.0
    )
    async for service in start_service(settings):
        run = await create(service, config={"tasks": [{"name": "only", "run": "true"}]})
        await caught_up(service)
        runs = service.app[SERVICE]
        await runs.pool.execute(
            "INSERT INTO run_timers (run_id, due_at) VALUES ($1, now() - interval '1 second')",
            run["id"],
        )
        assert await tick_due(runs) == 1
        held = await runs.pool.fetchval(
            "SELECT isfinite(claimed_until) FROM timer_claims WHERE run_id = $1", run["id"]
        )
        assert held is False
        assert await claim_due(runs) == []
