"""The run file's JSON Schema (`runsvc schema`, docs/run-file.schema.json): valid JSON
Schema, the published copy is the generated one, every example passes, and what it adds to
the types' shape agrees with the server's validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import msgspec
import pytest

from runsvc.cli import main
from runsvc.cli.documents import Document
from runsvc.domain.config import RunConfig
from runsvc.domain.errors import BadRequest
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.run_file_schema import run_file_schema
from runsvc.domain.schedule_config import CreateScheduleRequest
from runsvc.domain.schedules import raise_if_invalid
from runsvc.domain.validation import validate_config, validate_create

ROOT = Path(__file__).resolve().parents[2]
PUBLISHED = ROOT / "docs" / "run-file.schema.json"
SCHEDULES = sorted((ROOT / "examples").glob("*-schedule.yaml"))
EXAMPLES = sorted(set((ROOT / "examples").glob("*.yaml")) - set(SCHEDULES))


@pytest.fixture(scope="module")
def validator() -> Any:
    return jsonschema_rs.validator_for(run_file_schema())


def printed_schema(capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["schema"]) == 0
    return capsys.readouterr().out


def test_the_command_prints_valid_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    """`runsvc schema` prints a JSON Schema (2020-12) that its meta-schema accepts."""
    schema = json.loads(printed_schema(capsys))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert jsonschema_rs.meta.is_valid(schema)


def test_the_published_schema_is_the_generated_one(capsys: pytest.CaptureFixture[str]) -> None:
    """docs/run-file.schema.json, which the examples name for editors, is what the command
    prints today."""
    assert PUBLISHED.read_text() == printed_schema(capsys), (
        "regenerate it: runsvc schema > docs/run-file.schema.json"
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_passes_the_schema_and_the_server(path: Path, validator: Any) -> None:
    data = Document.read(path).data
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(data)]
    assert errors == []
    validate_create(msgspec.convert(data, CreateRunRequest))


@pytest.mark.parametrize("path", SCHEDULES, ids=lambda p: p.name)
def test_every_example_schedule_passes_the_server(path: Path) -> None:
    data = Document.read(path).data
    raise_if_invalid(msgspec.convert(data, CreateScheduleRequest).spec())


def test_descriptions_reach_the_schema() -> None:
    """Every property of every run-file type has a description for editors to show."""
    undescribed = [
        f"{name}.{field}"
        for name, definition in run_file_schema()["$defs"].items()
        for field, schema in definition["properties"].items()
        if not schema.get("description")
    ]
    assert undescribed == []


TASK = {"name": "build", "run": "make"}


def config_with(**task: Any) -> dict[str, Any]:
    return {"tasks": [{**TASK, **task}]}


# Each breaks one rule that the schema states on top of the types' shape.
REFUSED: dict[str, dict[str, Any]] = {
    "no tasks": {"tasks": []},
    "task name": config_with(name="build it"),
    "duration syntax": config_with(timeout="5 minutes"),
    "duration unit": config_with(progress_timeout="5x"),
    "backoff syntax": config_with(retry={"backoff": "soon"}),
    "run timeout syntax": {"tasks": [TASK], "timeout": "1h 30m"},
    "run max_parallel": {"tasks": [TASK], "max_parallel": 0},
    "task max_parallel": config_with(max_parallel=0),
    "on_lost": config_with(on_lost="ignore"),
    "max_lost low": config_with(max_lost=0),
    "max_lost high": config_with(max_lost=101),
    "foreach empty": config_with(foreach=[]),
    "foreach_strategy": config_with(foreach_strategy="random"),
    "command empty": {"tasks": [{"name": "build", "command": []}]},
    "env name": config_with(env={"1ST": "x"}),
    "dependency condition": {
        "tasks": [TASK, {"name": "test", "run": "t", "depends": [{"task": "build", "on": ["ok"]}]}]
    },
    "dependency no condition": {
        "tasks": [TASK, {"name": "test", "run": "t", "depends": [{"task": "build", "on": []}]}]
    },
    "max_attempts low": config_with(retry={"max_attempts": 0}),
    "max_attempts high": config_with(retry={"max_attempts": 101}),
    "factor": config_with(retry={"factor": 0.5}),
}

# Edge cases the server accepts: the schema must not refuse them.
ACCEPTED: dict[str, dict[str, Any]] = {
    "combined duration": config_with(timeout="1h30m", progress_timeout="1.5s"),
    "padded duration": config_with(timeout=" 5m "),
    "zero backoff": config_with(retry={"backoff": "0s", "max_backoff": "0ms"}),
    "limits": config_with(max_lost=100, retry={"max_attempts": 100, "factor": 1}),
    "name characters": config_with(name="a.b-c_1"),
    "every condition": {
        "tasks": [
            TASK,
            {
                "name": "report",
                "command": ["report"],
                "depends": [{"task": "build", "on": ["success", "failure", "skipped"]}],
            },
        ]
    },
    "foreach of every kind": config_with(foreach=["a", 1, 2.5, True], foreach_strategy="sequence"),
    "approval rule": config_with(approval={"by": ["release"], "not_submitter": True}),
    "when in": config_with(when={"env": "BRANCH", "in": ["main", "release"]}),
    "nulls": {"tasks": [{**TASK, "timeout": None}], "max_parallel": None, "retry": None},
}


def server_problems(config: dict[str, Any]) -> list[str]:
    try:
        decoded = msgspec.convert(config, RunConfig)
    except msgspec.ValidationError as exc:
        return [str(exc)]
    return [p.message for p in validate_config(decoded)]


@pytest.mark.parametrize("case", REFUSED)
def test_the_schema_refuses_what_the_server_refuses(case: str, validator: Any) -> None:
    config = REFUSED[case]
    assert server_problems(config) != []
    assert not validator.is_valid(config)
    assert not validator.is_valid({"group": "/g", "name": "n", "config": config})


@pytest.mark.parametrize("case", ACCEPTED)
def test_the_schema_accepts_what_the_server_accepts(case: str, validator: Any) -> None:
    config = ACCEPTED[case]
    assert server_problems(config) == []
    assert validator.is_valid(config)


def test_a_document_may_leave_group_and_name_to_the_command_line(validator: Any) -> None:
    """`runsvc submit --group G --name N` completes a document that has only `config`; the
    fields a document does give follow the server's rules."""
    config = config_with()
    assert validator.is_valid({"config": config, "environment": {"BRANCH": "main"}})
    document = {"group": "/acme", "name": "ci", "config": config, "concurrency_key": "shop"}
    assert validator.is_valid(document)
    empty_key = {**document, "concurrency_key": ""}
    with pytest.raises(BadRequest):
        validate_create(msgspec.convert(empty_key, CreateRunRequest))
    assert not validator.is_valid(empty_key)
    assert not validator.is_valid({**document, "unknown": 1})
