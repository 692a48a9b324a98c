"""End to end: `runsvc serve` and `runsvc executor` as processes, real PostgreSQL and
SeaweedFS, runs driven over HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pwd
import signal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runsvc.infra.objectstore import ObjectStore
from tests.fixtures.processes import Cluster, api

TERMINAL = ("finished", "cancelled", "setuperror")


async def submit(cluster: Cluster, config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body = {"group": "/e2e/project", "name": "e2e", "config": config, **fields}
    status, run = await api(cluster, "POST", "/api/v1/runs", json=body)
    assert status == 201, run
    return dict(run)


async def get_run(cluster: Cluster, run_id: str, url: str | None = None) -> dict[str, Any]:
    status, run = await api(cluster, "GET", f"/api/v1/runs/{run_id}")
    assert status == 200, run
    return dict(run)


async def until(cluster: Cluster, run_id: str, check: Any, within: float = 60) -> dict[str, Any]:
    """Re-read the run whenever one of its events arrives over the websocket, until
    `check(run)` holds. Reads come from the projection, which may trail the event by a
    moment, so a quiet spell also triggers a re-read."""
    async with aiohttp.ClientSession(headers=cluster.headers()) as session:
        ws_url = f"{cluster.url}/api/v1/events/ws?run={run_id}"
        async with session.ws_connect(ws_url) as ws, asyncio.timeout(within):
            while True:
                run = await get_run(cluster, run_id)
                if check(run):
                    return run
                with contextlib.suppress(TimeoutError):
                    await ws.receive(timeout=0.5)


async def finished(cluster: Cluster, run_id: str, within: float = 60) -> dict[str, Any]:
    return await until(cluster, run_id, lambda r: r["phase"] in TERMINAL, within)


async def events_of(cluster: Cluster, run_id: str) -> list[dict[str, Any]]:
    status, body = await api(cluster, "GET", f"/api/v1/runs/{run_id}/events")
    assert status == 200
    return list(body["events"])


async def test_a_dag_runs_as_the_run_model_says(cluster: Cluster, tmp_path: Path) -> None:
    """A failing task and its on_failure handler, a flaky task retried until it passes, a
    foreach fan-out that never exceeds its max_parallel, an approval gate and a task that
    only a labelled executor may take: final statuses, attempts and result as expected."""
    shared = tmp_path / "shared"
    (shared / "slots").mkdir(parents=True)
    cluster.start_executor("plain", concurrency=4)
    cluster.start_executor("special", concurrency=2, labels={"pool": "special"})
    flaky = f"""
        n=$(cat {shared}/flaky 2>/dev/null || echo 0); echo $((n+1)) > {shared}/flaky
        [ "$n" -ge 2 ] || {{ echo "flaky attempt $RUNSVC_ATTEMPT fails"; exit 1; }}
        echo "flaky passes on attempt $RUNSVC_ATTEMPT"
    """
    shard = f"""
        mkdir {shared}/slots/$RUNSVC_ITEM
        ls {shared}/slots | wc -l >> {shared}/concurrent
        sleep 0.4
        rmdir {shared}/slots/$RUNSVC_ITEM
    """
    config = {
        "tasks": [
            {"name": "build", "run": "echo building"},
            {"name": "broken", "run": "echo failing; exit 3", "depends": ["build"]},
            {
                "name": "cleanup",
                "run": "echo cleaning",
                "depends": [{"task": "broken", "on": ["failure"]}],
            },
            {"name": "after_broken", "run": "echo never", "depends": ["broken"]},
            {"name": "flaky", "run": flaky, "retry": {"max_attempts": 3, "backoff": "100ms"}},
            {
                "name": "shard",
                "run": shard,
                "foreach": ["a", "b", "c", "d", "e"],
                "max_parallel": 2,
            },
            {"name": "special", "run": "echo special", "runs_on": {"pool": "special"}},
            {"name": "deploy", "run": "echo deploying", "depends": ["build"], "approval": True},
        ]
    }
    run = await submit(cluster, config)
    run_id = run["id"]
    waiting = await until(
        cluster, run_id, lambda r: r["tasks"]["deploy"]["status"] == "waiting_approval"
    )
    assert waiting["tasks"]["deploy"]["reason"] == "waiting for approval"
    status, _ = await api(
        cluster, "POST", f"/api/v1/runs/{run_id}/tasks/deploy/approve", json={"comment": "ok"}
    )
    assert status == 204
    final = await finished(cluster, run_id)
    tasks = final["tasks"]
    statuses = {name: task["status"] for name, task in tasks.items()}
    assert statuses["build"] == "success"
    assert (statuses["broken"], tasks["broken"]["exit_code"]) == ("failed", 3)
    assert statuses["cleanup"] == "success"
    assert statuses["after_broken"] == "skipped"
    assert (statuses["flaky"], tasks["flaky"]["attempt"]) == ("success", 3)
    assert all(statuses[f"shard[{i}]"] == "success" for i in range(5))
    assert statuses["shard"] == "success"
    assert (statuses["special"], tasks["special"]["executor"]) == ("success", "special")
    assert (statuses["deploy"], tasks["deploy"]["approved_by"]) == ("success", "e2e-admin")
    assert (final["phase"], final["result"]) == ("finished", "failed")
    concurrency = [int(line) for line in (shared / "concurrent").read_text().split()]
    assert len(concurrency) == 5
    assert max(concurrency) <= 2


async def test_outputs_reach_the_view_and_the_history_or_fail_the_attempt(
    cluster: Cluster,
) -> None:
    """A task's outputs (one plain, one multi-line) show under `tasks.<name>.outputs` and
    in the event that ended its attempt; a task whose output file is over the limit fails
    with the limit in its error, one whose file is malformed with the line."""
    cluster.start_executor("e1", concurrency=3)
    writes = """
        echo "version=1.2.3" >> "$RUNSVC_OUTPUT"
        printf 'notes<<EOF\nfirst line\nsecond line\nEOF\n' >> "$RUNSVC_OUTPUT"
    """
    config = {
        "tasks": [
            {"name": "writes", "run": writes},
            {"name": "too_much", "run": 'yes line=x | head -n 12000 >> "$RUNSVC_OUTPUT"'},
            {"name": "malformed", "run": 'printf "a=1\nb=2\nnot an output\n" >> "$RUNSVC_OUTPUT"'},
        ]
    }
    run_id = (await submit(cluster, config))["id"]
    final = await finished(cluster, run_id)
    tasks = final["tasks"]
    outputs = {"version": "1.2.3", "notes": "first line\nsecond line"}
    assert (tasks["writes"]["status"], tasks["writes"]["outputs"]) == ("success", outputs)
    assert (tasks["too_much"]["status"], tasks["too_much"]["exit_code"]) == ("failed", 0)
    assert tasks["too_much"]["error"] == (
        "$RUNSVC_OUTPUT: holds more than 65536 bytes, the limit of an attempt's outputs "
        "(RUNSVC_MAX_OUTPUT_BYTES)"
    )
    assert tasks["malformed"]["status"] == "failed"
    assert tasks["malformed"]["error"] == (
        "$RUNSVC_OUTPUT line 3: 'not an output' is neither key=value nor key<<DELIMITER"
    )
    assert "outputs" not in tasks["too_much"]
    assert "outputs" not in tasks["malformed"]
    assert (final["phase"], final["result"]) == ("finished", "failed")
    ended = [
        event["data"]
        for event in await events_of(cluster, run_id)
        if event["type"] == "task_status_changed" and event["data"]["task"] == "writes"
    ][-1]
    assert (ended["status"], ended["outputs"]) == ("success", outputs)


async def test_stopping_a_run_kills_the_running_process_group(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Stop a running run: the task's whole process group is gone within the grace period
    and the run ends stopped."""
    cluster.start_executor("e1", concurrency=1)
    config = {"tasks": [{"name": "long", "run": "echo $$; sleep 300 & sleep 300; wait"}]}
    run = await submit(cluster, config)
    running = await until(cluster, run["id"], lambda r: r["tasks"]["long"]["status"] == "running")
    task_id = running["tasks"]["long"]["id"]
    # The task's first line is its shell's pid, which leads its process group.
    async with (
        aiohttp.ClientSession(headers=cluster.headers()) as session,
        session.get(f"{cluster.url}/api/v1/tasks/{task_id}/logs?follow=true") as response,
    ):
        group = int((await response.content.readline()).decode())
    status, _ = await api(cluster, "POST", f"/api/v1/runs/{run['id']}/stop")
    assert status == 204
    final = await finished(cluster, run["id"], within=30)
    assert (final["phase"], final["result"]) == ("finished", "stopped")
    assert final["tasks"]["long"]["status"] == "stopped"
    assert living_members(group) == []


def living_members(group: int) -> list[int]:
    """Processes of a process group that are not zombies (killed orphans stay zombies
    until their new parent reaps them, which a container's init may never do)."""
    living = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid = fields[0], int(fields[2])
        if pgid == group and state != "Z":
            living.append(int(entry.name))
    return living


async def test_a_task_past_its_timeout_is_killed_and_fails(cluster: Cluster) -> None:
    """A task sleeping past its timeout is killed and fails with the reason."""
    cluster.start_executor("e1", concurrency=1)
    run = await submit(cluster, {"tasks": [{"name": "slow", "run": "sleep 60", "timeout": "1s"}]})
    final = await finished(cluster, run["id"], within=30)
    assert final["tasks"]["slow"]["status"] == "failed"
    assert "timed out" in final["tasks"]["slow"]["error"]
    assert final["result"] == "failed"


async def test_a_lost_executor_is_replaced_and_one_attempt_is_lost(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGKILL an executor mid-task: its lease expires, the attempt is recorded as lost
    (exactly once), and another executor runs the task to success."""
    first = cluster.start_executor("doomed", concurrency=1)
    run = await submit(
        cluster,
        {"tasks": [{"name": "work", "run": "sleep 1.5; echo done", "retry": {"max_attempts": 2}}]},
    )
    running = await until(cluster, run["id"], lambda r: r["tasks"]["work"]["status"] == "running")
    assert running["tasks"]["work"]["executor"] == "doomed"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    cluster.start_executor("rescuer", concurrency=1)
    final = await finished(cluster, run["id"], within=60)
    assert (final["tasks"]["work"]["status"], final["tasks"]["work"]["executor"]) == (
        "success",
        "rescuer",
    )
    assert final["tasks"]["work"]["attempt"] == 2
    lost = [
        e
        for e in await events_of(cluster, run["id"])
        if e["type"] == "task_status_changed" and e["data"]["status"] == "lost"
    ]
    assert len(lost) == 1
    assert lost[0]["data"]["attempt"] == 1


async def test_a_killed_executor_takes_its_tasks_with_it(cluster: Cluster, tmp_path: Path) -> None:
    """SIGKILL an executor while its task (a shell and a child of it) runs: the task's
    processes end too, so the retry that follows never overlaps the first attempt. The
    executor started again on the same work directory removes what the dead one left."""
    pids = tmp_path / "pids"
    doomed = cluster.start_executor("doomed", concurrency=1)
    script = f"sleep 600 & echo $$ $! > {pids}; wait"
    run = await submit(cluster, {"tasks": [{"name": "long", "run": script}]})
    await until(cluster, run["id"], lambda r: r["tasks"]["long"]["status"] == "running")
    for _ in range(600):  # the task writes its pids as it starts; 30 s at most
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
        await asyncio.sleep(0.05)
    shell, sleeper = (int(pid) for pid in pids.read_text().split())
    assert alive(shell)
    assert alive(sleeper)

    os.killpg(doomed.pid, signal.SIGKILL)
    doomed.wait()

    # Nothing tells another process that these ended: poll, for 20 s at most.
    for _ in range(400):
        if not alive(shell) and not alive(sleeper):
            break
        await asyncio.sleep(0.05)
    assert not alive(shell)
    assert not alive(sleeper)

    work_root = cluster.root / "work" / "doomed"
    left = {path.name for path in work_root.iterdir()}
    assert len(left) == 1
    cluster.start_executor("doomed", concurrency=1)
    for _ in range(400):  # swept as the executor starts; 20 s at most
        if not left & {path.name for path in work_root.iterdir()}:
            break
        await asyncio.sleep(0.05)
    assert not left & {path.name for path in work_root.iterdir()}


def alive(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] not in "ZX"


async def test_templates_hand_an_output_to_a_later_task(cluster: Cluster) -> None:
    """A task's output, referenced by a later task's script and env, reaches its process
    rendered, and its start records what ran; a task referencing an output never set
    fails naming it, while an independent task succeeds."""
    cluster.start_executor("e1", concurrency=2)
    config = {
        "tasks": [
            {"name": "version", "run": 'echo "v=1.2.3" >> "$RUNSVC_OUTPUT"'},
            {
                "name": "deploy",
                "depends": ["version"],
                "run": 'echo deploying ${{ tasks.version.outputs.v }}; echo "tag $TAG"',
                "env": {"TAG": "${{ tasks.version.outputs.v }}"},
            },
            {
                "name": "broken",
                "depends": ["version"],
                "run": "echo ${{ tasks.version.outputs.missing }}",
            },
            {"name": "independent", "run": "echo fine"},
        ]
    }
    run_id = (await submit(cluster, config))["id"]
    final = await finished(cluster, run_id)
    tasks = final["tasks"]
    assert {name: task["status"] for name, task in tasks.items()} == {
        "version": "success",
        "deploy": "success",
        "broken": "failed",
        "independent": "success",
    }
    assert tasks["broken"]["error"] == (
        "run: tasks.version.outputs.missing was never set: task 'version' set no such output"
    )
    assert (final["phase"], final["result"]) == ("finished", "failed")
    async with (
        aiohttp.ClientSession(headers=cluster.headers()) as session,
        session.get(f"{cluster.url}/api/v1/tasks/{tasks['deploy']['id']}/logs") as response,
    ):
        assert response.status == 200
        assert await response.read() == b"deploying 1.2.3\ntag 1.2.3\n"
    start = next(
        event["data"]
        for event in await events_of(cluster, run_id)
        if event["type"] == "task_status_changed"
        and event["data"]["task"] == "deploy"
        and event["data"]["status"] == "running"
    )
    assert start["resolved"] == {
        "run": 'echo deploying 1.2.3; echo "tag $TAG"',
        "env": {"TAG": "1.2.3"},
    }


async def test_logs_live_and_archived_byte_for_byte(cluster: Cluster) -> None:
    """A live follow receives the lines while the task runs; once finished, the log is
    served from object storage byte for byte."""
    cluster.start_executor("e1", concurrency=1)
    script = "for i in 1 2 3 4 5; do echo \"line $i: é\"; sleep 0.3; done; printf 'no newline'"
    run = await submit(cluster, {"tasks": [{"name": "talk", "run": script}]})
    running = await until(cluster, run["id"], lambda r: r["tasks"]["talk"]["status"] == "running")
    task_id = running["tasks"]["talk"]["id"]
    followed = b""
    async with (
        aiohttp.ClientSession(headers=cluster.headers()) as session,
        session.get(f"{cluster.url}/api/v1/tasks/{task_id}/logs?follow=true") as response,
    ):
        assert response.status == 200
        async for chunk in response.content.iter_any():
            followed += chunk
    expected = "".join(f"line {i}: é\n" for i in range(1, 6)).encode() + b"no newline"
    assert followed == expected
    await finished(cluster, run["id"])
    async with aiohttp.ClientSession(headers=cluster.headers()) as session:
        async with asyncio.timeout(30):
            while True:  # the move to object storage follows the completion closely
                async with session.get(f"{cluster.url}/api/v1/tasks/{task_id}/logs") as response:
                    archived = await response.read()
                    if response.headers["X-Log-Source"] == "object-storage":
                        break
                await asyncio.sleep(0.1)
    assert archived == expected
    async with ObjectStore.connect(cluster.objects) as objects:
        assert await objects.get(f"logs/{task_id}/1.log") == expected


async def test_two_servers_three_executors_two_hundred_runs(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Two service processes and three executors on one database: 200 runs complete and
    no task attempt is ever executed twice."""
    ledger = tmp_path / "ledger"
    second = await cluster.start_server()
    for index, server in enumerate([cluster.url, second, cluster.url]):
        cluster.start_executor(f"x{index}", concurrency=6, server=server)
    config = {
        "tasks": [{"name": "once", "run": f'echo "$RUNSVC_TASK_ID $RUNSVC_ATTEMPT" >> {ledger}'}]
    }
    created = await asyncio.gather(*(submit(cluster, config) for _ in range(200)))
    ids = [run["id"] for run in created]
    async with asyncio.timeout(180):
        pending = set(ids)
        while pending:
            _, page = await api(cluster, "GET", "/api/v1/runs?group=/e2e&phase=finished&limit=1000")
            pending -= {r["id"] for r in page["runs"]}
            if pending:
                await asyncio.sleep(0.5)
    lines = ledger.read_text().splitlines()
    assert len(lines) == 200
    assert len(set(lines)) == 200
    results = [(await get_run(cluster, run_id))["result"] for run_id in ids[:20]]
    assert set(results) == {"success"}
    json.dumps(lines)


@pytest.mark.skipif(os.geteuid() != 0, reason="only an executor running as root switches users")
async def test_as_root_tasks_run_as_nobody_in_a_work_dir_of_their_own(
    cluster: Cluster, open_dir: Path
) -> None:
    """An executor running as root without --task-user runs its task as nobody: the work
    directory is nobody's alone, the attempt's files beside it (the log spool, the lock)
    are out of the task's sight, USER and HOME say nobody, what the task built is
    uploaded as an artifact, and its output file is nobody's to write."""
    nobody = pwd.getpwnam("nobody")
    cluster.start_executor("root", concurrency=1, task_user=None, work_dir=open_dir / "work")
    script = """
        id -un
        echo "$USER $LOGNAME $HOME"
        stat -c '%U %a' .
        ls -a .. || echo "cannot list the attempt directory"
        cat ../output.log || echo "cannot read the log spool"
        mkdir dist && echo built > dist/app.txt
        echo "file=$(stat -c '%U %a' "$RUNSVC_OUTPUT")" >> "$RUNSVC_OUTPUT"
    """
    task = {"name": "build", "run": script, "artifacts": ["dist"]}
    final = await finished(cluster, (await submit(cluster, {"tasks": [task]}))["id"])
    build = final["tasks"]["build"]
    assert build["status"] == "success", build
    status, log = await api(cluster, "GET", f"/api/v1/tasks/{build['id']}/logs")
    assert status == 200
    lines = log.decode().splitlines()
    assert lines[:3] == ["nobody", f"nobody nobody {nobody.pw_dir}", "nobody 700"]
    assert "cannot list the attempt directory" in lines
    assert "cannot read the log spool" in lines
    assert ".owner" not in log.decode()
    status, artifact = await api(
        cluster, "GET", f"/api/v1/tasks/{build['id']}/artifacts/dist/app.txt"
    )
    assert (status, artifact) == (200, b"built\n")
    assert build["outputs"] == {"file": "nobody 600"}
