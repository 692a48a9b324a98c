"""Tokens of one expression, read from just after its `${{` up to its `}}`.

The lexer, not a search for `}}`, finds where an expression ends, so that `}}` inside a
string literal (`fromJSON('{"a": {}}')`) does not end it.
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from runsvc.domain.expressions.errors import ExpressionSyntaxError

MAX_EXPRESSION_LENGTH = 1000
"""Characters from `${{` to `}}`, both included."""

OPEN = "${{"
CLOSE = "}}"

TokenKind = Literal["name", "string", "number", "operator", "end"]


class Token(NamedTuple):
    kind: TokenKind
    text: str
    offset: int
    value: str | int | float | None = None


# ASCII only, spelled out: `\d` and `str.isdigit` also accept other scripts' digits.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
# After a dot a selector may start with a digit or hyphen: task names such as `1st` or
# `build-linux` are written `tasks.1st` and `tasks.build-linux`.
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")
_WORD_CHARACTERS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")
_WHITESPACE = " \t\r\n"
_OPERATORS = ("==", "!=", "&&", "||", "!", "(", ")", "[", "]", ".", ",")
_MISSPELT_OPERATORS = {"=": "use == to compare", "&": "use && for and", "|": "use || for or"}


class Lexer:
    def __init__(self, text: str, opened_at: int) -> None:
        self._text = text
        self._opened_at = opened_at
        self._position = opened_at + len(OPEN)
        self._after_dot = False

    def next(self) -> Token:
        token = self._read()
        if token.offset + len(token.text) - self._opened_at > MAX_EXPRESSION_LENGTH:
            raise self._error(
                f"an expression may be at most {MAX_EXPRESSION_LENGTH} characters long",
                self._opened_at,
            )
        self._after_dot = token.kind == "operator" and token.text == "."
        self._position = token.offset + len(token.text)
        return token

    def _read(self) -> Token:
        text = self._text
        start = self._position
        while start < len(text) and text[start] in _WHITESPACE:
            start += 1
        if start >= len(text):
            raise self._error(f"{OPEN} is not closed by {CLOSE}", self._opened_at)
        if self._after_dot and (segment := _SEGMENT.match(text, start)):
            return Token("name", segment.group(), start)
        if text.startswith(CLOSE, start):
            return Token("end", CLOSE, start)
        first = text[start]
        if first == "'":
            return self._string(start)
        if first == "-" or "0" <= first <= "9":
            return self._number(start)
        if name := _NAME.match(text, start):
            return Token("name", name.group(), start)
        for operator in _OPERATORS:
            if text.startswith(operator, start):
                return Token("operator", operator, start)
        if first in _MISSPELT_OPERATORS:
            raise self._error(_MISSPELT_OPERATORS[first], start)
        raise self._error(f"unexpected character {first!r}", start)

    def _string(self, start: int) -> Token:
        """A single-quoted string in which `''` stands for one quote."""
        text = self._text
        position = start + 1
        while True:
            quote = text.find("'", position)
            if quote < 0:
                raise self._error("unterminated string", start)
            if text.startswith("''", quote):
                position = quote + 2
                continue
            source = text[start : quote + 1]
            return Token("string", source, start, source[1:-1].replace("''", "'"))

    def _number(self, start: int) -> Token:
        """A JSON number: an integer unless it has a fraction or an exponent."""
        match = _NUMBER.match(self._text, start)
        end = match.end() if match else start + 1
        if match is None or (end < len(self._text) and self._text[end] in _WORD_CHARACTERS):
            raise self._error("invalid number", start)
        source = match.group()
        if not any(c in source for c in ".eE"):
            return Token("number", source, start, int(source))
        value = float(source)
        if value in (float("inf"), float("-inf")):
            raise self._error("number out of range", start)
        return Token("number", source, start, value)

    def _error(self, reason: str, offset: int) -> ExpressionSyntaxError:
        return ExpressionSyntaxError(reason, text=self._text, offset=offset)
