"""Run config documents: YAML and JSON, YAML 1.2 booleans, errors with file:line:path."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from runsvc.cli.documents import Document, DocumentError
from runsvc.domain.config import RunConfig

CONFIG = """\
tasks:
  - name: build
    run: make
  - name: test
    run: make test
    depends:
      - task: build
        on: [success, failure]
  - name: deploy
    run: ./deploy.sh
    depends: [test]
    approval: yes-please
"""


def test_on_stays_a_key_and_values_keep_their_lines() -> None:
    """`on:` is a key (not YAML 1.1's boolean True) and every value knows its line."""
    document = Document(CONFIG, "ci.yaml")
    depends = document.data["tasks"][1]["depends"][0]
    assert depends == {"task": "build", "on": ["success", "failure"]}
    assert document.line_of("tasks[1].depends[0].on") == 8
    assert document.line_of("tasks[2].name") == 9
    assert document.line_of("tasks[7].name") == 2  # nearest existing: the tasks list


def test_type_errors_name_file_line_and_path() -> None:
    """A value of the wrong type is reported at its line with its path."""
    document = Document(CONFIG, "ci.yaml")
    with pytest.raises(DocumentError) as error:
        document.decode(RunConfig)
    assert str(error.value).startswith("ci.yaml:12: tasks[2].approval: Expected `bool | object`")


def test_json_parses_too_and_syntax_errors_have_lines(tmp_path: Path) -> None:
    """JSON files read through the same parser; a syntax error names its line."""
    path = tmp_path / "run.json"
    path.write_text('{"tasks": [{"name": "a", "run": "true"}]}')
    config = Document.read(path).decode(RunConfig)
    assert config.tasks[0].name == "a"
    with pytest.raises(DocumentError, match=r"bad\.yaml:3"):
        Document("tasks:\n  - name: a\n  - : : :\n   x", "bad.yaml")
    with pytest.raises(DocumentError, match="No such file"):
        Document.read(tmp_path / "missing.yaml")


def test_true_false_remain_booleans() -> None:
    """`true`/`false` are still booleans."""
    document = Document("a: true\nb: false\nc: yes\n", "x.yaml")
    assert document.data == {"a": True, "b": False, "c": "yes"}
    assert msgspec.convert(document.data["a"], bool) is True
