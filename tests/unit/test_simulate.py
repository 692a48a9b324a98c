"""Simulation: the real scheduler on an in-memory run, with injected outcomes."""

from __future__ import annotations

from typing import Any

import msgspec

from runsvc.domain.requests import SimulationRequest
from runsvc.domain.simulate import SimulationResult, simulate
from tests.unit.histories import config, task

PIPELINE = config(
    task("checkout"),
    task("test", "checkout", retry={"max_attempts": 3, "backoff": "10m"}),
    task("shard", "checkout", foreach=["1", "2"], max_parallel=1),
    task("report", {"task": "test", "on": ["success", "failure"]}),
    task("deploy", "test", approval=True, when={"env": "BRANCH", "equals": "main"}),
    task("announce", "deploy"),
)


def run(outcomes: dict[str, Any] | None = None, branch: str = "main") -> SimulationResult:
    return simulate(
        SimulationRequest(config=PIPELINE, environment={"BRANCH": branch}, outcomes=outcomes or {})
    )


def by_name(result: SimulationResult) -> dict[str, tuple[str, int | None]]:
    return {t.name: (t.status, t.wave) for t in result.tasks}


def test_everything_succeeds_by_default_with_waves_and_expansion() -> None:
    """Tasks not named succeed; approvals are granted; foreach items are listed with
    their parent; waves are topological levels."""
    result = run()
    assert result.result == "success"
    tasks = by_name(result)
    assert tasks["checkout"] == ("would_run", 0)
    assert tasks["test"] == ("would_run", 1)
    assert tasks["shard[0]"] == ("would_run", 1)
    assert tasks["deploy"] == ("requires_approval", 2)
    assert tasks["announce"] == ("would_run", 3)
    assert result.waves == 4
    items = {t.name: (t.expanded_from, t.item) for t in result.tasks if t.expanded_from}
    assert items == {"shard[0]": ("shard", "1"), "shard[1]": ("shard", "2")}


def test_injected_failure_skips_dependents_and_fails_the_run() -> None:
    """A task that fails (every attempt, retries and their waits included) skips what
    needs its success; on_failure dependents still run."""
    result = run({"test": "failure"})
    tasks = by_name(result)
    assert tasks["deploy"][0] == "skipped"
    assert tasks["announce"][0] == "skipped"
    assert tasks["report"][0] == "would_run"
    assert result.result == "failed"


def test_approval_that_never_comes_blocks_what_follows() -> None:
    """`no_approval` blocks the gated task and everything after it."""
    result = run({"deploy": "no_approval"})
    tasks = {t.name: t for t in result.tasks}
    assert tasks["deploy"].status == "blocked"
    assert tasks["announce"].status == "blocked"
    assert "deploy" in tasks["announce"].reason
    assert result.result == "blocked"


def test_when_conditions_are_previewed() -> None:
    """A `when` that does not hold shows the task as skipped with the reason."""
    tasks = {t.name: t for t in run(branch="dev").tasks}
    assert tasks["deploy"].status == "skipped"
    assert "does not hold" in tasks["deploy"].reason


DATA_FLOW = config(
    task("plan"),
    task("shard", "plan", foreach="${{ fromJSON(tasks.plan.outputs.shards) }}"),
    task("deploy", "shard", when="${{ tasks.plan.outputs.deploy == 'yes' }}"),
    task("probe", fail_if="${{ outputs.status == 'degraded' }}"),
    task("after_probe", "probe"),
)


def request(outcomes: dict[str, Any]) -> SimulationRequest:
    # Decoded as the API decodes a body: the long form of an outcome is a struct.
    return msgspec.convert({"config": DATA_FLOW, "outcomes": outcomes}, SimulationRequest)


def simulated(outcomes: dict[str, Any]) -> dict[str, tuple[str, str]]:
    result = simulate(request(outcomes))
    return {t.name: (t.status, t.reason) for t in result.tasks}


def test_injected_outputs_expand_a_foreach_and_decide_conditions() -> None:
    tasks = simulated(
        {
            "plan": {"outputs": {"shards": '["a", "b", "c"]', "deploy": "no"}},
            "probe": {"status": "success", "outputs": {"status": "degraded"}},
        }
    )
    assert [n for n in tasks if n.startswith("shard[")] == ["shard[0]", "shard[1]", "shard[2]"]
    assert tasks["shard"] == ("would_run", "fans out into 3 items")
    assert tasks["deploy"][0] == "skipped"
    assert tasks["probe"] == ("would_run", "runs and fails")
    assert tasks["after_probe"][0] == "skipped"


def test_an_output_the_simulation_was_not_given_blocks_what_reads_it() -> None:
    result = simulate(request({"probe": {"outputs": {"status": "ok"}}}))
    tasks = {t.name: (t.status, t.reason) for t in result.tasks}
    assert result.result == "blocked"
    assert tasks["shard"] == (
        "blocked",
        "foreach: tasks.plan.outputs.shards was never set: task 'plan' set no such output; "
        "give it in the task's outcome",
    )
    assert tasks["deploy"] == ("blocked", "waits for shard, which is blocked")
    assert tasks["probe"] == ("would_run", "runs and succeeds")


def test_a_condition_on_an_attempt_without_its_outputs_blocks_the_task() -> None:
    tasks = simulated({"plan": {"outputs": {"shards": "[]", "deploy": "yes"}}})
    assert tasks["probe"][0] == "blocked"
    assert tasks["probe"][1].startswith("fail_if: outputs.status was never set")
    assert tasks["after_probe"] == ("blocked", "waits for probe, which is blocked")
    assert tasks["deploy"] == ("would_run", "runs and succeeds")
