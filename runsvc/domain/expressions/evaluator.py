"""`evaluate`: a template's value in a context, which supplies everything a reference can
name. Pure and deterministic: the same template and context give the same value."""

from __future__ import annotations

import msgspec

from runsvc.domain.expressions.errors import EvaluationError, Unresolved, where
from runsvc.domain.expressions.nodes import (
    And,
    AttemptOutput,
    Call,
    Compare,
    Constant,
    EnvVar,
    ExitCode,
    Item,
    Node,
    Not,
    Or,
    Ref,
    Reference,
    RunField,
    SecretRef,
    TaskOutput,
    TaskResult,
    Template,
)
from runsvc.domain.expressions.values import (
    FUNCTIONS,
    FunctionFailed,
    Value,
    equal,
    is_truthy,
    to_text,
)


class Attempt(msgspec.Struct, frozen=True, kw_only=True):
    """How an attempt ended, as `fail_if` and `retry_if` see it."""

    exit_code: int | None
    outputs: dict[str, str] = msgspec.field(default_factory=dict)


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What references resolve to when a task's template is evaluated."""

    run_id: str = ""
    run_group: str = ""
    env: dict[str, str] = msgspec.field(default_factory=dict)
    """The task's environment: the run's, with the task's `env` over it."""
    results: dict[str, str] = msgspec.field(default_factory=dict)
    """How each ended task ended (its final status, such as `success` or `failed`)."""
    outputs: dict[str, dict[str, Value]] = msgspec.field(default_factory=dict)
    """The outputs each task set, by task and key: a string, or for a foreach task the
    list of its items' values in item order (null for an item that did not set it)."""
    item: Value | msgspec.UnsetType = msgspec.UNSET
    """The item of a foreach task's child; unset elsewhere."""
    attempt: Attempt | None = None
    """The attempt being judged, in `fail_if` and `retry_if`; None elsewhere."""
    secrets: dict[str, str] = msgspec.field(default_factory=dict)
    """The values `secrets.X` stands for: the real ones only when the executor's env is
    rendered, a mask (`***`) when what is recorded in the log is."""


def evaluate(template: Template, context: Context) -> Value:
    """The value of a template that is exactly one expression (any JSON value), else the
    text with each expression's value written in (`to_text`). Raises `Unresolved` for a
    reference without a value, `EvaluationError` for a function that fails."""
    evaluation = _Evaluation(template.text, context)
    if (single := template.single) is not None:
        return evaluation.value(single.expression)
    return "".join(
        part if isinstance(part, str) else to_text(evaluation.value(part.expression))
        for part in template.parts
    )


def render(template: Template, context: Context) -> str:
    """The template as text, whatever it evaluates to: for `run`, `command` and `env`."""
    return to_text(evaluate(template, context))


def holds(template: Template, context: Context) -> bool:
    """Whether the template's value is true (`is_truthy`): for `when`."""
    return is_truthy(evaluate(template, context))


class _Evaluation:
    def __init__(self, text: str, context: Context) -> None:
        self._text = text
        self._context = context

    def value(self, node: Node) -> Value:
        match node:
            case Constant():
                return node.value
            case Ref():
                return self._resolve(node.reference)
            case Not():
                return not is_truthy(self.value(node.operand))
            case Compare():
                same = equal(self.value(node.left), self.value(node.right))
                return same if node.equal else not same
            case And():
                # The first false operand, else the last: `a && b` is b when a holds.
                for operand in node.operands[:-1]:
                    if not is_truthy(result := self.value(operand)):
                        return result
                return self.value(node.operands[-1])
            case Or():
                # The first true operand, else the last: `env.X || 'default'`.
                for operand in node.operands[:-1]:
                    if is_truthy(result := self.value(operand)):
                        return result
                return self.value(node.operands[-1])
            case Call():
                return self._call(node)

    def _resolve(self, reference: Reference) -> Value:
        context = self._context
        match reference:
            case TaskResult():
                if reference.task in context.results:
                    return context.results[reference.task]
            case TaskOutput():
                outputs = context.outputs.get(reference.task, {})
                if reference.key in outputs:
                    return outputs[reference.key]
            case EnvVar():
                # Unset is normal for a variable (`env.X || 'default'`), unlike an output.
                return context.env.get(reference.name)
            case RunField():
                return context.run_id if reference.field == "id" else context.run_group
            case Item():
                if not isinstance(context.item, msgspec.UnsetType):
                    return context.item
            case ExitCode():
                if context.attempt is not None:
                    return context.attempt.exit_code
            case AttemptOutput():
                if context.attempt is not None and reference.key in context.attempt.outputs:
                    return context.attempt.outputs[reference.key]
            case SecretRef():
                if reference.name in context.secrets:
                    return context.secrets[reference.name]
        raise Unresolved(reference)

    def _call(self, call: Call) -> Value:
        function = FUNCTIONS.get(call.function)
        location = where(self._text, call.offset)
        if function is None:
            raise EvaluationError(f"{location}: unknown function {call.function!r}")
        if len(call.arguments) != 1:
            raise EvaluationError(
                f"{location}: {call.function} takes 1 argument, got {len(call.arguments)}"
            )
        try:
            return function(self.value(call.arguments[0]))
        except FunctionFailed as failed:
            raise EvaluationError(f"{location}: {call.function}: {failed}") from None
