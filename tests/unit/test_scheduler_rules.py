"""One scenario per rule of the run model, written as short histories."""

from __future__ import annotations

from datetime import timedelta

import pytest

from runsvc.domain import commands
from runsvc.domain.codec import encode_run
from runsvc.domain.errors import Conflict, NotFound
from runsvc.domain.events import (
    RunPhaseChanged,
    RunResultChanged,
    RunStopRequested,
    TaskApproved,
    TaskExpanded,
    TaskStatusChanged,
)
from runsvc.domain.scheduler import decide, next_wakeup
from runsvc.domain.view import run_view
from tests.unit.histories import T0, History, config, task


def test_phases_of_a_new_run() -> None:
    """Admitted runs start running with their roots scheduled; others stay queued until
    admitted; a run with setup errors goes to setuperror and never runs."""
    running = History(config(task("a"), task("b", "a")))
    assert running.state.phase == "running"
    assert running.statuses() == {"a": "scheduled", "b": "notstarted"}
    queued = History(config(task("a")), admitted=False)
    assert queued.state.phase == "queued"
    assert decide(queued.state, T0) == []
    queued.apply(commands.admit(queued.state, T0))
    assert queued.statuses() == {"a": "scheduled"}
    with pytest.raises(Conflict):
        commands.admit(queued.state, T0)
    broken = History(config(task("a")), setup_errors=["no such repo"])
    assert broken.state.phase == "setuperror"
    assert broken.state.setup_errors == ["no such repo"]
    assert decide(broken.state, T0) == []


def test_success_path_and_result_before_finished() -> None:
    """Dependents run after their parents succeed; the result is emitted before the
    phase `finished`."""
    history = History(config(task("a"), task("b", "a"), task("c", "b")))
    history.start("a")
    history.finish("a")
    assert history.changes() == [("a", "success"), ("b", "scheduled")]
    history.run_task("b")
    history.run_task("c")
    kinds = [type(e) for e in history.last]
    assert kinds[-2:] == [RunResultChanged, RunPhaseChanged]
    assert (history.state.result, history.state.phase) == ("success", "finished")


def test_on_failure_runs_after_failed_parent_and_skips_propagate_at_once() -> None:
    """A failed parent skips its on_success children and everything below them in the
    same call, runs its on_failure children, and the rest of the run goes on."""
    history = History(
        config(
            task("build"),
            task("test", "build"),
            task("package", "test"),
            task("publish", "package"),
            task("cleanup", {"task": "test", "on": ["failure"]}),
            task("after_skip", {"task": "publish", "on": ["skipped"]}),
            task("lint"),
        )
    )
    history.run_task("build")
    history.start("test")
    history.finish("test", ok=False)
    assert history.changes() == [
        ("test", "failed"),
        ("package", "skipped"),
        ("publish", "skipped"),
        ("cleanup", "scheduled"),
        ("after_skip", "scheduled"),
    ]
    assert "test ended failed; needs success" in (history.state.tasks["package"].error or "")
    assert history.status("lint") == "scheduled"
    for name in ("cleanup", "after_skip", "lint"):
        history.run_task(name)
    assert (history.state.phase, history.state.result) == ("finished", "failed")


def test_retries_back_off_and_wait_for_their_time() -> None:
    """A failed attempt with attempts left is scheduled again with an exponential backoff,
    capped; it cannot start before its time; the last failure is final."""
    retry = {"max_attempts": 4, "backoff": "2s", "factor": 3, "max_backoff": "10s"}
    history = History(config(task("flaky", retry=retry)))
    delays = []
    for attempt in (1, 2, 3):
        history.start("flaky")
        history.finish("flaky", ok=False, exit_code=7)
        flaky = history.state.tasks["flaky"]
        assert (flaky.status, flaky.attempt) == ("scheduled", attempt + 1)
        assert flaky.error == f"attempt {attempt} failed: exit code 7"
        assert flaky.next_attempt_at is not None
        delays.append(flaky.next_attempt_at - history.now)
        with pytest.raises(Conflict):
            commands.start_attempt(
                history.state, "flaky", attempt=attempt + 1, executor="e", now=history.now
            )
        history.now = flaky.next_attempt_at
    assert delays == [timedelta(seconds=2), timedelta(seconds=6), timedelta(seconds=10)]
    history.start("flaky")
    history.finish("flaky", ok=False)
    assert history.status("flaky") == "failed"
    assert history.state.result == "failed"


def test_run_default_retry_applies_unless_the_task_overrides() -> None:
    """The run's retry is the default; a task's own retry wins."""
    history = History(
        config(
            task("a"),
            task("b", retry={"max_attempts": 1}),
            retry={"max_attempts": 2, "backoff": "0s"},
        )
    )
    history.start("a")
    history.finish("a", ok=False)
    assert (history.status("a"), history.state.tasks["a"].next_attempt_at) == ("scheduled", None)
    history.start("b")
    history.finish("b", ok=False)
    assert history.status("b") == "failed"


def test_task_timeout_fails_the_attempt_then_retries() -> None:
    """A running attempt past its timeout fails on the next tick and is retried."""
    history = History(config(task("slow", timeout="5m", retry={"max_attempts": 2})))
    history.start("slow")
    assert next_wakeup(history.state) == T0 + timedelta(minutes=5)
    history.at(299).tick()
    assert history.last == []
    history.at(300).tick()
    slow = history.state.tasks["slow"]
    assert (slow.status, slow.attempt) == ("scheduled", 2)
    assert slow.error == "attempt 1 failed: timed out after 5m"
    # The first attempt's late report is fenced off.
    with pytest.raises(Conflict):
        commands.finish_attempt(
            history.state,
            "slow",
            attempt=1,
            succeeded=True,
            exit_code=0,
            error=None,
            now=history.now,
        )


def test_run_timeout_stops_the_run_with_result_failed_and_approval_time_is_free() -> None:
    """A run past its timeout is stopped (reason timeout) and fails; time spent waiting
    for an approval does not count."""
    history = History(config(task("gate", approval=True), task("work", "gate"), timeout="10m"))
    assert history.status("gate") == "waiting_approval"
    assert next_wakeup(history.state) is None
    history.at(3600).approve("gate")
    assert history.state.paused_s == 3600
    history.at(3600 + 60).run_task("gate")
    history.start("work")
    assert next_wakeup(history.state) == T0 + timedelta(seconds=3600 + 600)
    history.at(3600 + 600).tick()
    assert isinstance(history.last[0], RunStopRequested)
    assert history.state.stop_reason == "timeout"
    history.finish("work", ok=False, error="killed")
    assert history.status("work") == "stopped"
    assert (history.state.phase, history.state.result) == ("finished", "failed")


def test_continue_on_error_does_not_fail_the_run() -> None:
    """A failure with continue_on_error leaves the run successful; dependents still see
    the failure."""
    history = History(
        config(
            task("lint", continue_on_error=True),
            task("fix", {"task": "lint", "on": ["failure"]}),
            task("ship", "lint"),
        )
    )
    history.start("lint")
    history.finish("lint", ok=False)
    assert history.statuses() == {"lint": "failed", "fix": "scheduled", "ship": "skipped"}
    history.run_task("fix")
    assert (history.state.phase, history.state.result) == ("finished", "success")


def test_approval_gates_record_approver_and_comment() -> None:
    """A gated task waits for approval; approving records who and why, then it runs.
    Approving a task that is not waiting is a conflict; an unknown task is not found."""
    history = History(config(task("deploy", approval=True)))
    assert history.status("deploy") == "waiting_approval"
    assert run_view(history.state).tasks["deploy"].reason == "waiting for approval"
    history.approve("deploy", approver="carol", comment="ship it")
    approved = history.last[0]
    assert isinstance(approved, TaskApproved)
    assert (approved.approver, approved.comment) == ("carol", "ship it")
    assert history.status("deploy") == "scheduled"
    assert history.state.tasks["deploy"].approved_by == "carol"
    with pytest.raises(Conflict, match="not waiting for approval"):
        commands.approve(history.state, "deploy", approver="x", comment=None, now=T0)
    with pytest.raises(NotFound):
        commands.approve(history.state, "nope", approver="x", comment=None, now=T0)


@pytest.mark.parametrize(
    ("when", "runs"),
    [
        ({"env": "BRANCH", "equals": "main"}, True),
        ({"env": "BRANCH", "equals": "dev"}, False),
        ({"env": "BRANCH", "not_equals": "main"}, False),
        ({"env": "MISSING", "not_equals": "main"}, True),
        ({"env": "BRANCH", "in": ["dev", "main"]}, True),
        ({"env": "BRANCH", "in": ["dev"]}, False),
    ],
)
def test_when_conditions_on_the_environment(when: dict[str, object], runs: bool) -> None:
    """`when` equals / not_equals / in on the merged environment; false means skipped,
    with the condition as the reason, and the skip propagates."""
    history = History(
        config(task("deploy", when=when), task("notify", "deploy")), environment={"BRANCH": "main"}
    )
    if runs:
        assert history.status("deploy") == "scheduled"
    else:
        assert history.statuses() == {"deploy": "skipped", "notify": "skipped"}
        assert "does not hold" in (history.state.tasks["deploy"].error or "")
        assert history.state.result == "success"


def test_foreach_parallel_with_max_parallel_and_aggregate() -> None:
    """A foreach task expands into indexed children carrying their items, runs at most
    `max_parallel` of them at once, and takes their aggregate outcome."""
    history = History(
        config(
            task("shard", foreach=["a", "b", "c", 4], max_parallel=2),
            task("merge", "shard"),
        )
    )
    expanded = next(e for e in history.last if isinstance(e, TaskExpanded))
    assert [(c.name, c.item) for c in expanded.children] == [
        ("shard[0]", "a"),
        ("shard[1]", "b"),
        ("shard[2]", "c"),
        ("shard[3]", "4"),
    ]
    assert history.status("shard") == "running"
    scheduled = [n for n, s in history.statuses().items() if s == "scheduled"]
    assert scheduled == ["shard[0]", "shard[1]"]
    assert "shard runs at most 2" in (run_view(history.state).tasks["shard[2]"].reason or "")
    history.run_task("shard[0]")
    assert history.status("shard[2]") == "scheduled"
    history.run_task("shard[1]")
    history.run_task("shard[2]")
    history.start("shard[3]")
    history.finish("shard[3]", ok=False)
    assert history.status("shard") == "failed"
    assert history.state.tasks["shard"].error == "1 of 4 items failed"
    assert history.status("merge") == "skipped"


def test_foreach_sequence_stops_after_a_failure() -> None:
    """In sequence, each child runs after the previous succeeded; after a failure the
    remaining children are skipped."""
    history = History(config(task("step", foreach=[1, 2, 3], foreach_strategy="sequence")))
    assert [n for n, s in history.statuses().items() if s == "scheduled"] == ["step[0]"]
    history.run_task("step[0]")
    assert history.status("step[1]") == "scheduled"
    history.start("step[1]")
    history.finish("step[1]", ok=False)
    assert history.status("step[2]") == "skipped"
    assert history.status("step") == "failed"


def test_run_max_parallel_limits_active_tasks() -> None:
    """The run's max_parallel bounds scheduled plus running tasks; others wait with a
    reason and get the freed slot in order."""
    history = History(config(*(task(f"t{i}") for i in range(5)), max_parallel=2))
    assert [n for n, s in history.statuses().items() if s == "scheduled"] == ["t0", "t1"]
    assert "at most 2 tasks" in (run_view(history.state).tasks["t3"].reason or "")
    history.run_task("t1")
    assert history.status("t2") == "scheduled"
    assert history.status("t3") == "notstarted"


def test_stop_cancels_waiting_tasks_and_stops_running_ones() -> None:
    """Stop: no new task starts, tasks not running are cancelled, a running task ends
    stopped when it reports a failure (success stays success), the run ends stopped.
    A second stop changes nothing; stopping a finished run is a conflict."""
    history = History(
        config(task("a"), task("b"), task("gate", approval=True), task("c", "a"), max_parallel=2)
    )
    history.start("a")
    history.start("b")
    history.stop()
    assert history.statuses() == {
        "a": "running",
        "b": "running",
        "gate": "cancelled",
        "c": "cancelled",
    }
    assert history.state.stop_requested
    assert commands.request_stop(history.state, T0) == []
    history.finish("a", ok=False, error="terminated")
    history.finish("b", ok=True)
    assert history.statuses()["a"] == "stopped"
    assert history.statuses()["b"] == "success"
    assert (history.state.phase, history.state.result) == ("finished", "stopped")
    with pytest.raises(Conflict, match="only a running run"):
        commands.request_stop(history.state, T0)


def test_stop_ends_a_task_waiting_for_its_retry() -> None:
    """A task waiting for its retry time is ended by a stop too."""
    history = History(config(task("flaky", retry={"max_attempts": 3, "backoff": "1m"})))
    history.start("flaky")
    history.finish("flaky", ok=False)
    history.stop()
    assert history.status("flaky") == "cancelled"
    assert history.state.result == "stopped"


def test_cancel_applies_to_a_queued_run_only() -> None:
    """A queued run can be cancelled (its tasks too, result unknown); a running one
    cannot."""
    queued = History(config(task("a"), task("b", "a")), admitted=False)
    queued.cancel()
    assert queued.state.phase == "cancelled"
    assert set(queued.statuses().values()) == {"cancelled"}
    assert queued.state.result == "unknown"
    running = History(config(task("a")))
    with pytest.raises(Conflict, match="stop a running run instead"):
        commands.cancel(running.state, T0)


def test_lost_attempts_follow_on_lost() -> None:
    """A lost attempt is recorded as lost; on_lost=retry tries again, on_lost=fail ends
    the task failed."""
    history = History(
        config(task("idempotent", retry={"max_attempts": 2}), task("once", on_lost="fail"))
    )
    history.start("idempotent")
    history.lose("idempotent")
    assert history.changes() == [("idempotent", "lost"), ("idempotent", "scheduled")]
    assert history.state.tasks["idempotent"].attempt == 2
    history.start("once")
    history.lose("once")
    assert history.changes()[:2] == [("once", "lost"), ("once", "failed")]


def test_reports_on_a_stale_attempt_are_refused() -> None:
    """Fencing: finishing or losing an attempt that is not the current running one is a
    conflict and changes nothing."""
    history = History(config(task("a", retry={"max_attempts": 2})))
    history.start("a")
    history.lose("a")
    before = encode_run(history.state)
    with pytest.raises(Conflict):
        commands.finish_attempt(
            history.state, "a", attempt=1, succeeded=True, exit_code=0, error=None, now=T0
        )
    with pytest.raises(Conflict):
        commands.lose_attempt(history.state, "a", attempt=1, error="late", now=T0)
    assert encode_run(history.state) == before


def test_decide_leaves_the_run_unchanged_and_reaches_a_fixed_point() -> None:
    """decide never mutates its input; a long chain of skips is decided in one call."""
    chain = [task("root")] + [task(f"n{i}", "root" if i == 0 else f"n{i - 1}") for i in range(50)]
    history = History(config(*chain, task("free")))
    history.start("root")
    state = history.state
    before = encode_run(state)
    events = commands.finish_attempt(
        state, "root", attempt=1, succeeded=False, exit_code=1, error=None, now=T0
    )
    assert encode_run(state) == before
    skipped = [e.task for e in events if isinstance(e, TaskStatusChanged) and e.status == "skipped"]
    assert skipped == [f"n{i}" for i in range(50)]


def test_reasons_for_tasks_that_are_not_running() -> None:
    """Every task that is neither running nor final says why."""
    history = History(
        config(
            task("a"),
            task("b", "a"),
            task("flaky", retry={"max_attempts": 2, "backoff": "30s"}),
            task("gate", approval=True),
            task("picky", runs_on={"os": "linux"}),
        )
    )
    history.start("flaky")
    history.finish("flaky", ok=False)
    history.start("a")
    tasks = run_view(history.state).tasks
    assert tasks["a"].reason is None
    assert tasks["b"].reason == "waiting for a"
    assert tasks["flaky"].reason is not None
    assert tasks["flaky"].reason.startswith("waiting for its retry time 2026-01-01T00:00:30")
    assert tasks["gate"].reason == "waiting for approval"
    assert tasks["picky"].reason == "waiting for an executor with labels os=linux"


def test_approval_wait_pauses_the_run_timeout_only_when_nothing_runs() -> None:
    """While another task runs, time spent waiting for an approval still counts; the
    pause covers only the time when the run waits on the approval alone."""
    history = History(
        config(task("gate", approval=True), task("long"), task("after", "gate"), timeout="10m")
    )
    history.start("long")
    assert history.state.paused_since is None  # something runs: the clock goes on
    history.at(300).finish("long")
    assert history.state.paused_since == T0 + timedelta(seconds=300)
    history.at(3300).approve("gate")
    assert history.state.paused_s == 3000
    assert next_wakeup(history.state) == T0 + timedelta(seconds=3000 + 600)


def test_cancel_ends_tasks_before_the_phase() -> None:
    """A cancelled run's task cancellations come before the phase change."""
    queued = History(config(task("a")), admitted=False)
    queued.cancel()
    assert isinstance(queued.last[-1], RunPhaseChanged)
    assert all(isinstance(e, TaskStatusChanged) for e in queued.last[:-1])


def test_huge_backoff_factors_cap_instead_of_overflowing() -> None:
    """Backoff growth that would overflow a float stops at max_backoff."""
    from runsvc.domain.config import Retry
    from runsvc.domain.scheduler import backoff

    policy = Retry(max_attempts=100, backoff="1s", factor=100, max_backoff="1h")
    assert backoff(policy, 99) == timedelta(hours=1)
