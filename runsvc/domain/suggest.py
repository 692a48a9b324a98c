"""The closest known name to a misspelt field, task or command ("did you mean").

A typo in a run file is the commonest mistake there is, and the list of what would have
been right is short, so every refusal of an unknown name offers the nearest one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

import msgspec

_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(.*)`$")
_STEP = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `known` to `name`, or nothing when none
    is close enough to be a likely typo. A difference in case alone (`fromJson`) is
    matched first: difflib, being case-sensitive, finds `fromJSON` too far from it."""
    # Sorted, so that the hint never depends on the order of a set.
    candidates = sorted(known)
    by_case: dict[str, str] = {}
    for candidate in candidates:
        by_case.setdefault(candidate.lower(), candidate)
    if name.lower() in by_case:
        return f" (did you mean {by_case[name.lower()]!r}?)"
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_field_hint(message: str, root: type[Any], path: str) -> str:
    """For msgspec's "Object contains unknown field `x`" at `path` (`$`-less, such as
    `.config.tasks[0]`) in a document decoded as `root`: the hint naming the field meant,
    or nothing."""
    match = _UNKNOWN_FIELD.match(message)
    if match is None:
        return ""
    return did_you_mean(match.group(1), fields_at(root, path))


def fields_at(root: type[Any], path: str) -> list[str]:
    """The field names (as encoded) of the objects at `path` in a document of type
    `root`; several types' when a union allows several, none when the path leads to no
    object."""
    types: list[msgspec.inspect.Type] = [msgspec.inspect.type_info(root)]
    for key, index in _STEP.findall(path):
        types = [child for t in types for child in _children(t, key if not index else None)]
    return sorted(
        {
            f.encode_name
            for t in _flat(types)
            if isinstance(t, msgspec.inspect.StructType)
            for f in t.fields
        }
    )


def _flat(types: list[msgspec.inspect.Type]) -> list[msgspec.inspect.Type]:
    flat: list[msgspec.inspect.Type] = []
    for t in types:
        if isinstance(t, msgspec.inspect.UnionType):
            flat.extend(_flat(list(t.types)))
        elif isinstance(t, msgspec.inspect.Metadata):  # a field with a description
            flat.extend(_flat([t.type]))
        else:
            flat.append(t)
    return flat


def _children(t: msgspec.inspect.Type, key: str | None) -> list[msgspec.inspect.Type]:
    """What one step into `t` leads to: the field `key`, or an item (`key` None)."""
    found: list[msgspec.inspect.Type] = []
    for each in _flat([t]):
        if isinstance(each, msgspec.inspect.StructType) and key is not None:
            found.extend(f.type for f in each.fields if f.encode_name == key)
        elif isinstance(each, msgspec.inspect.DictType):
            found.append(each.value_type)
        elif (
            isinstance(each, (msgspec.inspect.ListType, msgspec.inspect.TupleType)) and key is None
        ):
            item = getattr(each, "item_type", None)
            found.extend([item] if item is not None else list(getattr(each, "item_types", ())))
    return found
