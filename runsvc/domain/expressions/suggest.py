"""The name meant, for an unknown name or function of an expression."""

from __future__ import annotations

from collections.abc import Iterable

from runsvc.domain.suggest import did_you_mean


def hint(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` or nothing. A difference in case alone (`fromJson`) is
    matched first: difflib, being case-sensitive, finds `fromJSON` too far from it."""
    # Sorted, so that the hint never depends on the order of a set.
    candidates = sorted(known)
    by_case: dict[str, str] = {}
    for candidate in candidates:
        by_case.setdefault(candidate.lower(), candidate)
    if name.lower() in by_case:
        return f" (did you mean {by_case[name.lower()]!r}?)"
    return did_you_mean(name, candidates)
