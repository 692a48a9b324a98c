"""Output for people (aligned tables, short durations, local-free UTC times) and for
scripts (one JSON object, or JSON lines for streams)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from datetime import UTC, datetime

import msgspec

_encoder = msgspec.json.Encoder()


def emit_json(value: object) -> None:
    sys.stdout.write(_encoder.encode(value).decode() + "\n")
    sys.stdout.flush()


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in r] for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def moment(value: datetime | None) -> str:
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    """`1m05s`-style time between `start` and `end` (or now, while it goes on)."""
    if start is None:
        return "-"
    seconds = ((end or now or datetime.now(UTC)) - start).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def size(count: int) -> str:
    """`5 B`, `12.5 KiB`, `3.0 MiB`: bytes as a person reads them."""
    amount, unit = float(count), "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{count} B" if unit == "B" else f"{amount:.1f} {unit}"
