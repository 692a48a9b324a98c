"""Rules a run config and a create request must follow, beyond their shape. Every
problem is reported, each with the path of the value at fault."""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache

from runsvc.domain.config import Approval, Retry, RunConfig, TaskConfig, parse_duration
from runsvc.domain.errors import BadRequest, Problem
from runsvc.domain.model import Ancestry
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.suggest import did_you_mean
from runsvc.domain.templates import check_config, environment_problems

NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
GROUP_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
# What a shell and execve accept as a variable name; anything else fails at the executor.
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,199}$")
CONDITIONS = frozenset({"success", "failure", "skipped"})
ON_LOST = ("retry", "fail")
FOREACH_STRATEGIES = ("parallel", "sequence")
MAX_KEY = 200
MAX_ENVIRONMENT = 1000
MAX_ATTEMPTS = 100
MAX_LOST = 100
MAX_FACTOR = 100
MAX_PATH = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Problems(list[Problem]):
    """Problems found so far; called to add one."""

    def __call__(self, path: str, message: str) -> None:
        self.append(Problem(path=path, message=message))


def validate_config(
    config: RunConfig, *, max_tasks: int = 10_000, root: str = "config"
) -> list[Problem]:
    add = _Problems()

    if not config.tasks:
        add(f"{root}.tasks", "a run needs at least one task")
    # A `foreach` expression's items are bounded when it expands (`max_foreach_items`).
    total = len(config.tasks) + sum(
        len(t.foreach) for t in config.tasks if isinstance(t.foreach, list)
    )
    if total > max_tasks:
        add(
            f"{root}.tasks",
            f"{total} tasks (foreach items included) is over the limit of {max_tasks}",
        )
    if config.max_parallel is not None and config.max_parallel < 1:
        add(f"{root}.max_parallel", "must be at least 1")
    _duration(config.timeout, f"{root}.timeout", add)
    if config.retry is not None:
        _retry(config.retry, f"{root}.retry", add)

    seen: dict[str, int] = {}
    for index, task in enumerate(config.tasks):
        path = f"{root}.tasks[{index}]"
        if not NAME.match(task.name):
            add(f"{path}.name", "names are 1-100 characters of A-Z a-z 0-9 _ . -")
        if task.name in seen:
            add(
                f"{path}.name", f"duplicate task name {task.name!r} (also tasks[{seen[task.name]}])"
            )
        seen.setdefault(task.name, index)
        _task(task, path, add)

    names = set(seen)
    for index, task in enumerate(config.tasks):
        for d_index, dependency in enumerate(task.dependencies()):
            path = f"{root}.tasks[{index}].depends[{d_index}]"
            if dependency.task not in names:
                add(path, f"unknown task {dependency.task!r}{did_you_mean(dependency.task, names)}")
            elif dependency.task == task.name:
                add(path, "a task cannot depend on itself")
            if not dependency.on:
                add(f"{path}.on", "needs at least one of success, failure, skipped")
            for o_index, condition in enumerate(dependency.on):
                if condition not in CONDITIONS:
                    add(
                        f"{path}.on[{o_index}]",
                        f"{condition!r} is not one of success, failure, skipped",
                    )
    cycle = find_cycle(config)
    if cycle:
        first = next(i for i, t in enumerate(config.tasks) if t.name == cycle[0])
        add(f"{root}.tasks[{first}].depends", "cycle: " + " -> ".join([*cycle, cycle[0]]))
    # Built once, when a check first needs it: inputs and expressions both ask.
    ancestry_of = cache(lambda: Ancestry(config))
    if any(task.inputs for task in config.tasks):
        for index, task in enumerate(config.tasks):
            _inputs(task, f"{root}.tasks[{index}]", names, ancestry_of(), add)
    add.extend(check_config(config, root, ancestry_of))
    return list(add)


def _task(task: TaskConfig, path: str, report: _Problems) -> None:
    if (task.run is None) == (task.command is None):
        report(path, "give exactly one of `run` (a shell string) or `command` (an argv list)")
    if task.command is not None and not task.command:
        report(f"{path}.command", "must not be empty")
    _duration(task.timeout, f"{path}.timeout", report)
    _duration(task.progress_timeout, f"{path}.progress_timeout", report)
    env_problems: list[Problem] = []
    _mapping(task.env, f"{path}.env", env_problems, env=True)
    for problem in env_problems:
        report(problem.path, problem.message)
    if task.on_lost not in ON_LOST:
        report(f"{path}.on_lost", "must be retry or fail")
    if not 1 <= task.max_lost <= MAX_LOST:
        report(f"{path}.max_lost", f"must be between 1 and {MAX_LOST}")
    if task.foreach_strategy not in FOREACH_STRATEGIES:
        report(f"{path}.foreach_strategy", "must be parallel or sequence")
    if isinstance(task.foreach, list) and not task.foreach:
        report(f"{path}.foreach", "must list at least one item")
    if task.max_parallel is not None and task.max_parallel < 1:
        report(f"{path}.max_parallel", "must be at least 1")
    if task.retry is not None:
        _retry(task.retry, f"{path}.retry", report)
    if isinstance(task.approval, Approval):
        for b_index, who in enumerate(task.approval.by):
            if not who.strip() or len(who) > 100:
                report(f"{path}.approval.by[{b_index}]", "a token name or role, 1-100 characters")
    if task.when is not None and not isinstance(task.when, str):
        given = [
            x for x in (task.when.equals, task.when.not_equals, task.when.in_) if x is not None
        ]
        if len(given) != 1:
            report(f"{path}.when", "give exactly one of equals, not_equals, in")
    for a_index, artifact in enumerate(task.artifacts):
        if not artifact or artifact.startswith("/") or ".." in artifact.split("/"):
            report(f"{path}.artifacts[{a_index}]", "must be a path inside the work directory")


def _inputs(
    task: TaskConfig, path: str, names: set[str], ancestry: Ancestry, report: _Problems
) -> None:
    seen: dict[str, int] = {}
    for i_index, spec in enumerate(task.input_specs()):
        at = f"{path}.inputs[{i_index}]"
        # The shorthand (a bare name) is the task itself, the long form has a field.
        task_at = f"{at}.task" if not isinstance(task.inputs[i_index], str) else at
        producer = spec.task
        if producer not in names:
            report(task_at, f"unknown task {producer!r}{did_you_mean(producer, names)}")
        elif producer == task.name:
            report(task_at, "a task cannot take its own artifacts as inputs")
        elif not ancestry.has(task.name, producer):
            report(
                task_at,
                f"{producer!r} is not a dependency of {task.name!r}, directly or through "
                f"others, so it may not have run yet: add it to `depends`",
            )
        if producer in seen:
            report(
                task_at,
                f"{producer!r} is named twice (also inputs[{seen[producer]}]); "
                "list all its paths in one entry",
            )
        seen.setdefault(producer, i_index)
        for p_index, text in enumerate(spec.paths):
            if plain_path(text) is None:
                report(
                    f"{at}.paths[{p_index}]",
                    f"{text!r} is not a path inside the work directory: relative, without "
                    "'.', '..' or empty segments",
                )


def plain_path(text: str) -> str | None:
    """An input's path as artifacts are stored (`dist/` is `dist`), or None when it is
    not relative with plain segments (nothing that could leave the work directory)."""
    path = text[:-1] if text.endswith("/") else text
    if (
        not path
        or len(path) > MAX_PATH
        or path.startswith("/")
        or "\\" in path
        or _CONTROL.search(path)
        or any(segment in ("", ".", "..") for segment in path.split("/"))
    ):
        return None
    return path


def _retry(retry: Retry, path: str, report: _Problems) -> None:
    if not 1 <= retry.max_attempts <= MAX_ATTEMPTS:
        report(f"{path}.max_attempts", f"must be between 1 and {MAX_ATTEMPTS}")
    if not 1 <= retry.factor <= MAX_FACTOR:
        report(f"{path}.factor", f"must be between 1 and {MAX_FACTOR}")
    _duration(retry.backoff, f"{path}.backoff", report, zero_ok=True)
    _duration(retry.max_backoff, f"{path}.max_backoff", report, zero_ok=True)


def _duration(text: str | None, path: str, report: _Problems, *, zero_ok: bool = False) -> None:
    if text is None:
        return
    try:
        duration = parse_duration(text)
    except ValueError as exc:
        report(path, str(exc))
        return
    if not zero_ok and duration.total_seconds() <= 0:
        report(path, "must be longer than zero")


def find_cycle(config: RunConfig) -> list[str] | None:
    """One dependency cycle, as the task names along it (parents first), or None.
    Iterative, so chains of any depth within the task limit are fine."""
    names = {t.name for t in config.tasks}
    graph = {t.name: [d.task for d in t.dependencies() if d.task in names] for t in config.tasks}
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        on_path = {start}
        pending = [iter(graph[start])]
        while pending:
            parent = next(pending[-1], None)
            if parent is None:
                pending.pop()
                finished = path.pop()
                on_path.discard(finished)
                done.add(finished)
            elif parent in on_path:
                return list(reversed(path[path.index(parent) :]))
            elif parent not in done:
                path.append(parent)
                on_path.add(parent)
                pending.append(iter(graph[parent]))
    return None


def _mapping(
    values: dict[str, str], path: str, problems: list[Problem], *, env: bool = False
) -> None:
    if len(values) > MAX_ENVIRONMENT:
        problems.append(Problem(path=path, message=f"at most {MAX_ENVIRONMENT} entries"))
    for key in values:
        if env and not ENV_NAME.match(key):
            problems.append(
                Problem(
                    path=f"{path}.{key}",
                    message="variable names are a letter or _, then letters, digits or _ "
                    f"(at most {MAX_KEY} characters)",
                )
            )
        elif not key or len(key) > MAX_KEY:
            problems.append(
                Problem(path=f"{path}.{key}", message=f"keys are 1-{MAX_KEY} characters")
            )


def valid_group(group: str) -> bool:
    if not group.startswith("/") or (group != "/" and group.endswith("/")):
        return False
    return group == "/" or all(
        GROUP_SEGMENT.match(s) and s not in (".", "..") for s in group[1:].split("/")
    )


def validate_create(request: CreateRunRequest, *, max_tasks: int = 10_000) -> None:
    """Raise BadRequest listing every problem of a create request."""
    problems: list[Problem] = []
    if not valid_group(request.group):
        problems.append(
            Problem(
                path="group",
                message="an absolute path of names (not . or ..), like /org/project/branch",
            )
        )
    if not NAME.match(request.name):
        problems.append(Problem(path="name", message="1-100 characters of A-Z a-z 0-9 _ . -"))
    for field, value in (
        ("idempotency_key", request.idempotency_key),
        ("concurrency_key", request.concurrency_key),
    ):
        if value is not None and not 1 <= len(value) <= MAX_KEY:
            problems.append(Problem(path=field, message=f"1-{MAX_KEY} characters"))
    _mapping(request.annotations, "annotations", problems)
    for field, values in (
        ("static_environment", request.static_environment),
        ("environment", request.environment),
    ):
        _mapping(values, field, problems, env=True)
        problems += environment_problems(values, field)
    problems += validate_config(request.config, max_tasks=max_tasks)
    raise_problems(problems)


def raise_problems(problems: Iterable[Problem]) -> None:
    found = list(problems)
    if found:
        summary = (
            found[0].message
            if len(found) == 1
            else f"{len(found)} problems, first: {found[0].message}"
        )
        raise BadRequest(f"invalid run: {summary}", found)
