"""docs/run-file.md documents every field a run file may hold, and every phase, result and
task status, so that a field added to the types without a word in the docs fails here.

The page has one section per type, its heading ending in the type's name in backticks
(`## Tasks (`TaskConfig`)`), holding a table with a row per field under its name as
written in a file (`in`, not `in_`)."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import msgspec
import pytest

from runsvc.domain.events import Phase, Result, TaskStatus
from runsvc.domain.requests import CreateRunRequest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "run-file.md"
HEADING = re.compile(r"^#{1,6} ")
TYPE_HEADING = re.compile(r"^#{1,6} .*\(`(\w+)`\)\s*$")
ROW = re.compile(r"^\| `([^`]+)` \|")


def documented_rows() -> dict[str, list[str]]:
    """The first cell of each table row, by the type named in its section's heading."""
    rows: dict[str, list[str]] = {}
    section: str | None = None
    for line in PAGE.read_text().splitlines():
        if HEADING.match(line):
            named = TYPE_HEADING.match(line)
            section = named.group(1) if named else None
            if section is not None:
                rows.setdefault(section, [])
        elif section is not None and (row := ROW.match(line)):
            rows[section].append(row.group(1))
    return rows


def run_file_structs() -> dict[str, list[str]]:
    """Every Struct a run file may hold, from the run document down, with the names its
    fields have in a file."""
    found: dict[str, list[str]] = {}

    def walk(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.StructType):
            name = info.cls.__name__
            if name in found:
                return
            found[name] = [field.encode_name for field in info.fields]
            for field in info.fields:
                walk(field.type)
        elif isinstance(info, msgspec.inspect.Metadata):
            walk(info.type)
        elif isinstance(info, msgspec.inspect.UnionType):
            for member in info.types:
                walk(member)
        elif isinstance(info, msgspec.inspect.ListType | msgspec.inspect.SetType):
            walk(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            walk(info.key_type)
            walk(info.value_type)

    walk(msgspec.inspect.type_info(CreateRunRequest))
    return found


def test_the_walk_reaches_every_run_file_type() -> None:
    """The walk goes down through lists, unions and optional fields (a broken walk would
    make the next test pass on nothing)."""
    structs = run_file_structs()
    assert set(structs) == {
        "CreateRunRequest",
        "RunConfig",
        "TaskConfig",
        "Retry",
        "Dependency",
        "Approval",
        "When",
        "Input",
    }
    assert "in" in structs["When"]


@pytest.mark.parametrize("struct", sorted(run_file_structs()))
def test_every_field_has_a_row_in_its_types_section(struct: str) -> None:
    fields = run_file_structs()[struct]
    documented = documented_rows().get(struct)
    assert documented is not None, f"docs/run-file.md has no section ending in (`{struct}`)"
    missing = [f for f in fields if f not in documented]
    unknown = [f for f in documented if f not in fields]
    assert missing == [], f"{struct} fields without a row in docs/run-file.md"
    assert unknown == [], f"rows under {struct} that are not its fields"


@pytest.mark.parametrize(
    ("name", "values"), [("Phase", Phase), ("Result", Result), ("TaskStatus", TaskStatus)]
)
def test_every_phase_result_and_status_is_explained(name: str, values: object) -> None:
    assert sorted(documented_rows().get(name, [])) == sorted(typing.get_args(values))
