"""The executor protocol's pure parts: an attempt's environment and argv, and the wire
format of the protocol types."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from runsvc.executor.process import attempt_argv, attempt_environment
from runsvc.wire.executor import (
    ARTIFACT_PATH,
    Claim,
    ClaimRequest,
    Completion,
    WorkItem,
    compose_environment,
    format_duration,
    lease_path,
)


def work_item(**fields: object) -> WorkItem:
    base: dict[str, object] = {
        "task_id": "t-1",
        "run_id": "r-1",
        "group": "/org/p",
        "task": "test",
        "attempt": 2,
        "run": "true",
    }
    return msgspec.convert({**base, **fields}, WorkItem)


def test_layers_overlay_in_order() -> None:
    """static_environment < environment < the task's env; each layer only overrides the
    names it sets."""
    item = work_item(
        static_environment={"A": "static", "B": "static", "C": "static"},
        environment={"B": "environment", "C": "environment"},
        env={"C": "task"},
    )
    composed = compose_environment(item)
    assert (composed["A"], composed["B"], composed["C"]) == ("static", "environment", "task")


def test_attempt_identity_always_wins() -> None:
    """RUNSVC_RUN_ID, RUNSVC_TASK, RUNSVC_TASK_ID and RUNSVC_ATTEMPT are the attempt's own,
    whatever a layer tried to set."""
    item = work_item(env={"RUNSVC_TASK": "spoofed", "RUNSVC_ATTEMPT": "9"})
    composed = compose_environment(item)
    assert composed["RUNSVC_RUN_ID"] == "r-1"
    assert composed["RUNSVC_TASK"] == "test"
    assert composed["RUNSVC_TASK_ID"] == "t-1"
    assert composed["RUNSVC_ATTEMPT"] == "2"


def test_foreach_item_sets_item_unless_defined() -> None:
    """A foreach child gets RUNSVC_ITEM always, and ITEM only when no layer defines it."""
    plain = compose_environment(work_item(item="shard-3"))
    assert plain["RUNSVC_ITEM"] == plain["ITEM"] == "shard-3"
    kept = compose_environment(work_item(item="shard-3", environment={"ITEM": "mine"}))
    assert kept["RUNSVC_ITEM"] == "shard-3"
    assert kept["ITEM"] == "mine"


def test_no_item_variables_outside_foreach() -> None:
    """A task that is not a foreach child gets neither RUNSVC_ITEM nor ITEM."""
    composed = compose_environment(work_item())
    assert "RUNSVC_ITEM" not in composed
    assert "ITEM" not in composed


def test_only_a_few_executor_variables_reach_the_task() -> None:
    """PATH, HOME and the locale come from the executor, underneath the task's own
    variables; its token and anything else in its environment do not."""
    inherited = {
        "PATH": "/usr/bin",
        "HOME": "/home/ci",
        "LC_ALL": "C.UTF-8",
        "RUNSVC_TOKEN": "rsv_secret",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    env = attempt_environment(work_item(env={"HOME": "/work"}), inherited)
    assert env["PATH"] == "/usr/bin"
    assert env["HOME"] == "/work"
    assert env["LC_ALL"] == "C.UTF-8"
    assert "RUNSVC_TOKEN" not in env
    assert "AWS_SECRET_ACCESS_KEY" not in env


def test_the_output_file_variable_always_wins(tmp_path: Path) -> None:
    """RUNSVC_OUTPUT names the file the executor made and reads, whatever a layer set."""
    output_file = tmp_path / "outputs"
    item = work_item(env={"RUNSVC_OUTPUT": "/etc/passwd"})
    assert attempt_environment(item, {}, output_file=output_file)["RUNSVC_OUTPUT"] == str(
        output_file
    )


def test_a_claim_from_an_older_server_has_the_default_output_limit() -> None:
    """A claim without `max_output_bytes` holds outputs to the default 64 KiB."""
    assert work_item().max_output_bytes == 64 * 1024


def test_path_has_a_default() -> None:
    """An executor started without PATH still gives its tasks a usable one."""
    assert attempt_environment(work_item(), {})["PATH"]


def test_argv_of_shell_string_and_command() -> None:
    """`run` goes through /bin/sh -c; `command` is the argv as given; neither or both is
    refused."""
    assert attempt_argv(work_item(run="echo $X")) == ["/bin/sh", "-c", "echo $X"]
    assert attempt_argv(work_item(run=None, command=["ls", "-l"])) == ["ls", "-l"]
    with pytest.raises(ValueError, match="exactly one"):
        attempt_argv(work_item(run=None))
    with pytest.raises(ValueError, match="exactly one"):
        attempt_argv(work_item(command=["ls"]))


def test_request_types_reject_unknown_fields() -> None:
    """A misspelt field in a request is an error, not silently dropped."""
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"executor": "e", "lables": {}}', type=ClaimRequest)
    with pytest.raises(msgspec.ValidationError, match="unknown field"):
        msgspec.json.decode(b'{"status": "success", "exitcode": 0}', type=Completion)
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(b'{"status": "stopped"}', type=Completion)


def test_response_types_accept_new_fields() -> None:
    """A claim with fields a newer server added still decodes (fields are only ever
    added)."""
    claim = msgspec.json.decode(
        b'{"lease": "l", "lease_expires_at": "2025-01-01T00:00:00Z",'
        b' "heartbeat_interval_s": 5, "priority": 3,'
        b' "task": {"task_id": "t", "run_id": "r", "group": "/g", "task": "x",'
        b' "attempt": 1, "command": ["true"], "future": true}}',
        type=Claim,
    )
    assert claim.task.command == ["true"]
    assert claim.heartbeat_interval_s == 5.0


def test_claim_request_defaults() -> None:
    """Labels default to none and the wait to 20s."""
    request = msgspec.json.decode(b'{"executor": "e"}', type=ClaimRequest)
    assert request.labels == {}
    assert request.wait == "20s"


@pytest.mark.parametrize(
    ("seconds", "text"), [(20, "20s"), (0, "0s"), (0.25, "250ms"), (1.0001, "1001ms")]
)
def test_durations_in_requests(seconds: float, text: str) -> None:
    """Waits are sent in the API's duration syntax, never rounded down to nothing."""
    assert format_duration(seconds) == text


def test_lease_paths_are_percent_encoded() -> None:
    """A lease is one path segment; an artifact path keeps its slashes."""
    path = lease_path(ARTIFACT_PATH, "a/b c", "dist/my file.txt")
    assert path == "/api/v1/executor/leases/a%2Fb%20c/artifacts/dist/my%20file.txt"
