"""`${{ … }}` expressions in a run file: checked when a run is created (`check_config`)
and evaluated where each field says.

- `run`, `command` and `env` are templates, rendered when an attempt starts (`resolve`).
  A string without `${{` is no template: it is neither checked nor rendered, so it means
  what it meant before expressions existed.
- `when`, `foreach`, `fail_if` and `retry_if` (as strings) are conditions: exactly one
  `${{ … }}`. `when` and `foreach` are evaluated once the task's dependencies have ended
  (`when_verdict`, `foreach_items`), `fail_if` and `retry_if` when an attempt ends
  (`judge_attempt`), each on the state the events have made, so a replay decides alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import cache, lru_cache
from typing import Literal

import msgspec

from runsvc.domain.config import Approval, RunConfig, TaskConfig
from runsvc.domain.errors import Problem
from runsvc.domain.events import Resolved
from runsvc.domain.expressions import (
    Attempt,
    Context,
    ExpressionError,
    ExpressionSyntaxError,
    Template,
    Value,
    check,
    evaluate,
    holds,
    parse,
    referenced_tasks,
    render,
)
from runsvc.domain.expressions.checks import referenced_secrets
from runsvc.domain.expressions.lexer import OPEN
from runsvc.domain.expressions.values import to_json, type_name
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


ConditionField = Literal["when", "foreach", "fail_if", "retry_if"]
ATTEMPT_CONDITIONS: tuple[ConditionField, ...] = ("fail_if", "retry_if")


def conditions(spec: TaskConfig) -> Iterator[tuple[ConditionField, str]]:
    """Each field of the task given as an expression, with its text."""
    if isinstance(spec.when, str):
        yield "when", spec.when
    if isinstance(spec.foreach, str):
        yield "foreach", spec.foreach
    if spec.fail_if is not None:
        yield "fail_if", spec.fail_if
    if spec.retry_if is not None:
        yield "retry_if", spec.retry_if


@lru_cache(maxsize=4096)
def parsed(text: str) -> Template:
    """`parse`, remembered: the fold and the scheduler evaluate the same few conditions
    again and again, and a template is immutable."""
    return parse(text)


def check_config(
    config: RunConfig,
    root: str = "config",
    ancestry_of: Callable[[], Ancestry] | None = None,
) -> list[Problem]:
    """The problems of every expression of the config, each at the path of its string
    and saying where in it (`column 7`). `ancestry_of` gives the config's ancestry when
    first needed (validation shares one with its other checks: a long chain's takes a
    while to build)."""
    problems: list[Problem] = []
    known = {task.name for task in config.tasks}
    ancestry_of = ancestry_of or cache(lambda: Ancestry(config))
    for index, spec in enumerate(config.tasks):
        path = f"{root}.tasks[{index}]"
        strings: list[tuple[str, str, bool]] = [
            (place, text, False) for place, text in _templates(spec)
        ]
        strings.extend((field, text, True) for field, text in conditions(spec))
        message = spec.approval.message if isinstance(spec.approval, Approval) else None
        if message is not None and OPEN in message:
            strings.append(("approval.message", message, False))
        for place, text, condition in strings:
            at = f"{path}.{place}"
            try:
                template = parse(text)
            except ExpressionSyntaxError as exc:
                problems.append(Problem(path=at, message=str(exc)))
                continue
            if condition and template.single is None:
                problems.append(Problem(path=at, message=_NOT_ONE_EXPRESSION))
                continue
            referenced = referenced_tasks(template)
            ancestors = (
                {name for name in referenced if ancestry_of().has(spec.name, name)}
                if referenced
                else set()
            )
            # These belong to the task as a whole, before any item.
            per_item = spec.foreach is not None and place not in _BEFORE_ITEMS
            for message in check(
                template,
                ancestors=ancestors,
                known_tasks=known,
                in_foreach=per_item,
                judges_attempt=place in ATTEMPT_CONDITIONS,
                allows_secrets=place.startswith("env."),
            ):
                problems.append(Problem(path=at, message=message))
    return problems


def environment_problems(values: dict[str, str], root: str) -> list[Problem]:
    """A run's `environment` or `static_environment` is never rendered, so `secrets.X`
    there would be a value shown to everyone: refused, with its path."""
    problems = []
    for name, text in values.items():
        if OPEN not in text:
            continue
        try:
            named = referenced_secrets(parse(text))
        except ExpressionSyntaxError:
            continue  # not a template: the text is the value
        if named:
            problems.append(
                Problem(
                    path=f"{root}.{name}",
                    message=f"secrets.{min(named)} may be used only in a task's env; "
                    "a run's environment is recorded and shown as written",
                )
            )
    return problems


_BEFORE_ITEMS = ("when", "foreach", "approval.message")
_NOT_ONE_EXPRESSION = (
    "must be one ${{ … }} expression and nothing around it, "
    "such as ${{ tasks.plan.outputs.deploy == 'yes' }}"
)


MASK = "***"
"""What a secret's value is shown as wherever something is recorded or shown."""


def secret_env(spec: TaskConfig) -> dict[str, set[str]]:
    """The task's `env` entries that name secrets, each with the secrets it names (only
    `env` may: validation holds templates to that)."""
    found: dict[str, set[str]] = {}
    for name, text in spec.env.items():
        if OPEN not in text or "secrets" not in text:
            continue
        try:
            names = referenced_secrets(parsed(text))
        except ExpressionSyntaxError:
            continue  # `resolve` reports it
        if names:
            found[name] = names
    return found


def secrets_of(spec: TaskConfig) -> list[str]:
    """Every secret the task's attempts need, sorted."""
    return sorted(set().union(*secret_env(spec).values()))


def render_secret_env(run: Run, task: Task, values: dict[str, str]) -> dict[str, str]:
    """The task's env entries that name secrets, rendered with the secrets' `values`:
    what only the executor's claim answer carries, never an event. The other references
    of those entries render as `resolve` recorded them (the same run state), since a
    secret stands alone in its `${{ … }}`."""
    entries = secret_env(task.spec)
    if not entries:
        return {}
    templates = [(f"env.{name}", parsed(task.spec.env[name])) for name in entries]
    context = _context(
        run, task, set().union(*(referenced_tasks(t) for _, t in templates)), secrets=values
    )
    return {place[len("env.") :]: render(template, context) for place, template in templates}


def resolve(run: Run, task: Task) -> Resolved | None:
    """What the task's templates render to for its next attempt, or None when it has
    none. Raises `ExpressionError` naming the string at fault (`env.TAG: …`) when one
    cannot be rendered: an output never set, a failing `fromJSON`, or a template an
    earlier version let through (it did not check them). A secret renders as `***`:
    this is what the log records, and the claim answer alone gets the values
    (`render_secret_env`)."""
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
    masks = dict.fromkeys(secrets_of(spec), MASK)
    context = _context(
        run, task, set().union(*(referenced_tasks(t) for _, t in templates)), secrets=masks
    )
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


def _context(
    run: Run,
    task: Task,
    referenced: set[str],
    attempt: Attempt | None = None,
    secrets: dict[str, str] | None = None,
) -> Context:
    """What the task's templates may read: the results and outputs of the tasks they
    name (looked up alone, so a start costs what the task refers to, not the size of the
    run). Only ancestors can be named (validation holds templates to that), and they
    are all final once the task is scheduled, so what a template renders to is the same
    whenever the attempt starts. `env` is the run's environment (`environment` over
    `static_environment`) without the task's own `env`, whose values may be templates
    themselves."""
    named = [run.tasks[name] for name in sorted(referenced) if name in run.tasks]
    results: dict[str, str] = {t.name: t.status for t in named if t.status in FINAL}
    outputs: dict[str, dict[str, Value]] = {}
    for t in named:
        gathered: dict[str, Value] = _gathered_outputs(run, t) if t.is_parent else dict(t.outputs)
        if gathered:
            outputs[t.name] = gathered
    return Context(
        run_id=run.id,
        run_group=run.group,
        env=run.merged_environment,
        results=results,
        outputs=outputs,
        item=_item(run, task),
        attempt=attempt,
        secrets=secrets or {},
    )


def _item(run: Run, task: Task) -> Value | msgspec.UnsetType:
    """The item as the run file or the expansion gave it (a number stays a number), not
    its text."""
    if task.parent is None or task.index is None or task.item is None:
        return msgspec.UNSET
    items = run.tasks[task.parent].spec.foreach
    if isinstance(items, list) and task.index < len(items):
        return items[task.index]
    if task.item_json:
        value: Value = msgspec.json.decode(task.item)
        return value
    return task.item


def _gathered_outputs(run: Run, parent: Task) -> dict[str, Value]:
    """A foreach task's outputs: for each key any item set, the list of every item's
    value in item order, null where an item did not set it."""
    if not parent.children and parent.outputs:
        # Carried into a recreated run without its items: `gathered_texts` kept them.
        return {key: msgspec.json.decode(text) for key, text in parent.outputs.items()}
    children = [run.tasks[name] for name in parent.children]
    keys = sorted({key for child in children for key in child.outputs})
    return {key: [child.outputs.get(key) for child in children] for key in keys}


def gathered_texts(run: Run, parent: Task) -> dict[str, str]:
    """A foreach task's gathered outputs as JSON texts, for carrying it into a recreated
    run, where its items are not (a foreach task never sets outputs of its own)."""
    return {key: to_json(value) for key, value in _gathered_outputs(run, parent).items()}


def _condition_context(run: Run, task: Task, text: str, attempt: Attempt | None) -> Context:
    return _context(run, task, referenced_tasks(parsed(text)), attempt)


def when_verdict(run: Run, task: Task) -> bool | str:
    """Whether the task's expression `when` holds, or why it cannot be told (an output
    never set, a failing `fromJSON`): then the task fails with that error."""
    assert isinstance(task.spec.when, str)
    text = task.spec.when
    try:
        return holds(parsed(text), _condition_context(run, task, text, None))
    except ExpressionError as exc:
        return f"when: {exc}"


def foreach_items(run: Run, task: Task, limit: int) -> list[tuple[str, bool]] | str:
    """The items of the task's expression `foreach`, or why there are none: it cannot
    be evaluated, gives no list, or more than `limit` items. Each item is given as the
    text its child sees as RUNSVC_ITEM and whether that text is JSON (the item was not
    a string)."""
    assert isinstance(task.spec.foreach, str)
    text = task.spec.foreach
    try:
        value = evaluate(parsed(text), _condition_context(run, task, text, None))
    except ExpressionError as exc:
        return f"foreach: {exc}"
    if not isinstance(value, list):
        return f"foreach: {text.strip()} gave {type_name(value)}, not a list"
    if len(value) > limit:
        return f"foreach: {text.strip()} gave {len(value)} items, over the limit of {limit}"
    return [(item, False) if isinstance(item, str) else (to_json(item), True) for item in value]


def approval_message(run: Run, task: Task) -> str | None:
    """The task's approval message, rendered (None when it has none). A message only
    informs, so one that cannot be rendered does not fail the task: it is shown as
    written, with why it could not be rendered."""
    rule = task.spec.approval
    if not isinstance(rule, Approval) or rule.message is None:
        return None
    text = rule.message
    if OPEN not in text:
        return text
    template = parsed(text)
    try:
        return render(template, _context(run, task, referenced_tasks(template)))
    except ExpressionError as exc:
        return f"{text} (not rendered: {exc})"


def judge_attempt(run: Run, task: Task, field: ConditionField, attempt: Attempt) -> bool | str:
    """Whether the task's `fail_if` or `retry_if` holds on an attempt that ended so, or
    why it cannot be told."""
    text = getattr(task.spec, field)
    assert isinstance(text, str)
    try:
        return holds(parsed(text), _condition_context(run, task, text, attempt))
    except ExpressionError as exc:
        return f"{field}: {exc}"
