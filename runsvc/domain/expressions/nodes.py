"""What a template is made of: literal text, `${{ … }}` segments, the syntax tree of each
expression, and the references an expression can make.

Every node keeps the offset of its first character in the template's text, so that a
problem found after parsing (an unknown task, a failed `fromJSON`) can point at it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Literal

import msgspec

# What a selector may spell after a dot; anything else needs the bracket form.
PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


def selector(key: str) -> str:
    """`.key`, or `['key']` when the key holds a character a dotted selector cannot."""
    if PLAIN_SEGMENT.fullmatch(key):
        return f".{key}"
    return "['" + key.replace("'", "''") + "']"


class TaskResult(msgspec.Struct, frozen=True):
    """`tasks.<task>.result`: how the task ended."""

    task: str

    def __str__(self) -> str:
        return f"tasks{selector(self.task)}.result"


class TaskOutput(msgspec.Struct, frozen=True):
    """`tasks.<task>.outputs.<key>`: a value the task set."""

    task: str
    key: str

    def __str__(self) -> str:
        return f"tasks{selector(self.task)}.outputs{selector(self.key)}"


class EnvVar(msgspec.Struct, frozen=True):
    """`env.<name>`: a variable of the task's environment."""

    name: str

    def __str__(self) -> str:
        return f"env{selector(self.name)}"


class SecretRef(msgspec.Struct, frozen=True):
    """`secrets.<NAME>`: a secret of the run's group, only in a task's `env`, alone in its
    `${{ … }}`; its value reaches the executor and nothing else."""

    name: str

    def __str__(self) -> str:
        return f"secrets{selector(self.name)}"


class Item(msgspec.Struct, frozen=True):
    """`item`: the item of a foreach task's child."""

    def __str__(self) -> str:
        return "item"


class RunField(msgspec.Struct, frozen=True):
    """`run.id` or `run.group`."""

    field: Literal["id", "group"]

    def __str__(self) -> str:
        return f"run.{self.field}"


class ExitCode(msgspec.Struct, frozen=True):
    """`exit_code`: how the attempt being judged ended (null when it has none, such as
    an attempt past its timeout); only in `fail_if` and `retry_if`."""

    def __str__(self) -> str:
        return "exit_code"


class AttemptOutput(msgspec.Struct, frozen=True):
    """`outputs.<key>`: a value the attempt being judged set; only in `fail_if` and
    `retry_if`."""

    key: str

    def __str__(self) -> str:
        return f"outputs{selector(self.key)}"


Reference = (
    TaskResult | TaskOutput | EnvVar | Item | RunField | ExitCode | AttemptOutput | SecretRef
)
ATTEMPT_REFERENCES = (ExitCode, AttemptOutput)
"""The references that name the attempt being judged, not the run."""
Scalar = str | int | float | bool | None


class Constant(msgspec.Struct, frozen=True):
    value: Scalar
    offset: int


class Ref(msgspec.Struct, frozen=True):
    reference: Reference
    offset: int


class Not(msgspec.Struct, frozen=True):
    operand: Node
    offset: int


class Compare(msgspec.Struct, frozen=True):
    """`left == right`, or `left != right` when not `equal`."""

    left: Node
    right: Node
    equal: bool
    offset: int


class And(msgspec.Struct, frozen=True):
    """Two or more operands joined by `&&`; n-ary so that a long chain stays shallow."""

    operands: tuple[Node, ...]
    offset: int


class Or(msgspec.Struct, frozen=True):
    """Two or more operands joined by `||`."""

    operands: tuple[Node, ...]
    offset: int


class Call(msgspec.Struct, frozen=True):
    """A function applied to its arguments. The name is checked by `check`, not by the
    parser, which only knows the shape of a call."""

    function: str
    arguments: tuple[Node, ...]
    offset: int


Node = Constant | Ref | Not | Compare | And | Or | Call


class Segment(msgspec.Struct, frozen=True):
    """One `${{ … }}` of a template: its expression and where it stands."""

    expression: Node
    offset: int
    source: str


class Template(msgspec.Struct, frozen=True):
    """A parsed string: literal text and segments, in order, with the text they came from."""

    text: str
    parts: tuple[str | Segment, ...]

    @property
    def single(self) -> Segment | None:
        """The segment when the text is exactly one `${{ … }}` and nothing else: such a
        template evaluates to its expression's value, which need not be a string."""
        if len(self.parts) == 1 and isinstance(self.parts[0], Segment):
            return self.parts[0]
        return None

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(part for part in self.parts if isinstance(part, Segment))


def walk(node: Node) -> Iterator[Node]:
    """`node` and every node under it, left to right, parents first."""
    yield node
    match node:
        case Not():
            yield from walk(node.operand)
        case Compare():
            yield from walk(node.left)
            yield from walk(node.right)
        case And() | Or():
            for operand in node.operands:
                yield from walk(operand)
        case Call():
            for argument in node.arguments:
                yield from walk(argument)
        case _:
            pass
