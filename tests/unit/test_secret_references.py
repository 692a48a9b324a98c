"""`${{ secrets.X }}` in run files: allowed only alone in a task's env, recorded as names
and versions (the rendered value is `***` in the log), and a secret that is not set fails
the attempt naming it while the run goes on by its rules."""

from __future__ import annotations

import msgspec
import pytest

from runsvc.domain import commands, templates
from runsvc.domain.errors import BadRequest, SecretsNeeded
from runsvc.domain.events import Resolved, TaskStatusChanged, encode_event
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.validation import validate_create
from runsvc.domain.view import run_view
from runsvc.service.leases import work_item
from tests.unit.histories import History, config, task
from tests.unit.test_scheduler_properties import replayed

SECRET = "s3cr3t-value"


def problems_of(document: dict[str, object]) -> dict[str, str]:
    request = msgspec.convert({"group": "/g", "name": "r", **document}, CreateRunRequest)
    with pytest.raises(BadRequest) as raised:
        validate_create(request)
    return {problem.path: problem.message for problem in raised.value.details}


def test_a_secret_outside_a_tasks_env_is_refused_with_its_path() -> None:
    """`run`, `command`, `when`, `foreach`, `fail_if`, `retry_if`, an approval message and
    the run's environment cannot name a secret: each is a problem at its path."""
    use = "${{ secrets.TOKEN }}"
    found = problems_of(
        {
            "config": {
                "tasks": [
                    {"name": "a", "run": f"echo {use}"},
                    {"name": "b", "command": ["echo", use]},
                    {"name": "c", "run": "x", "when": "${{ secrets.TOKEN == 'x' }}"},
                    {"name": "d", "run": "x", "foreach": "${{ fromJSON(secrets.TOKEN) }}"},
                    {"name": "e", "run": "x", "fail_if": "${{ secrets.TOKEN }}"},
                    {"name": "f", "run": "x", "approval": {"message": f"ok? {use}"}},
                    {"name": "g", "run": "x", "retry_if": "${{ secrets.TOKEN }}"},
                ]
            },
            "environment": {"TOKEN": use},
            "static_environment": {"OTHER": use},
        }
    )
    assert set(found) == {
        "config.tasks[0].run",
        "config.tasks[1].command[1]",
        "config.tasks[2].when",
        "config.tasks[3].foreach",
        "config.tasks[4].fail_if",
        "config.tasks[5].approval.message",
        "config.tasks[6].retry_if",
        "environment.TOKEN",
        "static_environment.OTHER",
    }
    assert "only in a task's env" in found["config.tasks[0].run"]


def test_in_env_a_secret_must_stand_alone_and_be_a_secret_name() -> None:
    """Nothing is computed on a secret (a comparison could tell its value); text around
    the `${{ … }}` is fine."""
    found = problems_of(
        {
            "config": {
                "tasks": [
                    {
                        "name": "a",
                        "run": "x",
                        "env": {
                            "OK": "Bearer ${{ secrets.TOKEN }}",
                            "COMPARED": "${{ secrets.TOKEN == 'x' }}",
                            "DEFAULTED": "${{ secrets.TOKEN || 'none' }}",
                            "BADNAME": "${{ secrets['a-b'] }}",
                        },
                    }
                ]
            }
        }
    )
    assert set(found) == {
        "config.tasks[0].env.COMPARED",
        "config.tasks[0].env.DEFAULTED",
        "config.tasks[0].env.BADNAME",
    }
    assert "must stand alone" in found["config.tasks[0].env.COMPARED"]
    assert "not a secret name" in found["config.tasks[0].env.BADNAME"]


def deploy_history() -> History:
    return History(
        config(
            task("version"),
            task(
                "deploy",
                "version",
                env={
                    "TOKEN": "${{ secrets.DEPLOY_TOKEN }}",
                    "HEADER": "v${{ tasks.version.outputs.v }} ${{ secrets.OTHER }}",
                    "PLAIN": "plain",
                },
            ),
            task("after", "deploy"),
            task("other"),
        )
    )


def test_a_start_records_names_and_versions_and_masks_what_it_rendered() -> None:
    """The start needs the versions (without them it asks for them); it records them and
    `***` where a secret stands. The executor's env gets the values only through
    `render_secret_env`, which the claim's answer alone carries."""
    history = deploy_history()
    history.start("version")
    history.finish("version", outputs={"v": "1.2"})
    run = history.state
    deploy = run.tasks["deploy"]
    assert templates.secrets_of(deploy.spec) == ["DEPLOY_TOKEN", "OTHER"]
    with pytest.raises(SecretsNeeded) as needed:
        commands.start_attempt(run, "deploy", attempt=1, executor="e", now=history.now)
    assert (needed.value.group, needed.value.names) == ("/t", ["DEPLOY_TOKEN", "OTHER"])
    history.apply(
        commands.start_attempt(
            history.state,
            "deploy",
            attempt=1,
            executor="e",
            now=history.now,
            secrets={"DEPLOY_TOKEN": 3, "OTHER": 1, "UNUSED": 7},
        )
    )
    started = history.last[0]
    assert isinstance(started, TaskStatusChanged)
    assert started.status == "running"
    assert started.secrets == {"DEPLOY_TOKEN": 3, "OTHER": 1}
    assert started.resolved == Resolved(env={"TOKEN": "***", "HEADER": "v1.2 ***"})
    item = work_item(history.state, history.state.tasks["deploy"])
    assert item.env == {"TOKEN": "***", "HEADER": "v1.2 ***", "PLAIN": "plain"}
    rendered = templates.render_secret_env(
        history.state, history.state.tasks["deploy"], {"DEPLOY_TOKEN": SECRET, "OTHER": "o"}
    )
    assert rendered == {"TOKEN": SECRET, "HEADER": "v1.2 o"}
    assert SECRET.encode() not in b"".join(encode_event(e) for e in history.events)
    assert run_view(replayed(history)) == run_view(history.state)


def test_a_secret_not_set_fails_the_attempt_naming_it_and_the_run_goes_on() -> None:
    """No retry (every attempt would find the same), dependents skipped, an independent
    task still runs; the error names the secret and the group, never a value."""
    history = deploy_history()
    history.start("version")
    history.finish("version", outputs={"v": "1.2"})
    history.apply(
        commands.start_attempt(
            history.state,
            "deploy",
            attempt=1,
            executor="e",
            now=history.now,
            secrets={"OTHER": 1},
        )
    )
    failed = history.last[0]
    assert isinstance(failed, TaskStatusChanged)
    assert failed.status == "failed"
    assert failed.error == ("secret DEPLOY_TOKEN is not set for group /t (the task's env names it)")
    assert history.status("after") == "skipped"
    history.run_task("other")
    assert history.state.result == "failed"
