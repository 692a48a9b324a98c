"""The errors of the expression language, all `ExpressionError`s, each saying where."""

from __future__ import annotations

from runsvc.domain.expressions.nodes import (
    AttemptOutput,
    ExitCode,
    Item,
    Reference,
    SecretRef,
    TaskOutput,
    TaskResult,
)


def where(text: str, offset: int) -> str:
    """`column 7`, or `line 3, column 7` in a text of several lines (a `run` script):
    1-based, counted in characters."""
    line_start = text.rfind("\n", 0, offset) + 1
    column = offset - line_start + 1
    if "\n" not in text:
        return f"column {column}"
    return f"line {text.count(chr(10), 0, offset) + 1}, column {column}"


class ExpressionError(ValueError):
    """A template cannot be parsed or evaluated."""


class ExpressionSyntaxError(ExpressionError):
    """The text is not a template of this grammar; `offset` is where reading stopped."""

    def __init__(self, reason: str, *, text: str, offset: int) -> None:
        self.reason = reason
        self.offset = offset
        self.location = where(text, offset)
        super().__init__(f"{self.location}: {reason}")


class EvaluationError(ExpressionError):
    """A well-formed expression failed on its values (`fromJSON` of something not JSON)."""


class Unresolved(ExpressionError):
    """A reference has no value yet: an output never set, a result of a task that has not
    ended, `item` outside a foreach task. Names the reference, so the caller can say
    which one."""

    def __init__(self, reference: Reference) -> None:
        self.reference = reference
        super().__init__(_explain(reference))


NEVER_SET = "was never set"
"""What the error of an output reference without a value says, so that a simulation,
which runs nothing, can tell a value it was not given from a real failure."""


def _explain(reference: Reference) -> str:
    match reference:
        case TaskOutput():
            return f"{reference} {NEVER_SET}: task {reference.task!r} set no such output"
        case TaskResult():
            return f"{reference} is not known: task {reference.task!r} has not ended"
        case Item():
            return "item is only defined in a child of a foreach task"
        case AttemptOutput():
            return f"{reference} {NEVER_SET}: the attempt set no such output"
        case ExitCode():
            return "exit_code is only defined in fail_if and retry_if"
        case SecretRef():
            return f"{reference} is not set for this run's group"
        case _:
            return f"{reference} has no value"
