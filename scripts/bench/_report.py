"""Benchmark output as docs/BENCHMARKS.md describes it: one JSON object per measure
on stdout; everything else goes to stderr."""

from __future__ import annotations

import json
import sys


def emit(
    measure: str,
    value: float,
    unit: str,
    *,
    baseline: float | None = None,
    target: str | None = None,
) -> None:
    """Print one measure. `ratio` is value / baseline, or null without a baseline."""
    ratio = round(value / baseline, 3) if baseline else None
    record = {
        "measure": measure,
        "value": round(value, 3),
        "unit": unit,
        "baseline": round(baseline, 3) if baseline is not None else None,
        "ratio": ratio,
        "target": target,
    }
    print(json.dumps(record), flush=True)


def note(*parts: object) -> None:
    """Progress and context for the person running the benchmark (stderr)."""
    print(*parts, file=sys.stderr, flush=True)
