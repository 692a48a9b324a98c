"""`parse`: a string with `${{ … }}` segments into a `Template`, by recursive descent
over the grammar in the package's docstring."""

from __future__ import annotations

from runsvc.domain.expressions.errors import ExpressionSyntaxError
from runsvc.domain.expressions.lexer import CLOSE, OPEN, Lexer, Token
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
    Segment,
    TaskOutput,
    TaskResult,
    Template,
)
from runsvc.domain.suggest import did_you_mean

MAX_DEPTH = 32
"""Levels of parentheses, `!` and function calls, one inside the other. Bounds the
recursion of the parser, of evaluation and of the checks."""

ROOTS = ("tasks", "env", "item", "run", "exit_code", "outputs", "secrets")
KEYWORDS = {"true": True, "false": False, "null": None}
RUN_FIELDS = ("id", "group")
TASK_FIELDS = ("result", "outputs")
_USAGE = {
    "tasks": "tasks.<name>.result or tasks.<name>.outputs.<key>",
    "env": "env.<NAME>",
    "run": "run.id or run.group",
    "outputs": "outputs.<key>",
    "secrets": "secrets.<NAME>",
}


def parse(text: str) -> Template:
    """The template in `text`. Raises `ExpressionSyntaxError` (and nothing else) with the
    position of the first mistake."""
    parts: list[str | Segment] = []
    position = 0
    while (start := text.find(OPEN, position)) >= 0:
        if start > position:
            parts.append(text[position:start])
        expression, end = _Parser(text, start).segment()
        parts.append(Segment(expression=expression, offset=start, source=text[start:end]))
        position = end
    if position < len(text):
        parts.append(text[position:])
    return Template(text=text, parts=tuple(parts))


class _Parser:
    """One expression, from its `${{` to its `}}`; `token` is the next unread token."""

    def __init__(self, text: str, opened_at: int) -> None:
        self._text = text
        self._opened_at = opened_at
        self._lexer = Lexer(text, opened_at)
        self._token = self._lexer.next()
        self._depth = 0

    def segment(self) -> tuple[Node, int]:
        """The expression and the offset just past its `}}`."""
        if self._at_end():
            raise self._error("empty expression", self._opened_at)
        expression = self._expression()
        if not self._at_end():
            raise self._error(
                f"unexpected {_describe(self._token)}; expected an operator or {CLOSE}"
            )
        return expression, self._token.offset + len(CLOSE)

    def _advance(self) -> Token:
        token = self._token
        self._token = self._lexer.next()
        return token

    def _at_end(self) -> bool:
        return self._token.kind == "end"

    def _at(self, *operators: str) -> bool:
        return self._token.kind == "operator" and self._token.text in operators

    def _enter(self) -> None:
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise self._error(
                f"nested too deeply: at most {MAX_DEPTH} levels of parentheses, ! and calls"
            )

    def _expression(self) -> Node:
        self._enter()
        node = self._or()
        self._depth -= 1
        return node

    def _or(self) -> Node:
        operands = [self._and()]
        while self._at("||"):
            self._advance()
            operands.append(self._and())
        return operands[0] if len(operands) == 1 else Or(tuple(operands), operands[0].offset)

    def _and(self) -> Node:
        operands = [self._comparison()]
        while self._at("&&"):
            self._advance()
            operands.append(self._comparison())
        return operands[0] if len(operands) == 1 else And(tuple(operands), operands[0].offset)

    def _comparison(self) -> Node:
        left = self._unary()
        if not self._at("==", "!="):
            return left
        operator = self._advance()
        right = self._unary()
        if self._at("==", "!="):
            # `a == b == c` would compare a boolean with c, which is never what was meant.
            raise self._error("comparisons do not chain; put one of them in parentheses")
        return Compare(left, right, equal=operator.text == "==", offset=operator.offset)

    def _unary(self) -> Node:
        if not self._at("!"):
            return self._primary()
        operator = self._advance()
        self._enter()
        operand = self._unary()
        self._depth -= 1
        return Not(operand, operator.offset)

    def _primary(self) -> Node:
        token = self._token
        if token.kind in ("string", "number"):
            self._advance()
            return Constant(token.value, token.offset)
        if self._at("("):
            self._advance()
            inner = self._expression()
            self._expect(")")
            return inner
        if token.kind == "name":
            self._advance()
            if token.text in KEYWORDS:
                return Constant(KEYWORDS[token.text], token.offset)
            if self._at("("):
                return self._call(token)
            return Ref(self._reference(token), token.offset)
        raise self._error(f"unexpected {_describe(token)}; expected a value")

    def _call(self, name: Token) -> Call:
        self._advance()
        arguments: list[Node] = []
        if not self._at(")"):
            arguments.append(self._expression())
            while self._at(","):
                self._advance()
                arguments.append(self._expression())
        self._expect(")")
        return Call(name.text, tuple(arguments), name.offset)

    def _reference(self, name: Token) -> Reference:
        reference: Reference
        root = name.text
        if root == "item":
            reference = Item()
        elif root == "exit_code":
            reference = ExitCode()
        elif root == "outputs":
            reference = AttemptOutput(self._key(root))
        elif root == "env":
            reference = EnvVar(self._key(root))
        elif root == "secrets":
            reference = SecretRef(self._key(root))
        elif root == "run":
            field = self._field(root, RUN_FIELDS)
            reference = RunField("id" if field == "id" else "group")
        elif root == "tasks":
            task = self._key(root)
            if self._field(root, TASK_FIELDS) == "result":
                reference = TaskResult(task)
            else:
                reference = TaskOutput(task, self._key(root))
        else:
            raise self._error(
                f"unknown name {root!r}{did_you_mean(root, (*ROOTS, *KEYWORDS))}; "
                f"names are tasks, env, item, run, exit_code, outputs, secrets, true, false "
                "and null",
                name.offset,
            )
        if self._at(".", "["):
            raise self._error(f"{reference} has no fields")
        return reference

    def _key(self, root: str) -> str:
        """A name chosen by the run file (a task, an output, a variable): `.key`, or
        `['key']` for one a dotted selector cannot spell."""
        if self._at("."):
            self._advance()
            if self._token.kind == "name":
                return self._advance().text
        elif self._at("["):
            self._advance()
            if self._token.kind == "string":
                key = str(self._advance().value)
                self._expect("]")
                return key
        raise self._error(f"expected {_USAGE[root]}")

    def _field(self, root: str, fields: tuple[str, ...]) -> str:
        """One of the language's own words after a dot (`.result`, `.id`)."""
        if not self._at("."):
            raise self._error(f"expected {_USAGE[root]}")
        self._advance()
        token = self._token
        if token.kind != "name":
            raise self._error(f"expected {_USAGE[root]}")
        if token.text not in fields:
            owner = "a task" if root == "tasks" else root
            meant = did_you_mean(token.text, fields)
            raise self._error(f"{owner} has no field {token.text!r}{meant}; use {_USAGE[root]}")
        self._advance()
        return token.text

    def _expect(self, operator: str) -> None:
        if not self._at(operator):
            raise self._error(f"unexpected {_describe(self._token)}; expected {operator!r}")
        self._advance()

    def _error(self, reason: str, offset: int | None = None) -> ExpressionSyntaxError:
        where = self._token.offset if offset is None else offset
        return ExpressionSyntaxError(reason, text=self._text, offset=where)


def _describe(token: Token) -> str:
    if token.kind == "end":
        return f"end of expression {CLOSE}"
    if token.kind == "string":
        return "string"
    if token.kind == "number":
        return f"number {token.text}"
    return repr(token.text)
