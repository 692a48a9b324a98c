"""What can be known of a template before a run starts: what it refers to, and whether
those references and calls can work where the template stands."""

from __future__ import annotations

import re
from collections.abc import Iterator

from runsvc.domain.expressions.errors import where
from runsvc.domain.expressions.nodes import (
    ATTEMPT_REFERENCES,
    Call,
    Item,
    Node,
    Ref,
    Reference,
    SecretRef,
    TaskOutput,
    TaskResult,
    Template,
    walk,
)
from runsvc.domain.expressions.values import FUNCTIONS
from runsvc.domain.suggest import did_you_mean


def references(template: Template) -> list[Reference]:
    """Every reference of the template, each once, in the order they first appear."""
    found: dict[Reference, None] = {}
    for node in _nodes(template):
        if isinstance(node, Ref):
            found.setdefault(node.reference)
    return list(found)


def referenced_tasks(template: Template) -> set[str]:
    """The tasks whose result or outputs the template reads."""
    return {r.task for r in references(template) if isinstance(r, TaskResult | TaskOutput)}


def referenced_secrets(template: Template) -> set[str]:
    """The secrets the template names."""
    return {r.name for r in references(template) if isinstance(r, SecretRef)}


SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
"""What a secret may be called: what a variable of the environment may."""


def check(
    template: Template,
    *,
    ancestors: set[str],
    known_tasks: set[str],
    in_foreach: bool,
    judges_attempt: bool = False,
    allows_secrets: bool = False,
) -> list[str]:
    """The problems of a template in a task whose (direct and indirect) dependencies are
    `ancestors`, in a run of `known_tasks`; `in_foreach` when the template is evaluated
    for each item (not in the `foreach` field itself, where there is no item yet);
    `judges_attempt` when it is evaluated on an attempt's end (`fail_if`, `retry_if`),
    the only place `exit_code` and `outputs` mean something; `allows_secrets` in a task's
    `env`, the only place `secrets.X` may stand (and there only alone in its `${{ … }}`).
    Each message says where; a problem found again later in the template is not
    repeated."""
    problems: dict[str, str] = {}
    for segment in template.segments:
        for node in walk(segment.expression):
            problem = _problem(
                node,
                ancestors=ancestors,
                known_tasks=known_tasks,
                in_foreach=in_foreach,
                judges_attempt=judges_attempt,
            )
            if problem is None and isinstance(node, Ref) and isinstance(node.reference, SecretRef):
                problem = _secret_problem(
                    node.reference, alone=node is segment.expression, allowed=allows_secrets
                )
            if problem is not None and problem not in problems:
                problems[problem] = f"{where(template.text, node.offset)}: {problem}"
    return list(problems.values())


def _secret_problem(reference: SecretRef, *, alone: bool, allowed: bool) -> str | None:
    if not allowed:
        return (
            f"{reference} may be used only in a task's env (env: {{NAME: "
            f'"${{{{ {reference} }}}}"}}): anywhere else its value would be recorded'
        )
    if not SECRET_NAME.fullmatch(reference.name):
        return (
            f"{reference.name!r} is not a secret name (a letter or _, then letters, digits "
            "or _, at most 200)"
        )
    if not alone:
        return (
            f"{reference} must stand alone in its ${{{{ … }}}}, as in ${{{{ {reference} }}}}: "
            "nothing is computed on a secret"
        )
    return None


def _problem(
    node: Node,
    *,
    ancestors: set[str],
    known_tasks: set[str],
    in_foreach: bool,
    judges_attempt: bool,
) -> str | None:
    if isinstance(node, Call):
        if node.function not in FUNCTIONS:
            return (
                f"unknown function {node.function!r}{did_you_mean(node.function, FUNCTIONS)}; "
                f"the functions are {' and '.join(FUNCTIONS)}"
            )
        if len(node.arguments) != 1:
            return f"{node.function} takes 1 argument, got {len(node.arguments)}"
        return None
    if not isinstance(node, Ref):
        return None
    reference = node.reference
    if isinstance(reference, Item) and not in_foreach:
        return "item is only defined in a task with foreach"
    if isinstance(reference, ATTEMPT_REFERENCES) and not judges_attempt:
        return (
            f"{reference} is only defined in fail_if and retry_if; "
            f"another task's outputs are tasks.<name>.outputs.<key>"
        )
    if isinstance(reference, TaskResult | TaskOutput):
        task = reference.task
        if task not in known_tasks:
            return f"unknown task {task!r}{did_you_mean(task, known_tasks)}"
        if task not in ancestors:
            # Its result and outputs may not exist yet when this task runs.
            return f"task {task!r} is not a dependency of this task, direct or indirect"
    return None


def _nodes(template: Template) -> Iterator[Node]:
    for segment in template.segments:
        yield from walk(segment.expression)
