"""Templates rendered when an attempt starts: recorded in the start, handed to the
executor, and a reference without a value fails the task through an event."""

from __future__ import annotations

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsvc.domain.codec import decode_run, encode_run
from runsvc.domain.config import RunConfig
from runsvc.domain.events import Resolved, TaskStatusChanged, encode_event
from runsvc.domain.view import run_view
from runsvc.service.leases import work_item
from runsvc.wire.executor import compose_environment
from tests.unit.histories import History, config, task
from tests.unit.strategies import run_configs
from tests.unit.test_scheduler_properties import drive_and_replay, replayed


def started(history: History, name: str) -> TaskStatusChanged:
    history.start(name)
    event = history.last[0]
    assert isinstance(event, TaskStatusChanged)
    return event


def test_an_attempt_runs_what_its_templates_render_to() -> None:
    """`run`, `command` items and `env` values render with the ancestors' outputs and
    results, the run's environment, id and group; the start records only what had a
    template, and the executor gets it merged with the rest."""
    history = History(
        config(
            task("version"),
            task("build", "version"),
            {
                "name": "deploy",
                "depends": ["build"],
                "command": ["deploy", "--tag", "v${{ tasks.version.outputs.v }}", "--force"],
                "env": {
                    "PLAIN": "as is",
                    "TARGET": "${{ env.TARGET || 'staging' }}",
                    "WHO": "${{ run.id }}@${{ run.group }}:${{ tasks.build.result }}",
                },
            },
        ),
        environment={"TARGET": "prod"},
    )
    history.start("version")
    history.finish("version", outputs={"v": "1.2.3"})
    history.run_task("build")
    event = started(history, "deploy")
    assert event.status == "running"
    assert event.resolved == Resolved(
        command=["deploy", "--tag", "v1.2.3", "--force"],
        env={"TARGET": "prod", "WHO": "run1@/t:success"},
    )
    run = history.state
    item = work_item(run, run.tasks["deploy"])
    assert item.command == ["deploy", "--tag", "v1.2.3", "--force"]
    assert item.env == {"PLAIN": "as is", "TARGET": "prod", "WHO": "run1@/t:success"}
    assert compose_environment(item)["TARGET"] == "prod"
    for again in (replayed(history), decode_run(encode_run(run))):
        assert again.tasks["deploy"].resolved == event.resolved
        assert encode_run(again) == encode_run(run)
        assert run_view(again) == run_view(run)


def test_a_start_without_templates_keeps_its_bytes() -> None:
    """The start of a task without templates is encoded as before `resolved` existed;
    a shell's own braces are no template."""
    history = History(config(task("a", run="echo ${HOME} }} {{")))
    event = started(history, "a")
    assert event.resolved is msgspec.UNSET
    assert b"resolved" not in encode_event(event)
    assert history.state.tasks["a"].resolved is None
    assert work_item(history.state, history.state.tasks["a"]).run == "echo ${HOME} }} {{"


def test_foreach_children_see_their_item_as_given() -> None:
    history = History(
        config(task("fan", run="echo ${{ item }} ${{ toJSON(item) }}", foreach=["x", 2, True]))
    )
    runs = [started(history, f"fan[{i}]").resolved for i in range(3)]
    assert runs == [
        Resolved(run='echo x "x"'),
        Resolved(run="echo 2 2"),
        Resolved(run="echo true true"),
    ]


def test_an_output_never_set_fails_the_task_naming_it_and_the_run_goes_on() -> None:
    """The task fails at once, without an attempt running or a retry (every attempt
    would render the same); what depends on it is skipped, an independent task still
    runs, and the run fails."""
    history = History(
        config(
            task("version"),
            task(
                "deploy",
                "version",
                env={"TAG": "${{ tasks.version.outputs.missing }}"},
                retry={"max_attempts": 3},
            ),
            task("after", "deploy"),
            task("other"),
        )
    )
    history.start("version")
    history.finish("version", outputs={"v": "1.2.3"})
    history.start("deploy")
    failed = history.last[0]
    assert isinstance(failed, TaskStatusChanged)
    assert (failed.status, failed.attempt, failed.executor) == ("failed", 1, None)
    assert failed.error == (
        "env.TAG: tasks.version.outputs.missing was never set: task 'version' set no such output"
    )
    assert history.status("after") == "skipped"
    assert history.status("deploy") == "failed"
    history.run_task("other")
    assert history.state.phase == "finished"
    assert history.state.result == "failed"
    assert run_view(replayed(history)) == run_view(history.state)


def test_a_failing_function_fails_the_task_too() -> None:
    history = History(
        config(task("a"), task("b", "a", run="echo ${{ fromJSON(tasks.a.outputs.n) }}"))
    )
    history.start("a")
    history.finish("a", outputs={"n": "not json"})
    history.start("b")
    assert history.status("b") == "failed"
    error = history.state.tasks["b"].error
    assert error is not None
    assert error.startswith("run: column 10: fromJSON: not JSON")


def with_templates(plain: RunConfig) -> RunConfig:
    """`plain` with templates that read the first parent's `task` output (which the
    driver's `finish_outputs` sets, and its other endings do not), the item of a foreach
    task, the run and its environment."""
    tasks = []
    for spec in plain.tasks:
        parents = spec.dependencies()
        env = {"BRANCH_SEEN": "${{ env.BRANCH }}/${{ run.id }}"}
        if parents:
            env["FROM"] = f"${{{{ tasks.{parents[0].task}.outputs.task }}}}"
            env["ENDED"] = f"${{{{ tasks.{parents[0].task}.result }}}}"
        run = "echo ${{ item }}" if spec.foreach is not None else spec.run
        tasks.append(msgspec.structs.replace(spec, env=env, run=run))
    return msgspec.structs.replace(plain, tasks=tasks)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_configs().map(with_templates), st.integers(0, 2**32))
def test_replaying_a_history_with_templates_reproduces_its_view(
    templated: RunConfig, seed: int
) -> None:
    """Whether a template renders or fails its task, replaying the events so far and
    decoding the stored state give the live run at every step, and each start recorded
    what its templates rendered to."""
    history = drive_and_replay(templated, seed, {"BRANCH": "main"})
    for event in history.events:
        if not isinstance(event, TaskStatusChanged):
            continue
        if event.status == "running" and not history.state.tasks[event.task].is_parent:
            assert isinstance(event.resolved, Resolved)
            assert event.resolved.env["BRANCH_SEEN"] == "main/run1"
        if event.error and "never set" in event.error:
            assert event.error.startswith("env.FROM: tasks.")
