"""Synthetic run histories for projection and snapshot tests: plausible event sequences
appended straight to the log, without the scheduler (whose own tests cover decisions)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from eventlog.records import Metadata
from eventlog.store import NO_STREAM, EventStore
from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.events import (
    SYSTEM,
    Event,
    RunCreated,
    RunPhaseChanged,
    RunResultChanged,
    TaskStatusChanged,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
META = Metadata(actor=SYSTEM, recorded_at=T0)
GROUPS = ["/org/a", "/org/a/main", "/org/a/main/nightly", "/org/ab", "/org/b", "/other"]


def created(run_id: str, group: str, counter: int, at: datetime) -> RunCreated:
    config = RunConfig(
        tasks=[
            TaskConfig(name="build", run="make"),
            TaskConfig(name="test", run="make test", depends=["build"]),
        ]
    )
    return RunCreated(
        run_id=run_id, group=group, name="ci", counter=counter, config=config, created_at=at
    )


def history(rng: random.Random, at: datetime) -> list[list[Event]]:
    """The later appends of one run after its creation: start, tasks, an outcome."""
    steps: list[list[Event]] = []
    if rng.random() < 0.1:
        steps.append([RunPhaseChanged(phase="cancelled", at=at)])
        return steps
    steps.append([RunPhaseChanged(phase="running", at=at)])
    if rng.random() < 0.2:
        return steps  # still running
    for i, task in enumerate(("build", "test")):
        t = at + timedelta(seconds=10 * (i + 1))
        steps.append([TaskStatusChanged(task=task, status="running", attempt=1, at=t)])
        steps.append([TaskStatusChanged(task=task, status="success", attempt=1, at=t, exit_code=0)])
    end = at + timedelta(minutes=1)
    result = rng.choice(["success", "success", "failed", "stopped"])
    steps.append(
        [RunResultChanged(result=result, at=end), RunPhaseChanged(phase="finished", at=end)]
    )
    return steps


async def generate(store: EventStore, runs: int, *, seed: int = 1, prefix: str = "w") -> list[str]:
    """Create `runs` runs with interleaved random histories; return their ids."""
    rng = random.Random(seed)
    counters: dict[str, int] = {}
    pending: list[tuple[str, list[list[Event]], int]] = []
    ids = []
    for n in range(runs):
        group = rng.choice(GROUPS)
        counters[group] = counters.get(group, 0) + 1
        run_id = f"{prefix}{n:05d}"
        at = T0 + timedelta(minutes=n)
        await store.append(
            f"run-{run_id}",
            [created(run_id, group, counters[group], at)],
            NO_STREAM,
            meta=META,
            scope=group,
        )
        ids.append(run_id)
        pending.append((run_id, history(rng, at), 1))
        # Advance a few random runs a step, so histories interleave in the log.
        for _ in range(2):
            index = rng.randrange(len(pending))
            run, steps, version = pending[index]
            if steps:
                step = steps.pop(0)
                await store.append(f"run-{run}", step, version, meta=META, scope=None)
                pending[index] = (run, steps, version + len(step))
    for run, steps, first_version in pending:
        version = first_version
        for step in steps:
            await store.append(f"run-{run}", step, version, meta=META)
            version += len(step)
    return ids
