"""Expressions that decide: `when`, a `foreach` that expands at run time, `fail_if` and
`retry_if`, and gathering the outputs of a foreach task's items."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsvc.domain import commands
from runsvc.domain.codec import decode_run, encode_run
from runsvc.domain.config import RunConfig
from runsvc.domain.events import TaskExpanded, TaskStatusChanged, encode_event
from runsvc.domain.fold import apply_event
from runsvc.domain.model import Run
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.validation import validate_config
from runsvc.domain.view import run_view
from tests.unit.histories import History, config, task
from tests.unit.strategies import run_configs
from tests.unit.test_scheduler_properties import drive_and_replay


def problems(*tasks: dict[str, Any]) -> dict[str, str]:
    return {p.path: p.message for p in validate_config(config(*tasks))}


# -- when ---------------------------------------------------------------------------------


def test_when_reads_a_dependency_output_once_it_has_ended() -> None:
    history = History(
        config(
            task("plan"),
            task("deploy", "plan", when="${{ tasks.plan.outputs.deploy == 'yes' }}"),
            task("notify", "plan", when="${{ tasks.plan.outputs.deploy != 'yes' }}"),
            task("after", {"task": "notify", "on": ["success", "skipped"]}),
        )
    )
    history.start("plan")
    history.finish("plan", outputs={"deploy": "yes"})
    assert history.status("deploy") == "scheduled"
    assert history.status("notify") == "skipped"
    assert history.state.tasks["notify"].error == (
        "when ${{ tasks.plan.outputs.deploy != 'yes' }} does not hold"
    )
    assert history.status("after") == "scheduled"


def test_a_when_that_cannot_be_evaluated_fails_its_task_naming_the_reference() -> None:
    history = History(
        config(
            task("plan"),
            task("deploy", "plan", when="${{ tasks.plan.outputs.deploy == 'yes' }}"),
            task("other"),
        )
    )
    history.run_task("plan")
    deploy = history.state.tasks["deploy"]
    assert deploy.status == "failed"
    assert deploy.error == (
        "when: tasks.plan.outputs.deploy was never set: task 'plan' set no such output"
    )
    assert history.state.result == "failed"
    assert history.status("other") == "scheduled"  # the run goes on


def test_when_on_results_and_environment() -> None:
    history = History(
        config(
            task("a"),
            task("b", {"task": "a", "on": ["failure"]}),
            task(
                "c",
                {"task": "a", "on": ["success", "failure"]},
                when="${{ tasks.a.result == 'failed' && env.BRANCH == 'main' }}",
            ),
        ),
        environment={"BRANCH": "main"},
    )
    history.run_task("a", ok=False)
    assert history.status("c") == "scheduled"


# -- dynamic foreach ----------------------------------------------------------------------


def sharded(**fields: Any) -> RunConfig:
    return config(
        task("plan"),
        task(
            "shard",
            "plan",
            foreach="${{ fromJSON(tasks.plan.outputs.shards) }}",
            run="test --shard ${{ item }}",
            **fields,
        ),
        task("report", "shard", run="echo ${{ tasks.shard.outputs.passed }}"),
    )


def test_a_foreach_expression_expands_when_its_dependency_succeeds() -> None:
    history = History(sharded(max_parallel=2))
    history.start("plan")
    history.finish("plan", outputs={"shards": '["a", 2, {"os": "linux"}, true]'})
    expanded = [e for e in history.last if isinstance(e, TaskExpanded)]
    assert [(c.name, c.item, c.json) for c in expanded[0].children] == [
        ("shard[0]", "a", False),
        ("shard[1]", "2", True),
        ("shard[2]", '{"os":"linux"}', True),
        ("shard[3]", "true", True),
    ]
    # max_parallel holds for items made at run time as for those in the file.
    assert [history.status(f"shard[{i}]") for i in range(4)] == [
        "scheduled",
        "scheduled",
        "notstarted",
        "notstarted",
    ]
    history.start("shard[1]")
    assert history.state.tasks["shard[1]"].resolved.run == "test --shard 2"
    history.start("shard[0]")
    assert history.state.tasks["shard[0]"].resolved.run == "test --shard a"


def test_items_outputs_are_gathered_in_item_order() -> None:
    history = History(sharded())
    history.start("plan")
    history.finish("plan", outputs={"shards": "[1, 2, 3]"})
    # They end out of order; the gathered list follows the items.
    for index, passed in ((2, "30"), (0, "10"), (1, None)):
        history.start(f"shard[{index}]")
        history.finish(f"shard[{index}]", outputs={"passed": passed} if passed else None)
    history.start("report")
    assert history.state.tasks["report"].resolved.run == 'echo ["10",null,"30"]'


@pytest.mark.parametrize(
    ("shards", "error"),
    [
        (
            '{"a": 1}',
            "foreach: ${{ fromJSON(tasks.plan.outputs.shards) }} gave an object, not a list",
        ),
        ("[1,", "foreach: column 5: fromJSON: not JSON"),
        (
            "[" + ",".join(["1"] * 1001) + "]",
            "foreach: ${{ fromJSON(tasks.plan.outputs.shards) }} gave 1001 items, "
            "over the limit of 1000",
        ),
    ],
)
def test_a_foreach_expression_that_gives_no_list_fails_its_task(shards: str, error: str) -> None:
    history = History(sharded())
    history.start("plan")
    history.finish("plan", outputs={"shards": shards})
    shard = history.state.tasks["shard"]
    assert shard.status == "failed"
    assert shard.error is not None
    assert shard.error.startswith(error)
    assert history.status("report") == "skipped"
    assert history.state.phase == "finished"
    assert history.state.result == "failed"


def test_the_limit_on_items_is_the_one_the_run_was_created_with() -> None:
    request = CreateRunRequest(group="/t", name="t", config=sharded())
    created = commands.create_run(
        request,
        run_id="r",
        counter=1,
        now=History(sharded()).now,
        admitted=True,
        max_foreach_items=2,
    )
    run: Run | None = None
    for version, event in enumerate(created, start=1):
        run = apply_event(run, event, version=version)
    assert run is not None
    assert run.max_foreach_items == 2
    assert decode_run(encode_run(run)).max_foreach_items == 2
    # The default is not written, so runs created with it keep their bytes.
    default = commands.create_run(
        request, run_id="r", counter=1, now=History(sharded()).now, admitted=True
    )
    assert b"max_foreach_items" not in encode_event(default[0])


def test_an_empty_list_expands_into_nothing_and_succeeds() -> None:
    history = History(sharded())
    history.start("plan")
    history.finish("plan", outputs={"shards": "[]"})
    assert history.status("shard") == "success"
    assert history.status("report") == "scheduled"


def test_a_recreated_run_keeps_what_the_items_of_a_carried_foreach_gathered() -> None:
    history = History(sharded())
    history.start("plan")
    history.finish("plan", outputs={"shards": "[1, 2]"})
    for index in range(2):
        history.start(f"shard[{index}]")
        history.finish(f"shard[{index}]", outputs={"passed": str(index)})
    history.run_task("report", ok=False)
    events = commands.recreate(
        history.state,
        mode="failed",
        tasks=None,
        environment=None,
        run_id="run2",
        counter=2,
        now=history.now,
        admitted=True,
    )
    again: Run | None = None
    for version, event in enumerate(events, start=1):
        again = apply_event(again, event, version=version)
    assert again is not None
    assert again.tasks["shard"].status == "success"
    started = commands.start_attempt(
        again, "report", attempt=again.tasks["report"].attempt, executor="e", now=history.now
    )
    start = started[0]
    assert isinstance(start, TaskStatusChanged)
    assert start.resolved
    assert start.resolved.run == 'echo ["0","1"]'


# -- fail_if and retry_if -----------------------------------------------------------------


def test_fail_if_fails_an_attempt_that_exited_0_and_the_retry_policy_applies() -> None:
    history = History(
        config(
            task(
                "probe",
                fail_if="${{ outputs.status == 'degraded' }}",
                retry={"max_attempts": 2},
            )
        )
    )
    history.start("probe")
    history.finish("probe", outputs={"status": "degraded"})
    probe = history.state.tasks["probe"]
    assert (probe.status, probe.attempt) == ("scheduled", 2)
    assert probe.error == "attempt 1 failed: fail_if ${{ outputs.status == 'degraded' }} held"
    history.start("probe")
    history.finish("probe", outputs={"status": "ok"})
    assert history.status("probe") == "success"


def test_retry_if_retries_only_the_failures_it_names() -> None:
    spec = config(
        task("fetch", retry={"max_attempts": 3}, retry_if="${{ exit_code == 75 }}"),
    )
    history = History(spec)
    history.start("fetch")
    history.finish("fetch", ok=False, exit_code=75)
    assert history.status("fetch") == "scheduled"
    history.start("fetch")
    history.finish("fetch", ok=False, exit_code=2)
    fetch = history.state.tasks["fetch"]
    assert fetch.status == "failed"
    assert fetch.attempt == 2
    assert fetch.error == "exit code 2 (retry_if ${{ exit_code == 75 }} does not hold)"


def test_a_condition_that_cannot_be_evaluated_fails_the_task_for_good() -> None:
    history = History(
        config(
            task(
                "probe",
                fail_if="${{ fromJSON(outputs.count) == 0 }}",
                retry={"max_attempts": 3},
            )
        )
    )
    history.start("probe")
    history.finish("probe", outputs={"count": "many"})
    probe = history.state.tasks["probe"]
    assert probe.status == "failed"
    assert probe.attempt == 1
    assert probe.error is not None
    assert probe.error.startswith("fail_if: column 5: fromJSON")


def test_a_stopping_run_does_not_judge_its_attempts() -> None:
    history = History(config(task("probe", fail_if="${{ outputs.x == 'y' }}")))
    history.start("probe")
    history.stop()
    history.finish("probe", outputs={"x": "y"})
    assert history.status("probe") == "success"


# -- validation ---------------------------------------------------------------------------


def test_conditions_are_checked_at_create_with_their_paths() -> None:
    found = problems(
        task("a"),
        task("b", when="tasks.a.result == 'success'"),
        task("c", "a", when="${{ tasks.a.result }} and more"),
        task("d", foreach="${{ fromJSON(tasks.z.outputs.list) }}"),
        task("e", "a", foreach="${{ item }}"),
        task("f", fail_if="${{ tasks.a.outputs.x }}"),
        task("g", retry_if="${{ exit_code == }}"),
        task("h", run="echo ${{ exit_code }}"),
        task("i", "a", when="${{ outputs.x }}"),
    )
    assert found["config.tasks[1].when"].startswith("must be one ${{ … }} expression")
    assert found["config.tasks[2].when"].startswith("must be one ${{ … }} expression")
    assert found["config.tasks[3].foreach"] == "column 14: unknown task 'z'"
    assert found["config.tasks[4].foreach"] == (
        "column 5: item is only defined in a task with foreach"
    )
    assert found["config.tasks[5].fail_if"] == (
        "column 5: task 'a' is not a dependency of this task, direct or indirect"
    )
    assert found["config.tasks[6].retry_if"].startswith("column 18: unexpected")
    assert found["config.tasks[7].run"].startswith(
        "column 10: exit_code is only defined in fail_if and retry_if"
    )
    assert found["config.tasks[8].when"].startswith(
        "column 5: outputs.x is only defined in fail_if and retry_if"
    )


def test_valid_conditions_pass() -> None:
    assert (
        problems(
            task("a"),
            task("b", "a", when="${{ tasks.a.outputs.go == 'yes' }}"),
            task("c", "a", foreach="${{ fromJSON(tasks.a.outputs.items) }}", run="x ${{ item }}"),
            task("d", "c", fail_if="${{ outputs.s == 'bad' || exit_code != 0 }}"),
            task("e", retry_if="${{ exit_code == 75 }}", foreach=[1, 2], run="${{ item }}"),
        )
        == {}
    )


# -- replay -------------------------------------------------------------------------------


def with_conditions(plain: RunConfig, choices: list[int]) -> RunConfig:
    """Conditions on many tasks, reading what the random drive makes happen: results,
    outputs it may or may not set (`task`), a list or not a list; approval messages."""
    tasks = []
    for spec, choice in zip(plain.tasks, choices, strict=False):
        parents = spec.dependencies()
        fields: dict[str, Any] = {}
        if parents and choice % 4 == 0:
            fields["when"] = f"${{{{ tasks.{parents[0].task}.result == 'success' }}}}"
        elif parents and choice % 4 == 1:
            fields["when"] = f"${{{{ tasks.{parents[0].task}.outputs.task }}}}"
        if spec.foreach is not None and choice % 3 == 0:
            source = f"tasks.{parents[0].task}.outputs.at" if parents else "'[1, \"b\"]'"
            fields["foreach"] = f"${{{{ fromJSON({source}) }}}}"
            fields["run"] = "echo ${{ item }}"
        if choice % 5 == 0:
            fields["fail_if"] = "${{ outputs.task != null && exit_code == 0 }}"
        if choice % 7 == 0:
            fields["retry_if"] = "${{ exit_code == 1 || outputs.why }}"
        if parents and choice % 11 == 0:
            asked = f"ship ${{{{ tasks.{parents[0].task}.outputs.task }}}}?"
            fields["approval"] = {"message": asked}
        tasks.append(msgspec.structs.replace(spec, **fields))
    return msgspec.structs.replace(plain, tasks=tasks)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    run_configs(),
    st.lists(st.integers(0, 2**16), min_size=10, max_size=10),
    st.integers(0, 2**32),
)
def test_replaying_a_history_with_conditions_reproduces_every_decision(
    plain: RunConfig, choices: list[int], seed: int
) -> None:
    """Whatever the conditions decide (skip, fail, expand, retry), the run ends, the
    same steps make the same events, and replaying or decoding the state gives the live
    run at every step."""
    spec = with_conditions(plain, choices)
    assert validate_config(spec) == []
    drive_and_replay(spec, seed, {"BRANCH": "main"})


# -- approval messages --------------------------------------------------------------------


def test_an_approval_message_is_rendered_when_the_wait_begins() -> None:
    history = History(
        config(
            task("build"),
            task(
                "deploy",
                "build",
                approval={
                    "by": ["release"],
                    "message": "Deploy ${{ tasks.build.outputs.version }} to production?",
                },
            ),
        )
    )
    history.start("build")
    history.finish("build", outputs={"version": "1.2.3"})
    wait = next(e for e in history.last if isinstance(e, TaskStatusChanged) and e.task == "deploy")
    assert wait.status == "waiting_approval"
    assert wait.message == "Deploy 1.2.3 to production?"
    view = run_view(history.state).tasks["deploy"]
    assert view.reason == "waiting for approval (by release): Deploy 1.2.3 to production?"
    assert run_view(decode_run(encode_run(history.state))) == run_view(history.state)


def test_an_approval_message_that_cannot_be_rendered_says_why_and_the_task_waits() -> None:
    history = History(
        config(
            task("build"),
            task("deploy", "build", approval={"message": "${{ tasks.build.outputs.v }}"}),
        )
    )
    history.run_task("build")
    deploy = history.state.tasks["deploy"]
    assert deploy.status == "waiting_approval"
    assert deploy.approval_message == (
        "${{ tasks.build.outputs.v }} (not rendered: tasks.build.outputs.v was never set: "
        "task 'build' set no such output)"
    )


def test_an_approval_message_is_checked_at_create() -> None:
    found = problems(
        task("a"),
        task("b", approval={"message": "ok ${{ tasks.a.outputs.v }}"}),
        task("c", "a", foreach=[1], approval={"message": "${{ item }}"}),
    )
    assert found == {
        "config.tasks[1].approval.message": (
            "column 8: task 'a' is not a dependency of this task, direct or indirect"
        ),
        "config.tasks[2].approval.message": (
            "column 5: item is only defined in a task with foreach"
        ),
    }


def test_a_past_state_between_an_event_and_its_scheduling_reads_well() -> None:
    """The state after `first` succeeded but before `second` was scheduled (the same
    command records both) has `second` ready; without a run-wide limit it is about to be
    scheduled, not waiting for a slot of `None` tasks."""
    history = History(config(task("first"), task("second", "first")))
    history.run_task("first")
    success = next(
        i
        for i, e in enumerate(history.events, start=1)
        if isinstance(e, TaskStatusChanged) and e.task == "first" and e.status == "success"
    )
    run: Run | None = None
    for version, event in enumerate(history.events[:success], start=1):
        run = apply_event(run, event, version=version)
    assert run is not None
    assert run_view(run).tasks["second"].reason == "about to be scheduled"
