"""The name meant, for an unknown name or function of an expression."""

from __future__ import annotations

from collections.abc import Iterable

from runsvc.domain.suggest import did_you_mean


def hint(name: str, known: Iterable[str]) -> str:
    """` (did you mean 'x'?)` or nothing. A difference in case alone (`fromJson`) is
    matched first: difflib, being case-sensitive, finds `fromJSON` too far from it."""
    candidates = list(known)
    by_case = {candidate.lower(): candidate for candidate in candidates}
    if name.lower() in by_case:
        return f" (did you mean {by_case[name.lower()]!r}?)"
    return did_you_mean(name, candidates)
