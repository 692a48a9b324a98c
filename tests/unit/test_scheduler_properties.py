"""Properties of the fold and the scheduler over generated DAGs and executor outcomes."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runsvc.domain import commands
from runsvc.domain.codec import decode_run, encode_run
from runsvc.domain.config import RunConfig
from runsvc.domain.errors import Conflict
from runsvc.domain.events import TaskStatusChanged
from runsvc.domain.fold import apply_event, rebuild_indexes
from runsvc.domain.model import FINAL, Run
from runsvc.domain.scheduler import decide, retry_policy
from runsvc.domain.view import run_view
from tests.unit.histories import T0, History
from tests.unit.strategies import run_configs

Step = tuple[str, str, float]  # (action, task, seconds since start)


def drive(history: History, rng: random.Random, *, allow_stop: bool) -> list[Step]:
    """Play an executor fleet and its operators at random until the run ends. Returns the
    steps taken so the same history can be replayed elsewhere."""
    steps: list[Step] = []
    clock = 0.0
    for _ in range(2000):
        run = history.state
        if run.phase != "running":
            break
        ordered = sorted(run.tasks.values(), key=lambda t: t.order)
        claimable = [t.name for t in ordered if commands.claimable(run, t, history.now)]
        running = [t.name for t in ordered if t.status == "running" and not t.is_parent]
        gated = [
            t.name for t in ordered if t.status == "waiting_approval" and t.approved_by is None
        ]
        waiting = [
            t.next_attempt_at for t in ordered if t.status == "scheduled" and t.next_attempt_at
        ]
        options = [a for a, present in (("start", claimable), ("approve", gated)) if present]
        if running:
            options += ["finish_ok", "finish_ok", "finish_failed", "lose", "unconfirmed", "tick"]
            options += ["finish_outputs", "fail_outputs"]
        if allow_stop and not run.stop_requested and rng.random() < 0.05:
            options.append("stop")
        if not options:
            if not waiting:
                break
            clock = max(clock, (min(waiting) - history.now).total_seconds() + clock)
            history.at(clock)
            continue
        action = rng.choice(options)
        target = ""
        if action == "start":
            target = rng.choice(claimable)
        elif action == "approve":
            target = rng.choice(gated)
        elif action in FINISHES or action in ("lose", "unconfirmed"):
            target = rng.choice(running)
        elif action == "tick":
            clock += rng.choice([1, 60, 400])
        steps.append((action, target, clock))
        perform(history, (action, target, clock))
    return steps


FINISHES = ("finish_ok", "finish_failed", "finish_outputs", "fail_outputs")


def outputs_of(step: Step) -> dict[str, str]:
    """What an attempt ending in this step wrote: nothing, one line, or several lines."""
    action, target, clock = step
    if action == "finish_outputs":
        return {"task": target, "at": f"{clock}"}
    if action == "fail_outputs":
        return {"why": f"{target} failed\nat {clock}\n"}
    return {}


def perform(history: History, step: Step) -> None:
    action, target, clock = step
    history.at(clock)
    run = history.state
    if action == "start":
        task = run.tasks[target]
        parents = [run.tasks[d.task] for d in task.depends]
        assert all(p.final for p in parents), f"{target} started before its parents ended"
        history.start(target)
    elif action == "approve":
        history.approve(target)
    elif action in FINISHES:
        ok = action in ("finish_ok", "finish_outputs")
        history.finish(target, ok=ok, outputs=outputs_of(step))
    elif action == "lose":
        history.lose(target)
    elif action == "unconfirmed":
        history.lose(target, unconfirmed=True)
    elif action == "tick":
        history.tick()
    elif action == "stop":
        history.stop()


def attempt_endings(history: History, name: str) -> tuple[int, int, int]:
    """How many attempts of a task were lost, lost unconfirmed, and failed, from its
    events."""
    lost = unconfirmed = failures = 0
    previous = None
    for event in history.events:
        if not isinstance(event, TaskStatusChanged) or event.task != name:
            continue
        if event.status == "lost" and event.unconfirmed is True:
            unconfirmed += 1
        elif event.status == "lost":
            lost += 1
        elif previous != "lost" and (
            event.status == "failed" or (event.status == "scheduled" and event.error)
        ):
            failures += 1  # a final failure, or a retry after a failure
        previous = event.status
    return lost, unconfirmed, failures


def replayed(history: History) -> Run:
    run: Run | None = None
    for version, event in enumerate(history.events, start=1):
        run = apply_event(run, event, version=version)
    assert run is not None
    return run


def drive_and_replay(spec: RunConfig, seed: int, environment: dict[str, str]) -> History:
    """Drive a run of `spec` to its end at random, then take the same steps again: they
    make the same events, and at every step replaying the events and decoding the stored
    state give the live run. Returns the first history."""
    history = History(spec, environment=environment)
    steps = drive(history, random.Random(seed), allow_stop=True)
    assert history.state.phase == "finished"
    again = History(spec, environment=environment)
    for step in steps:
        perform(again, step)
        assert encode_run(replayed(again)) == encode_run(again.state)
        assert run_view(decode_run(encode_run(again.state))) == run_view(again.state)
    assert again.events == history.events
    return history


def indexes(run: Run) -> dict[str, Any]:
    return {
        "pending": dict(run.pending),
        "skip": list(run.skip),
        "gate": list(run.gate),
        "expand": list(run.expand),
        "slots": {k: list(v) for k, v in run.slots.items() if v},
        "active": run.active,
        "active_in": {k: v for k, v in run.active_in.items() if v},
        "nonfinal": run.nonfinal,
        "open_children": dict(run.open_children),
        "waiting": run.waiting_approval,
        "blocking": run.blocking_failures,
        "closing": list(run.closing),
        "deadlines": sorted(
            d
            for d in run.deadlines
            if run.tasks[run.by_order[d[1]]].status == "running"
            and run.tasks[run.by_order[d[1]]].attempt == d[2]
        ),
    }


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(run_configs(), st.integers(0, 2**32), st.sampled_from(["main", "dev"]))
def test_every_run_ends_and_replays_to_the_same_state(
    config: RunConfig, seed: int, branch: str
) -> None:
    """Driven by random executor outcomes, approvals and timer ticks, every run reaches
    a terminal phase (no stuck runs); no task starts before its parents end; the result
    rules hold; replaying the events, and decoding the stored state, give the same run
    with the same derived indexes."""
    history = History(config, environment={"BRANCH": branch})
    drive(history, random.Random(seed), allow_stop=True)
    run = history.state
    assert run.phase == "finished", [(t.name, t.status) for t in run.tasks.values()]
    assert all(t.status in FINAL for t in run.tasks.values())
    failed = any(t.status == "failed" and not t.spec.continue_on_error for t in run.tasks.values())
    if failed or run.stop_reason == "timeout":
        assert run.result == "failed"
    elif run.stop_requested:
        assert run.result == "stopped"
    else:
        assert run.result == "success"
    # The two budgets, counted from the events: lost attempts against max_lost (one
    # with on_lost=fail), the other ended attempts against the retry policy.
    for task in run.tasks.values():
        if not task.is_parent:
            lost, unconfirmed, failures = attempt_endings(history, task.name)
            assert lost <= (task.spec.max_lost + 1 if task.spec.on_lost == "retry" else 1)
            assert unconfirmed <= commands.MAX_UNCONFIRMED
            assert failures <= retry_policy(run, task).max_attempts

    # Each task shows the outputs its last status change carried.
    shown: dict[str, dict[str, str]] = {}
    for event in history.events:
        if isinstance(event, TaskStatusChanged):
            shown[event.task] = event.outputs or {}
    assert {name: task.outputs for name, task in run.tasks.items()} == {
        name: shown.get(name, {}) for name in run.tasks
    }

    again = replayed(history)
    assert encode_run(again) == encode_run(run)
    assert indexes(again) == indexes(run)
    assert run_view(again) == run_view(run)
    decoded = decode_run(encode_run(run))
    assert encode_run(decoded) == encode_run(run)
    assert indexes(decoded) == indexes(run)
    assert run_view(decoded) == run_view(run)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(run_configs(), st.integers(0, 2**32))
def test_replaying_a_history_with_outputs_reproduces_its_view(config: RunConfig, seed: int) -> None:
    """After every step of a history whose attempts report outputs (one-line and
    multi-line ones, from succeeded and failed attempts), replaying the events so far,
    and decoding the stored state, give the view the live run shows, outputs included."""
    history = History(config, environment={"BRANCH": "main"})
    steps = drive(history, random.Random(seed), allow_stop=True)
    again = History(config, environment={"BRANCH": "main"})
    for step in steps:
        perform(again, step)
        view = run_view(again.state)
        assert run_view(replayed(again)) == view
        assert run_view(decode_run(encode_run(again.state))) == view
    assert run_view(again.state) == run_view(history.state)


@SETTINGS
@given(run_configs(), st.integers(0, 2**32), st.randoms(use_true_random=False))
def test_decisions_are_deterministic_and_do_not_depend_on_meaningless_order(
    config: RunConfig, seed: int, shuffler: random.Random
) -> None:
    """The same history played on a config whose tasks (and environment) are listed in
    another order produces exactly the same decisions; decide is repeatable and leaves
    its input unchanged; a stored and reloaded run decides the same."""
    environment = {"BRANCH": "main", "A": "1", "B": "2"}
    history = History(config, environment=environment)
    steps = drive(history, random.Random(seed), allow_stop=False)

    tasks = list(config.tasks)
    shuffler.shuffle(tasks)
    shuffled_env = dict(reversed(list(environment.items())))
    other = History(msgspec.structs.replace(config, tasks=tasks), environment=shuffled_env)
    for step in steps:
        perform(other, step)
    assert other.events[1:] == history.events[1:]

    later = history.now + timedelta(hours=1)
    for run in (history.state, decode_run(encode_run(history.state))):
        before = encode_run(run)
        first = decide(run, later)
        assert decide(run, later) == first
        assert encode_run(run) == before


@SETTINGS
@given(run_configs())
def test_rebuilt_indexes_equal_incremental_ones_at_every_step(config: RunConfig) -> None:
    """After every command, rebuilding the derived indexes from the task states alone
    gives what the fold maintained incrementally."""
    history = History(config, environment={"BRANCH": "main"})
    rng = random.Random(7)
    for _ in range(60):
        if history.state.phase != "running":
            break
        steps = drive_one(history, rng)
        if not steps:
            break
        copy = decode_run(encode_run(history.state))
        rebuild_indexes(copy)
        assert indexes(copy) == indexes(history.state)


def drive_one(history: History, rng: random.Random) -> bool:
    run = history.state
    ordered = sorted(run.tasks.values(), key=lambda t: t.order)
    claimable = [t.name for t in ordered if commands.claimable(run, t, history.now)]
    if claimable:
        history.start(rng.choice(claimable))
        return True
    running = [t.name for t in ordered if t.status == "running" and not t.is_parent]
    if running:
        history.finish(rng.choice(running), ok=rng.random() < 0.7)
        return True
    gated = [t.name for t in ordered if t.status == "waiting_approval" and not t.approved_by]
    if gated:
        history.approve(gated[0])
        return True
    waiting = [t.next_attempt_at for t in ordered if t.next_attempt_at is not None]
    if waiting:
        history.now = min(waiting)
        return True
    return False


@SETTINGS
@given(run_configs(), st.integers(0, 2**32))
def test_kept_decisions_equal_their_folded_events_and_are_undone(
    config: RunConfig, seed: int
) -> None:
    """Under `journal(keep_inner=True)` (how the service decides a batch of commands), a
    command leaves the run exactly as folding its events would, the next command sees
    that, a refused command leaves nothing, and the outer journal restores the run."""
    queued = History(config, admitted=False).state
    before = encode_run(queued)
    with queued.journal(keep_inner=True):
        events = commands.cancel(queued, T0)
        expected = decode_run(before)
        for event in events:
            expected = apply_event(expected, event, version=expected.version + 1)
        assert encode_run(queued) == encode_run(expected)
    assert encode_run(queued) == before

    history = History(config, environment={"BRANCH": "main"})
    rng = random.Random(seed)
    for _ in range(40):
        run = history.state
        if run.phase != "running":
            break
        before = encode_run(run)
        expected = decode_run(before)
        with run.journal(keep_inner=True):
            for command in (commands.tick, commands.request_stop, commands.request_stop):
                version = run.version
                try:
                    events = command(run, history.now)
                except Conflict:  # the run has finished: nothing left to stop
                    events = []
                assert run.version == version + len(events)
                for event in events:
                    expected = apply_event(expected, event, version=expected.version + 1)
                assert encode_run(run) == encode_run(expected)
                assert indexes(run) == indexes(expected)
        assert encode_run(run) == before
        if not drive_one(history, rng):
            break
