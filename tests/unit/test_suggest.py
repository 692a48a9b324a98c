"""'Did you mean': the nearest known name for a misspelt field, task or command."""

from __future__ import annotations

import msgspec
import pytest

from runsvc.cli import main
from runsvc.cli.documents import Document, DocumentError
from runsvc.domain.config import RunConfig
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.suggest import did_you_mean, fields_at, unknown_field_hint


def test_the_closest_name_is_offered_and_a_far_one_is_not() -> None:
    assert did_you_mean("tset", ["build", "test", "deploy"]) == " (did you mean 'test'?)"
    assert did_you_mean("xyz", ["build", "test", "deploy"]) == ""
    assert did_you_mean("anything", []) == ""


def test_fields_are_found_through_lists_unions_and_renamed_fields() -> None:
    """The path of msgspec's error leads through lists, `str | Dependency` unions and to
    the encoded names (`in`, not `in_`)."""
    assert "depends" in fields_at(CreateRunRequest, ".config.tasks[3]")
    assert fields_at(CreateRunRequest, ".config.tasks[0].depends[1]") == ["on", "task"]
    assert "in" in fields_at(RunConfig, ".tasks[0].when")
    assert fields_at(RunConfig, ".tasks[0].name") == []


@pytest.mark.parametrize(
    ("root", "document", "meant"),
    [
        (CreateRunRequest, {"grup": "/a"}, "group"),
        (RunConfig, {"tasks": [{"name": "a", "run": "x", "dependz": []}]}, "depends"),
        (RunConfig, {"tasks": [{"name": "a", "when": {"env": "X", "equal": "1"}}]}, "equals"),
    ],
)
def test_an_unknown_field_names_the_field_meant(
    root: type, document: dict[str, object], meant: str
) -> None:
    with pytest.raises(msgspec.ValidationError) as refused:
        msgspec.convert(document, root)
    message, _, path = str(refused.value).partition(" - at `$")
    assert unknown_field_hint(message, root, path.rstrip("`")) == f" (did you mean {meant!r}?)"


def test_a_run_file_with_a_typo_names_line_path_and_the_field_meant() -> None:
    document = Document("tasks:\n  - name: a\n    run: x\n    dependz: [b]\n", "ci.yaml")
    with pytest.raises(DocumentError) as refused:
        document.decode(RunConfig)
    assert str(refused.value) == (
        "ci.yaml:2: tasks[0]: Object contains unknown field `dependz` (did you mean 'depends'?)"
    )


def test_a_misspelt_command_names_the_command_meant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["runs", "shwo"]) == 2
    assert "(did you mean 'show'?)" in capsys.readouterr().err
    assert main(["runs", "list", "--phase", "runing"]) == 2
    assert "(did you mean 'running'?)" in capsys.readouterr().err
