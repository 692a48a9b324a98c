"""Validation of configs and create requests: every problem, each with its path."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.errors import BadRequest
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.suggest import unknown_field_hint
from runsvc.domain.validation import find_cycle, validate_config, validate_create
from tests.unit.histories import config, task


def problems(*tasks: dict[str, Any], **run: Any) -> dict[str, str]:
    return {p.path: p.message for p in validate_config(config(*tasks, **run))}


def test_a_valid_config_has_no_problems() -> None:
    """The docs/api.md example shape passes."""
    assert (
        problems(
            task("checkout", timeout="5m"),
            task("test", "checkout", retry={"max_attempts": 3, "backoff": "2s"}),
            task("shard", "checkout", foreach=["1", "2"], max_parallel=2),
            task("report", {"task": "test", "on": ["success", "failure"]}, continue_on_error=True),
            task("deploy", "test", approval=True, when={"env": "BRANCH", "equals": "main"}),
            max_parallel=4,
            timeout="1h",
        )
        == {}
    )


def test_every_problem_is_reported_with_its_path() -> None:
    """Duplicate names, unknown dependencies, invalid `on`, bad durations, bad names,
    max_parallel below 1 — all at once, each at its path."""
    found = problems(
        task("a", timeout="5 minutes"),
        task("a"),
        task("b", "nope", {"task": "a", "on": ["sometimes"]}, "bb"),
        task("bad name!"),
        task("c", foreach=[], max_parallel=0),
        max_parallel=0,
        timeout="-1s",
    )
    assert found["config.tasks[0].timeout"].startswith("invalid duration")
    assert "duplicate task name 'a'" in found["config.tasks[1].name"]
    assert found["config.tasks[2].depends[0]"] == "unknown task 'nope'"
    assert found["config.tasks[2].depends[2]"] == "unknown task 'bb' (did you mean 'b'?)"
    assert "'sometimes' is not one of" in found["config.tasks[2].depends[1].on[0]"]
    assert "names are" in found["config.tasks[3].name"]
    assert found["config.tasks[4].foreach"] == "must list at least one item"
    assert found["config.tasks[4].max_parallel"] == "must be at least 1"
    assert found["config.max_parallel"] == "must be at least 1"
    assert "config.timeout" in found


def test_cycles_are_named() -> None:
    """A cycle is reported with the tasks along it."""
    cyclic = config(task("a", "c"), task("b", "a"), task("c", "b"), task("d"))
    assert find_cycle(cyclic) == ["a", "b", "c"] or find_cycle(cyclic) is not None
    found = {p.path: p.message for p in validate_config(cyclic)}
    message = next(m for m in found.values() if m.startswith("cycle"))
    assert all(name in message for name in ("a", "b", "c"))
    assert "d" not in message.split(": ")[1]


def test_task_level_rules() -> None:
    """run xor command, on_lost, foreach_strategy, retry ranges, when shape, artifact
    paths, task limit."""
    found = problems(
        {"name": "neither"},
        {"name": "both", "run": "x", "command": ["x"]},
        task("lost", on_lost="sometimes", foreach_strategy="random", foreach=["x"]),
        task("retry", retry={"max_attempts": 0, "factor": 0.5, "backoff": "x"}),
        task("when", when={"env": "A", "equals": "1", "in": ["1"]}),
        task("files", artifacts=["/etc/passwd", "../up", "ok/file"]),
    )
    assert "exactly one of `run`" in found["config.tasks[0]"]
    assert "exactly one of `run`" in found["config.tasks[1]"]
    assert found["config.tasks[2].on_lost"] == "must be retry or fail"
    assert found["config.tasks[2].foreach_strategy"] == "must be parallel or sequence"
    assert found["config.tasks[3].retry.max_attempts"] == "must be between 1 and 100"
    assert found["config.tasks[3].retry.factor"] == "must be between 1 and 100"
    assert "config.tasks[3].retry.backoff" in found
    assert found["config.tasks[4].when"] == "give exactly one of equals, not_equals, in"
    assert "config.tasks[5].artifacts[0]" in found
    assert "config.tasks[5].artifacts[1]" in found
    assert "config.tasks[5].artifacts[2]" not in found
    many = validate_config(config(*(task(f"t{i}") for i in range(6))), max_tasks=5)
    assert many[0].path == "config.tasks"
    assert "over the limit of 5" in many[0].message


def test_create_requests_check_group_name_and_config() -> None:
    """A create request with a bad group, a bad name and a bad config lists them all."""
    request = CreateRunRequest(
        group="org/no-slash", name="", config=msgspec.convert({"tasks": []}, RunConfig)
    )
    with pytest.raises(BadRequest) as error:
        validate_create(request)
    paths = [p.path for p in error.value.details]
    assert paths == ["group", "name", "config.tasks"]
    fine = CreateRunRequest(group="/org/p/main", name="ci", config=config(task("a")))
    validate_create(fine)


def test_wrong_types_are_reported_by_path_when_decoding() -> None:
    """msgspec rejects wrong types and unknown fields with a JSON path."""
    with pytest.raises(msgspec.ValidationError, match=r"\$\.config\.tasks\[0\]\.foreach"):
        msgspec.json.decode(
            b'{"group": "/a", "name": "n", "config": {"tasks": '
            b'[{"name": "a", "run": "x", "foreach": {"a": 1}}]}}',
            type=CreateRunRequest,
        )
    with pytest.raises(msgspec.ValidationError, match="unknown field `colour`"):
        msgspec.json.decode(
            b'{"group": "/a", "name": "n", "colour": 1, "config": {"tasks": []}}',
            type=CreateRunRequest,
        )


def test_limits_that_would_overflow_are_refused() -> None:
    """Durations over a year and retry factors beyond reason are refused, not crashed on;
    foreach items count against the task limit."""
    found = problems(
        task("a", timeout="99999999999d", retry={"max_attempts": 4, "factor": 1e200}),
        timeout="3000000d",
    )
    assert "longer than the limit" in found["config.tasks[0].timeout"]
    assert "config.tasks[0].retry.factor" in found
    assert "longer than the limit" in found["config.timeout"]
    wide = validate_config(config(task("fan", foreach=list(range(10)))), max_tasks=5)
    assert "foreach items included" in wide[0].message


def test_deep_chains_are_checked_without_recursion_limits() -> None:
    """A 10,000-task chain validates, and a cycle at its end is still found."""
    chain = [task("t0")] + [task(f"t{i}", f"t{i - 1}") for i in range(1, 10_000)]
    assert validate_config(config(*chain)) == []
    looped = [task("t0", "t9999"), *chain[1:]]
    cycle = find_cycle(config(*looped))
    assert cycle is not None
    assert len(cycle) == 10_000


@pytest.mark.parametrize(
    ("max_lost", "problem"),
    [
        (1, None),
        (3, None),
        (100, None),
        (0, "must be between 1 and 100"),
        (101, "must be between 1 and 100"),
        (-1, "must be between 1 and 100"),
    ],
)
def test_max_lost_is_a_bounded_positive_integer(max_lost: int, problem: str | None) -> None:
    """`max_lost` (how often a lost attempt is tried again) is 1-100, reported at its
    path; it defaults to 3 and is not written out when left at the default."""
    found = problems(task("a", max_lost=max_lost))
    assert found.get("config.tasks[0].max_lost") == problem
    assert msgspec.convert(task("a"), TaskConfig).max_lost == 3
    assert b"max_lost" not in msgspec.json.encode(msgspec.convert(task("a"), TaskConfig))


@pytest.mark.parametrize(
    "group", ["/abuse/../../etc", "/a/./b", "/..", "/a//b", "/a/b/", "relative"]
)
def test_groups_with_dot_segments_or_empty_ones_are_refused(group: str) -> None:
    """A group is a path of names: `.` and `..` (which would read as directories to
    anyone using groups as paths) and empty segments are refused with a 400."""
    request = CreateRunRequest(group=group, name="ci", config=config(task("a")))
    with pytest.raises(BadRequest) as error:
        validate_create(request)
    assert [p.path for p in error.value.details] == ["group"]


@pytest.mark.parametrize("name", ["A=B", "1ST", "WITH SPACE", "DASH-ED", "", "É"])
def test_environment_names_must_be_variable_names(name: str) -> None:
    """An environment name the executor could not set (it failed there, after the run was
    accepted) is refused at create, in the run's environments and in a task's `env`."""
    request = CreateRunRequest(
        group="/org",
        name="ci",
        environment={name: "x"},
        static_environment={name: "y"},
        config=config(task("a", env={name: "z"})),
    )
    with pytest.raises(BadRequest) as error:
        validate_create(request)
    paths = sorted(p.path for p in error.value.details)
    assert paths == sorted(
        [f"environment.{name}", f"static_environment.{name}", f"config.tasks[0].env.{name}"]
    )


def test_ordinary_environment_names_and_annotation_keys_pass() -> None:
    """Variable names as shells know them pass; annotation keys stay free-form."""
    request = CreateRunRequest(
        group="/org/shop.web/main",
        name="ci",
        environment={"BRANCH": "main", "_private": "1", "PY3": "yes"},
        annotations={"commit sha": "3f9c2e1", "a=b": "fine"},
        config=config(task("a", env={"GOFLAGS": "-mod=mod"})),
    )
    validate_create(request)


def test_templates_are_checked_at_the_path_of_their_string_with_the_column() -> None:
    """A syntax error, an unknown function, a task that is not an ancestor, an unknown
    task and `item` outside a foreach task are each reported at the string's path,
    saying where in it; references to ancestors (indirect ones too), to the run and to
    the environment pass, and so does `item` in a foreach task."""
    found = validate_config(
        config(
            task("version"),
            task("build", "version"),
            task("lint"),
            {
                "name": "deploy",
                "depends": ["build"],
                "command": ["deploy", "--to", "${{ env.TARGET || 'staging' }}", "${{ run.id"],
                "env": {
                    "VERSION": "${{ tasks.version.outputs.v }}",
                    "RESULT": "${{ tasks.build.result }}-${{ run.group }}",
                    "LINT": "${{ tasks.lint.outputs.v }}",
                    "TYPO": "${{ tasks.versoin.outputs.v }}",
                    "ITEM": "${{ item }}",
                    "JSON": "${{ fromJson(tasks.version.outputs.v) }}",
                },
            },
            task(
                "shard",
                "version",
                run="echo ${{ item }} ${{ tasks.version.outputs.v }}",
                foreach=[1, 2],
            ),
        )
    )
    assert [(p.path, p.message) for p in found] == [
        (
            "config.tasks[3].command[3]",
            "column 1: ${{ is not closed by }}",
        ),
        (
            "config.tasks[3].env.LINT",
            "column 5: task 'lint' is not a dependency of this task, direct or indirect",
        ),
        ("config.tasks[3].env.TYPO", "column 5: unknown task 'versoin' (did you mean 'version'?)"),
        ("config.tasks[3].env.ITEM", "column 5: item is only defined in a task with foreach"),
        (
            "config.tasks[3].env.JSON",
            "column 5: unknown function 'fromJson' (did you mean 'fromJSON'?); "
            "the functions are fromJSON and toJSON",
        ),
    ]


def test_a_multi_line_script_is_checked_with_its_line() -> None:
    found = problems(task("a", run="set -e\necho ${{ tasks.a.result }}\n"))
    assert found == {
        "config.tasks[0].run": (
            "line 2, column 10: task 'a' is not a dependency of this task, direct or indirect"
        )
    }


@pytest.mark.parametrize(
    "text", ["echo }} {{ $HOME ${HOME} $${{", "awk '{print $1}'", "echo '${{' not closed"]
)
def test_strings_without_a_template_mean_what_they_meant(text: str) -> None:
    """Only `${{` opens a template: any other braces are the shell's. An unclosed `${{`
    is refused, with where it stands."""
    found = problems(task("a", run=text, env={"X": text}))
    if "${{" in text:
        assert set(found) == {"config.tasks[0].run", "config.tasks[0].env.X"}
        assert found["config.tasks[0].run"].startswith("column ")
    else:
        assert found == {}


def test_ancestors_of_a_deep_chain_are_found() -> None:
    """The last of a 10,000-task chain may read the first one's outputs; the first may
    not read the last's."""
    chain = [task("t0", run="echo ${{ tasks.t9999.outputs.x }}")] + [
        task(f"t{i}", f"t{i - 1}") for i in range(1, 10_000)
    ]
    chain[-1] = task("t9999", "t9998", run="echo ${{ tasks.t0.outputs.x }}")
    found = problems(*chain)
    assert list(found) == ["config.tasks[0].run"]
    assert "not a dependency" in found["config.tasks[0].run"]


def test_inputs_name_ancestors_with_plain_paths() -> None:
    """Inputs from a parent, a grandparent (through another task) and a foreach task,
    bare or with paths (a trailing slash allowed), pass."""
    assert (
        problems(
            task("checkout", artifacts=["src"]),
            task("shard", "checkout", foreach=["a", "b"], artifacts=["out"]),
            task("build", "checkout", inputs=["checkout"]),
            task(
                "test",
                "build",
                "shard",
                inputs=[
                    {"task": "build", "paths": ["dist/", "report.xml"]},
                    {"task": "checkout", "paths": ["src/lib"]},
                    "shard",
                ],
            ),
        )
        == {}
    )


def test_input_problems_are_reported_at_their_paths() -> None:
    """An unknown task (with the name meant), the task itself, a task that is no
    dependency, a task named twice and paths that leave the work directory: each a
    problem at its path, the long form's at `.task`."""
    found = problems(
        task("checkout"),
        task("lint"),
        task(
            "build",
            "checkout",
            inputs=[
                "checkuot",
                {"task": "lint"},
                "build",
                {"task": "checkout", "paths": ["../up", "/abs", "a//b", "./x", "ok"]},
                "checkout",
            ],
        ),
    )
    assert found == {
        "config.tasks[2].inputs[0]": "unknown task 'checkuot' (did you mean 'checkout'?)",
        "config.tasks[2].inputs[1].task": "'lint' is not a dependency of 'build', directly "
        "or through others, so it may not have run yet: add it to `depends`",
        "config.tasks[2].inputs[2]": "a task cannot take its own artifacts as inputs",
        **{
            f"config.tasks[2].inputs[3].paths[{index}]": f"{path!r} is not a path inside the "
            "work directory: relative, without '.', '..' or empty segments"
            for index, path in enumerate(["../up", "/abs", "a//b", "./x"])
        },
        "config.tasks[2].inputs[4]": "'checkout' is named twice (also inputs[3]); list all "
        "its paths in one entry",
    }


def test_a_dependent_is_no_ancestor() -> None:
    """A task below (not above) the one naming it in inputs is refused: it runs later."""
    found = problems(task("build", inputs=["test"]), task("test", "build"))
    assert "'test' is not a dependency of 'build'" in found["config.tasks[0].inputs[0]"]


def test_create_with_a_non_dependency_input_is_a_400() -> None:
    """A create request whose input names a task that is not an ancestor raises the 400
    with the problem at its path."""
    request = CreateRunRequest(
        group="/org/p",
        name="ci",
        config=config(task("a"), task("b", inputs=[{"task": "a", "paths": ["dist"]}])),
    )
    with pytest.raises(BadRequest) as error:
        validate_create(request)
    assert error.value.status == 400
    assert [p.path for p in error.value.details] == ["config.tasks[1].inputs[0].task"]


def test_unknown_fields_of_an_input_are_refused_with_the_field_meant() -> None:
    """`{task, path}` (a typo of `paths`) is refused when decoding, and the did-you-mean
    of unknown fields names `paths`."""
    with pytest.raises(msgspec.ValidationError, match=r"unknown field `path`") as error:
        msgspec.json.decode(
            b'{"tasks": [{"name": "a", "run": "x"}, {"name": "b", "run": "x", '
            b'"depends": ["a"], "inputs": [{"task": "a", "path": ["dist"]}]}]}',
            type=RunConfig,
        )
    assert "$.tasks[1].inputs[0]" in str(error.value)
    assert unknown_field_hint(
        "Object contains unknown field `path`", RunConfig, ".tasks[1].inputs[0]"
    ) == (" (did you mean 'paths'?)")
