"""`${{ … }}` templates in a task's `run`, `command` and `env`: checked when a run is
created (`check_config`), rendered when an attempt starts (`resolve`).

A string without `${{` is no template: it is neither checked nor rendered, so it means
what it meant before expressions existed.
"""

from __future__ import annotations

from collections.abc import Iterator

import msgspec

from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.errors import Problem
from runsvc.domain.events import Resolved
from runsvc.domain.expressions import (
    Context,
    ExpressionError,
    ExpressionSyntaxError,
    Template,
    Value,
    check,
    parse,
    referenced_tasks,
    render,
)
from runsvc.domain.expressions.lexer import OPEN
from runsvc.domain.model import FINAL, Ancestry, Run, Task


def task_strings(spec: TaskConfig) -> Iterator[tuple[str, str]]:
    """Each string of the task that may hold a template, with its place in the task
    (`run`, `command[1]`, `env.TAG`)."""
    if spec.run is not None:
        yield "run", spec.run
    for index, argument in enumerate(spec.command or ()):
        yield f"command[{index}]", argument
    for name, value in spec.env.items():
        yield f"env.{name}", value


def _templates(spec: TaskConfig) -> Iterator[tuple[str, str]]:
    return ((place, text) for place, text in task_strings(spec) if OPEN in text)


def check_config(config: RunConfig, root: str = "config") -> list[Problem]:
    """The problems of every template of the config, each at the path of its string and
    saying where in it (`column 7`)."""
    problems: list[Problem] = []
    known = {task.name for task in config.tasks}
    ancestry: Ancestry | None = None
    for index, spec in enumerate(config.tasks):
        for place, text in _templates(spec):
            path = f"{root}.tasks[{index}].{place}"
            try:
                template = parse(text)
            except ExpressionSyntaxError as exc:
                problems.append(Problem(path=path, message=str(exc)))
                continue
            referenced = referenced_tasks(template)
            if referenced and ancestry is None:
                ancestry = Ancestry(config)
            ancestors = (
                {name for name in referenced if ancestry.has(spec.name, name)}
                if ancestry is not None
                else set()
            )
            for message in check(
                template,
                ancestors=ancestors,
                known_tasks=known,
                in_foreach=spec.foreach is not None,
            ):
                problems.append(Problem(path=path, message=message))
    return problems


def resolve(run: Run, task: Task) -> Resolved | None:
    """What the task's templates render to for its next attempt, or None when it has
    none. Raises `ExpressionError` naming the string at fault (`env.TAG: …`) when one
    cannot be rendered: an output never set, a failing `fromJSON`, or a template an
    earlier version let through (it did not check them)."""
    spec = task.spec
    templates: list[tuple[str, Template]] = []
    for place, text in _templates(spec):
        try:
            template = parse(text)
        except ExpressionSyntaxError as exc:
            raise ExpressionError(f"{place}: {exc}") from None
        if template.segments:
            templates.append((place, template))
    if not templates:
        return None
    context = _context(run, task, set().union(*(referenced_tasks(t) for _, t in templates)))
    rendered: dict[str, str] = {}
    for place, template in templates:
        try:
            rendered[place] = render(template, context)
        except ExpressionError as exc:
            raise ExpressionError(f"{place}: {exc}") from None
    command = None
    if spec.command is not None and any(place.startswith("command[") for place in rendered):
        command = [
            rendered.get(f"command[{index}]", argument)
            for index, argument in enumerate(spec.command)
        ]
    env = {name: rendered[f"env.{name}"] for name in spec.env if f"env.{name}" in rendered}
    return Resolved(run=rendered.get("run"), command=command, env=env)


def _context(run: Run, task: Task, referenced: set[str]) -> Context:
    """What the task's templates may read: the results and outputs of the tasks they
    name (looked up alone, so a start costs what the task refers to, not the size of the
    run). Only ancestors can be named (validation holds templates to that), and they
    are all final once the task is scheduled, so what a template renders to is the same
    whenever the attempt starts. `env` is the run's environment (`environment` over
    `static_environment`) without the task's own `env`, whose values may be templates
    themselves."""
    named = [run.tasks[name] for name in sorted(referenced) if name in run.tasks]
    results: dict[str, str] = {t.name: t.status for t in named if t.status in FINAL}
    outputs = {t.name: t.outputs for t in named if t.outputs}
    item: Value | msgspec.UnsetType = msgspec.UNSET
    if task.parent is not None and task.index is not None:
        # The item as the run file gave it (a number stays a number), not its text.
        items = run.tasks[task.parent].spec.foreach or []
        item = items[task.index] if task.index < len(items) else task.item
    return Context(
        run_id=run.id,
        run_group=run.group,
        env=run.merged_environment,
        results=results,
        outputs=outputs,
        item=item,
    )
