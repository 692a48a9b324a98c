"""The `Range` request header (RFC 9110 §14), as far as a log reader needs it: one range
of bytes, from a start (`bytes=a-b`, `bytes=a-`) or the end (`bytes=-n`), so a page can
show the end of a large log and fetch what came before on demand."""

from __future__ import annotations

import re

_ONE_RANGE = re.compile(r"(\d*)-(\d*)")


class Unsatisfiable(Exception):
    """No byte of the range exists, or the header names several ranges or none."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The first and the last byte (inclusive) of `size` bytes that `header` asks for.

    None means the whole representation is sent, as the RFC allows a server to: a unit
    other than bytes, or an empty log (no range of it could be satisfied, and an empty
    200 tells a reader just as well that there is nothing)."""
    unit, _, ranges = header.partition("=")
    if unit.strip().lower() != "bytes" or size == 0:
        return None
    match = _ONE_RANGE.fullmatch(ranges.strip())
    # Several ranges would need a multipart answer; a reader of a log never needs one.
    if match is None or match.group(1) == match.group(2) == "":
        raise Unsatisfiable(f"unsupported range {header!r}: ask for one range of bytes")
    first, last = match.group(1), match.group(2)
    if first == "":
        length = int(last)
        if length == 0:
            raise Unsatisfiable("a range of the last 0 bytes holds nothing")
        return max(0, size - length), size - 1
    start = int(first)
    end = size - 1 if last == "" else min(int(last), size - 1)
    if start >= size:
        raise Unsatisfiable(f"the range starts at byte {start}, past the {size} bytes there are")
    if end < start:
        raise Unsatisfiable(f"the range ends at byte {last}, before its start {start}")
    return start, end
