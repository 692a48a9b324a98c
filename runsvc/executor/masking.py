"""Keeping the secrets an attempt was given out of what leaves it: its log shows `***` in
place of every secret's value and of the value's base64 and URL-encoded forms, and
`holds` tells whether a text (an output) has one.

The log arrives in pieces, so a value may be cut between two of them: `feed` keeps back
the last `longest − 1` characters of what it has seen (no match can start earlier and
still be incomplete) and writes them out masked once more text, or `flush`, decides
them. Where forms overlap, the longest match at the leftmost place wins.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

MASK = "***"


def forms(value: str) -> set[str]:
    """The value and the encodings of it that a task is likely to print."""
    data = value.encode()
    standard = base64.b64encode(data).decode()
    url_safe = base64.urlsafe_b64encode(data).decode()
    found = {
        value,
        standard,
        standard.rstrip("="),
        url_safe,
        url_safe.rstrip("="),
        quote(value, safe=""),
        quote_plus(value, safe=""),
    }
    found.discard("")
    return found


class Masker:
    """Masks the forms of `values` in a stream of text (`feed`, then `flush`) or in a
    whole text (`mask`)."""

    def __init__(self, values: Iterable[str]) -> None:
        patterns = {form for value in values if value for form in forms(value)}
        ordered = sorted(patterns, key=lambda p: (-len(p), p))
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self.keep = max((len(p) for p in ordered), default=1) - 1
        self._pending = ""

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask(self, text: str) -> str:
        """The whole `text`, masked."""
        return self._pattern.sub(MASK, text) if self._pattern is not None else text

    def holds(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def feed(self, text: str) -> str:
        """What of the stream so far can be written out, masked."""
        if self._pattern is None:
            return text
        buffer = self._pending + text
        safe = len(buffer) - self.keep
        out: list[str] = []
        position = 0
        for match in self._pattern.finditer(buffer):
            if match.start() >= safe:
                break
            # Every match starting before `safe` is whole: the longest form fits in the
            # buffer from there.
            out.append(buffer[position : match.start()])
            out.append(MASK)
            position = match.end()
        if position < safe:
            out.append(buffer[position:safe])
            position = safe
        self._pending = buffer[position:]
        return "".join(out)

    def flush(self) -> str:
        """The rest of the stream, masked: it ended (or a note goes in after it)."""
        rest, self._pending = self._pending, ""
        return self.mask(rest)
