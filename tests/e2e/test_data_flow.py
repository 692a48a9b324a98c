"""End to end: data between tasks with real executors: items planned at run time, their
outputs gathered, conditions on outputs, results and exit codes."""

from __future__ import annotations

import json

import aiohttp

from tests.e2e.test_execution import events_of, finished, submit
from tests.fixtures.processes import Cluster


async def log_of(cluster: Cluster, task_id: str) -> str:
    async with (
        aiohttp.ClientSession(headers=cluster.headers()) as session,
        session.get(f"{cluster.url}/api/v1/tasks/{task_id}/logs") as response,
    ):
        assert response.status == 200
        return (await response.read()).decode()


async def test_fifty_items_planned_at_run_time_run_five_at_a_time_and_gather(
    cluster: Cluster,
) -> None:
    """`plan` outputs 50 items; the foreach expands into 50 tasks of which never more
    than `max_parallel: 5` run at once (the executor would take 8), each outputs a value,
    and `gather` receives the 50 values in item order, whatever order they ended in."""
    cluster.start_executor("e1", concurrency=8)
    config = {
        "tasks": [
            {
                "name": "plan",
                "run": """echo "items=[$(seq -s, 0 49)]" >> "$RUNSVC_OUTPUT" """,
            },
            {
                "name": "shard",
                "depends": ["plan"],
                "foreach": "${{ fromJSON(tasks.plan.outputs.items) }}",
                "max_parallel": 5,
                # Later items end sooner, so the order they end in is not the items'.
                "run": 'sleep 0.0$((9 - $RUNSVC_ITEM % 10)); echo "double=$(($RUNSVC_ITEM * 2))"'
                ' >> "$RUNSVC_OUTPUT"',
            },
            {
                "name": "gather",
                "depends": ["shard"],
                "run": "echo '${{ tasks.shard.outputs.double }}'",
            },
        ]
    }
    run_id = (await submit(cluster, config))["id"]
    final = await finished(cluster, run_id, within=120)
    assert (final["phase"], final["result"]) == ("finished", "success")
    items = [final["tasks"][f"shard[{i}]"] for i in range(50)]
    assert [item["item"] for item in items] == [str(i) for i in range(50)]
    assert [item["outputs"] for item in items] == [{"double": str(i * 2)} for i in range(50)]

    running: set[str] = set()
    most = 0
    for event in await events_of(cluster, run_id):
        data = event["data"]
        if event["type"] != "task_status_changed" or not data["task"].startswith("shard["):
            continue
        if data["status"] == "running":
            running.add(data["task"])
        else:
            running.discard(data["task"])
        most = max(most, len(running))
    assert 1 <= most <= 5

    gathered = await log_of(cluster, final["tasks"]["gather"]["id"])
    assert json.loads(gathered) == [str(i * 2) for i in range(50)]


async def test_conditions_decide_on_outputs_results_and_exit_codes(cluster: Cluster) -> None:
    """`retry_if` retries the exit code it names and not another; `fail_if` fails an
    attempt that exited 0 on its outputs; a `when` on an output skips; a foreach on an
    output never set fails only its task, naming it."""
    cluster.start_executor("e1", concurrency=4)
    retry = {"max_attempts": 3}
    transient = "${{ exit_code == 75 }}"
    config = {
        "tasks": [
            {
                "name": "flaky",
                "run": '[ "$RUNSVC_ATTEMPT" -ge 2 ] || exit 75',
                "retry": retry,
                "retry_if": transient,
            },
            {"name": "broken", "run": "exit 3", "retry": retry, "retry_if": transient},
            {
                "name": "probe",
                "run": 'echo "status=degraded" >> "$RUNSVC_OUTPUT"',
                "fail_if": "${{ outputs.status == 'degraded' }}",
            },
            {
                "name": "deploy",
                "depends": ["flaky"],
                "when": "${{ tasks.flaky.outputs.deploy == 'yes' }}",
                "run": "echo deploying",
            },
            {
                "name": "fanout",
                "depends": ["flaky"],
                "foreach": "${{ fromJSON(tasks.flaky.outputs.shards) }}",
                "run": "echo never",
            },
            {
                "name": "announce",
                "depends": [{"task": "probe", "on": ["failure"]}],
                "when": "${{ tasks.probe.result == 'failed' }}",
                "run": "echo probe failed",
            },
        ]
    }
    run_id = (await submit(cluster, config))["id"]
    final = await finished(cluster, run_id, within=90)
    tasks = final["tasks"]
    assert {name: (t["status"], t["attempt"]) for name, t in tasks.items()} == {
        "flaky": ("success", 2),
        "broken": ("failed", 1),
        "probe": ("failed", 1),
        "deploy": ("failed", 0),
        "fanout": ("failed", 0),
        "announce": ("success", 1),
    }
    assert tasks["broken"]["error"] == (
        "exit code 3 (retry_if ${{ exit_code == 75 }} does not hold)"
    )
    assert tasks["probe"]["error"] == "fail_if ${{ outputs.status == 'degraded' }} held"
    assert tasks["probe"]["outputs"] == {"status": "degraded"}
    assert tasks["deploy"]["error"] == (
        "when: tasks.flaky.outputs.deploy was never set: task 'flaky' set no such output"
    )
    assert tasks["fanout"]["error"] == (
        "foreach: tasks.flaky.outputs.shards was never set: task 'flaky' set no such output"
    )
    assert final["result"] == "failed"
