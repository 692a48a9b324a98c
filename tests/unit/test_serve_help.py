"""`runsvc serve --help` gives every environment variable's default and meaning, from the
Settings fields themselves; docs/operations.md's table agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import msgspec
import pytest

from runsvc.cli import main
from runsvc.infra.settings import Settings, load_settings, variables

OPERATIONS = Path(__file__).resolve().parents[2] / "docs" / "operations.md"


def test_every_setting_has_a_variable_a_default_and_a_meaning() -> None:
    listed = variables()
    assert len(listed) == len(msgspec.structs.fields(Settings))
    assert len({v.name for v in listed}) == len(listed)
    assert all(v.name.startswith("RUNSVC_") and v.default and v.meaning for v in listed)


def test_serve_help_lists_each_variable_with_its_default_and_meaning(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["serve", "--help"]) == 0
    text = capsys.readouterr().out
    assert "  RUNSVC_PORT [8080]\n      port to listen on\n" in text
    words = " ".join(text.split())
    for variable in variables():
        assert f"{variable.name} [{variable.default}] {variable.meaning}" in words


def test_the_defaults_shown_are_the_ones_loaded() -> None:
    """Setting each variable to the default shown changes nothing."""
    shown = {v.name: v.default for v in variables() if v.default != "unset"}
    assert load_settings(shown) == load_settings({})


def test_the_operations_guide_lists_every_variable_with_the_same_default() -> None:
    rows = dict(re.findall(r"^\| `(RUNSVC_\w+)` \| ([^|]+) \|", OPERATIONS.read_text(), re.M))
    for variable in variables():
        assert variable.name in rows, f"docs/operations.md has no row for {variable.name}"
        assert rows[variable.name].strip().strip("`").startswith(variable.default), variable
