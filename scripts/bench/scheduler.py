"""Scheduler benchmark: drive a layered DAG from creation to finished with instant
outcomes, through the real commands and fold (no database), as the service would.

    .venv/bin/python scripts/bench/scheduler.py [--width 100]

`scheduler_drive_10k_s` uses the 1k time as its baseline: a ratio near 10 means each
decision costs what changed, not the size of the run.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

sys.path[0] = str(Path(__file__).resolve().parents[2])
sys.path.append(str(Path(__file__).resolve().parent))

import msgspec
from _report import emit, note

from runsvc.domain import commands
from runsvc.domain.config import RunConfig
from runsvc.domain.events import Event, TaskStatusChanged
from runsvc.domain.fold import apply_event
from runsvc.domain.model import Run
from runsvc.domain.requests import CreateRunRequest

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def layered(tasks: int, width: int) -> RunConfig:
    spec = []
    for index in range(tasks):
        layer, slot = divmod(index, width)
        depends = []
        if layer:
            previous = (layer - 1) * width
            depends = sorted({f"t{previous + slot}", f"t{previous + (slot * 7 + 3) % width}"})
        spec.append({"name": f"t{index}", "run": "true", "depends": depends})
    return msgspec.convert({"tasks": spec}, RunConfig)


def drive(config: RunConfig) -> tuple[float, int]:
    request = CreateRunRequest(group="/bench", name="drive", config=config)
    started = time.perf_counter()
    run: Run | None = None
    ready: deque[str] = deque()
    events_total = 0

    def applied(events: list[Event]) -> None:
        nonlocal run, events_total
        for event in events:
            run = apply_event(run, event, version=(run.version if run else 0) + 1)
            if isinstance(event, TaskStatusChanged) and event.status == "scheduled":
                ready.append(event.task)
        events_total += len(events)

    applied(commands.create_run(request, run_id="bench", counter=1, now=NOW, admitted=True))
    assert run is not None
    while ready:
        name = ready.popleft()
        applied(commands.start_attempt(run, name, attempt=1, executor="bench", now=NOW))
        applied(
            commands.finish_attempt(
                run, name, attempt=1, succeeded=True, exit_code=0, error=None, now=NOW
            )
        )
    elapsed = time.perf_counter() - started
    assert (run.phase, run.result) == ("finished", "success"), (run.phase, run.result)
    return elapsed, events_total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--width", type=int, default=100, help="tasks per layer")
    args = parser.parse_args()
    drive(layered(200, args.width))  # warm up
    small, small_events = drive(layered(1_000, args.width))
    note(f"1k tasks: {small_events} events in {small:.3f}s")
    large, large_events = drive(layered(10_000, args.width))
    note(f"10k tasks: {large_events} events in {large:.3f}s")
    emit("scheduler_drive_1k_s", small, "s")
    emit("scheduler_drive_10k_s", large, "s", baseline=small, target="ratio<=15")


if __name__ == "__main__":
    main()
