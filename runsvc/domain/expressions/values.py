"""The values expressions compute with (JSON's), and what the language does with them:
truth, equality, text, and the functions."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

import msgspec

Value: TypeAlias = "str | int | float | bool | list[Value] | dict[str, Value] | None"

MAX_JSON_DEPTH = 64
"""Levels of arrays and objects `fromJSON` accepts. Equality and `toJSON` recurse into a
value, so its depth is bounded like an expression's."""


class FunctionFailed(Exception):
    """A function refused its argument; the evaluator adds the function's name and place."""


def is_truthy(value: Value) -> bool:
    """False for `false`, `null`, `''` and `0`; true for everything else, the strings
    `'false'` and `'0'` and empty arrays and objects included (as in GitHub Actions)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str | int | float):
        return bool(value)
    return True


def equal(left: Value, right: Value) -> bool:
    """Equality without conversion: a string equals only the same string (case counts),
    a number only an equal number (`1 == 1.0`), a boolean only itself; arrays and objects
    are equal when their items are."""
    if isinstance(left, bool) or isinstance(right, bool):
        # Python's True == 1 must not leak into the language.
        return type(left) is type(right) and left == right
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left == right
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(equal, left, right))
    if isinstance(left, dict) and isinstance(right, dict):
        return left.keys() == right.keys() and all(equal(v, right[k]) for k, v in left.items())
    return type(left) is type(right) and left == right


def to_text(value: Value) -> str:
    """How a value reads inside a longer string: a string as it is, `null` as nothing,
    anything else as its JSON (`true`, `1.5`, `[1,2]`)."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return to_json(value)


def to_json(value: Value) -> str:
    """Canonical JSON: no spaces, object keys sorted, numbers as msgspec writes them."""
    try:
        return msgspec.json.encode(value, order="sorted").decode()
    except (TypeError, ValueError, OverflowError) as exc:
        raise FunctionFailed(f"cannot be written as JSON ({exc})") from None


def from_json(value: Value) -> Value:
    if not isinstance(value, str):
        raise FunctionFailed(f"takes a string, got {type_name(value)}")
    try:
        decoded: Value = msgspec.json.decode(value)
    except RecursionError:
        raise FunctionFailed(_too_deep()) from None
    except (msgspec.MsgspecError, ValueError) as exc:
        raise FunctionFailed(f"not JSON ({exc})") from None
    if _depth(decoded) > MAX_JSON_DEPTH:
        raise FunctionFailed(_too_deep())
    return decoded


def _too_deep() -> str:
    return f"JSON nested more than {MAX_JSON_DEPTH} levels deep"


def _depth(value: Value) -> int:
    """Levels of arrays and objects; iterative, as the value may be deeper than Python's
    recursion allows."""
    deepest = 0
    pending: list[tuple[Value, int]] = [(value, 0)]
    while pending:
        current, level = pending.pop()
        if isinstance(current, list | dict):
            level += 1
            deepest = max(deepest, level)
            items = current.values() if isinstance(current, dict) else current
            pending.extend((item, level) for item in items)
    return deepest


def type_name(value: Value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


FUNCTIONS: dict[str, Callable[[Value], Value]] = {"fromJSON": from_json, "toJSON": to_json}
"""Every function, by name; each takes one argument."""
