"""One scenario per rule of the run model, written as short histories."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from runsvc.domain import commands
from runsvc.domain.codec import decode_run, encode_run
from runsvc.domain.config import RunConfig, TaskConfig
from runsvc.domain.errors import Conflict, Forbidden, NotFound
from runsvc.domain.events import (
    CarriedTask,
    RunCreated,
    RunPhaseChanged,
    RunResultChanged,
    RunStopRequested,
    TaskApproved,
    TaskExpanded,
    TaskStatusChanged,
    decode_event,
    encode_event,
    event_type_of,
)
from runsvc.domain.model import approximate_size
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
    history.at(30).approve("deploy", approver="carol", comment="ship it")
    approved = history.last[0]
    assert isinstance(approved, TaskApproved)
    assert (approved.approver, approved.comment) == ("carol", "ship it")
    assert history.status("deploy") == "scheduled"
    assert history.state.tasks["deploy"].approved_by == "carol"
    # When, as the event says: the view shows it, and the stored state keeps it.
    assert run_view(history.state).tasks["deploy"].approved_at == T0 + timedelta(seconds=30)
    stored = decode_run(encode_run(history.state))
    assert run_view(stored).tasks["deploy"].approved_at == approved.at
    with pytest.raises(Conflict, match="not waiting for approval"):
        commands.approve(history.state, "deploy", approver="x", comment=None, now=T0)
    with pytest.raises(NotFound):
        commands.approve(history.state, "nope", approver="x", comment=None, now=T0)


def test_an_approval_rule_names_who_may_approve_and_keeps_out_the_submitter() -> None:
    """`approval: {by, not_submitter}`: only the named tokens or roles may approve, never
    the run's submitter; a refusal is a 403 that changes nothing; the submitter is part of
    the stored state."""
    rule = {"by": ["release-managers", "admin"], "not_submitter": True}
    history = History(config(task("deploy", approval=rule)), submitted_by="alice")
    assert history.state.submitted_by == "alice"
    reason = run_view(history.state).tasks["deploy"].reason
    assert reason == (
        "waiting for approval (by release-managers, admin; not by its run's submitter)"
    )
    before = encode_run(history.state)
    for approver, role in (("alice", "admin"), ("bob", "submit"), ("alice", None)):
        with pytest.raises(Forbidden):
            commands.approve(
                history.state,
                "deploy",
                approver=approver,
                approver_role=role,
                comment=None,
                now=T0,
            )
    assert encode_run(history.state) == before
    assert decode_run(before).submitted_by == "alice"
    history.approve("deploy", approver="bob", role="admin")
    assert history.status("deploy") == "scheduled"

    # By name, whatever the role; `not_submitter` alone lets anyone else approve.
    named = History(config(task("d", approval={"by": ["carol"]})), submitted_by="carol")
    named.approve("d", approver="carol", role="submit")
    assert named.state.tasks["d"].approved_by == "carol"
    second = History(config(task("d", approval={"not_submitter": True})), submitted_by="carol")
    with pytest.raises(Forbidden, match="other than its run's submitter \\(carol\\)"):
        second.approve("d", approver="carol")
    second.approve("d", approver="dave")
    # A run whose submitter was not recorded cannot prove the approver is someone else.
    unknown = History(config(task("d", approval={"not_submitter": True})))
    with pytest.raises(Forbidden, match="not recorded"):
        unknown.approve("d", approver="dave")


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


# -- decisions made as soon as they are determined ------------------------------------------

Step = tuple[str, str]  # (action, task): start, ok, fail, lose, approve, stop


def play(history: History, steps: list[Step]) -> None:
    for action, name in steps:
        if action == "start":
            history.start(name)
        elif action == "ok":
            history.finish(name, ok=True)
        elif action == "fail":
            history.finish(name, ok=False)
        elif action == "lose":
            history.lose(name)
        elif action == "approve":
            history.approve(name)
        elif action == "stop":
            history.stop()


@pytest.mark.parametrize(
    ("tasks", "steps", "expected", "child", "reason"),
    [
        pytest.param(
            [task("slow"), task("quick"), task("child", "slow", "quick")],
            [("start", "slow"), ("start", "quick"), ("fail", "quick")],
            {"slow": "running", "quick": "failed", "child": "skipped"},
            "child",
            "quick ended failed; needs success",
            id="skipped-while-other-parent-runs",
        ),
        pytest.param(
            [task("gate", approval=True), task("quick"), task("child", "gate", "quick")],
            [("start", "quick"), ("fail", "quick")],
            {"gate": "waiting_approval", "quick": "failed", "child": "skipped"},
            "child",
            "quick ended failed; needs success",
            id="skipped-while-other-parent-waits-for-approval",
        ),
        pytest.param(
            [
                task("slow"),
                task("quick"),
                task("child", "slow", {"task": "quick", "on": ["failure"]}),
            ],
            [("start", "slow"), ("start", "quick"), ("ok", "quick")],
            {"slow": "running", "quick": "success", "child": "skipped"},
            "child",
            "quick ended success; needs failure",
            id="on-failure-child-skipped-when-parent-succeeds",
        ),
        pytest.param(
            [
                task("slow"),
                task("quick"),
                task("mid", "slow", "quick"),
                task("leaf", "mid"),
                task("cleanup", {"task": "leaf", "on": ["skipped"]}),
            ],
            [("start", "slow"), ("start", "quick"), ("fail", "quick")],
            {"slow": "running", "mid": "skipped", "leaf": "skipped", "cleanup": "scheduled"},
            "leaf",
            "mid ended skipped; needs success",
            id="skip-propagates-through-a-chain",
        ),
        pytest.param(
            [task("slow"), task("quick"), task("child", "slow", "quick")],
            [("start", "slow"), ("start", "quick"), ("ok", "quick")],
            {"slow": "running", "quick": "success", "child": "notstarted"},
            "child",
            None,
            id="satisfied-dependency-still-waits-for-the-other-parent",
        ),
    ],
)
def test_a_child_is_skipped_as_soon_as_one_dependency_can_no_longer_hold(
    tasks: list[dict[str, object]],
    steps: list[Step],
    expected: dict[str, str],
    child: str,
    reason: str | None,
) -> None:
    """A task is skipped as soon as one parent is final with an outcome its dependency
    does not accept, even while other parents run or wait for approval; the skip
    propagates in the same call (History checks the fixed point after every command)."""
    history = History(config(*tasks))
    play(history, steps)
    assert {name: history.status(name) for name in expected} == expected
    if reason is None:
        assert run_view(history.state).tasks[child].reason == "waiting for slow"
    else:
        assert history.state.tasks[child].error == reason


@pytest.mark.parametrize(
    ("tasks", "steps", "result_now", "rest", "final"),
    [
        pytest.param(
            [task("a"), task("b")],
            [("start", "a"), ("start", "b"), ("fail", "a")],
            "failed",
            [("ok", "b")],
            "failed",
            id="first-final-failure-fails-the-run-while-others-run",
        ),
        pytest.param(
            [task("a", continue_on_error=True), task("b")],
            [("start", "a"), ("start", "b"), ("fail", "a")],
            "unknown",
            [("ok", "b")],
            "success",
            id="continue-on-error-keeps-it-unknown",
        ),
        pytest.param(
            [task("a", retry={"max_attempts": 2}), task("b")],
            [("start", "a"), ("start", "b"), ("fail", "a")],
            "unknown",
            [("start", "a"), ("ok", "a"), ("ok", "b")],
            "success",
            id="a-failure-with-attempts-left-is-not-final",
        ),
        pytest.param(
            [task("shard", foreach=["x", "y"])],
            [("start", "shard[0]"), ("start", "shard[1]"), ("fail", "shard[0]")],
            "failed",
            [("ok", "shard[1]")],
            "failed",
            id="a-foreach-item-failing-for-good-fails-the-run",
        ),
        pytest.param(
            [task("a"), task("b")],
            [("start", "a"), ("start", "b"), ("fail", "a")],
            "failed",
            [("stop", ""), ("fail", "b")],
            "failed",
            id="a-later-stop-keeps-failed",
        ),
        pytest.param(
            [task("a"), task("b")],
            [("start", "a"), ("start", "b"), ("stop", "")],
            "unknown",
            [("fail", "a"), ("ok", "b")],
            "stopped",
            id="a-stop-without-failure-decides-at-the-end",
        ),
    ],
)
def test_the_run_result_is_decided_at_the_first_final_failure(
    tasks: list[dict[str, object]],
    steps: list[Step],
    result_now: str,
    rest: list[Step],
    final: str,
) -> None:
    """The result becomes `failed` in the same call as the first task that failed for good
    without continue_on_error, while other tasks still run; it is set once and never
    changes, and the run goes on until its tasks are final. Otherwise it stays `unknown`
    until the run finishes, with the same final result as before."""
    history = History(config(*tasks))
    play(history, steps)
    assert history.state.phase == "running"
    assert history.state.result == result_now
    play(history, rest)
    assert history.state.phase == "finished"
    results = [e.result for e in history.events if isinstance(e, RunResultChanged)]
    assert results == [final]


def test_the_failed_result_follows_the_failure_in_the_same_batch() -> None:
    """The failure and the result are appended together, the result right after it."""
    history = History(config(task("a"), task("b")))
    history.start("a")
    history.start("b")
    history.finish("a", ok=False)
    assert [type(e) for e in history.last] == [TaskStatusChanged, RunResultChanged]
    result = history.last[1]
    assert isinstance(result, RunResultChanged)
    assert (result.result, result.at) == ("failed", history.now)


# -- lost attempts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "losses", "retried"),
    [
        pytest.param({}, 4, 3, id="default-max-lost-3-without-a-retry-policy"),
        pytest.param({"max_lost": 1}, 2, 1, id="max-lost-1"),
        pytest.param({"max_lost": 2, "retry": {"max_attempts": 5}}, 3, 2, id="own-cap"),
    ],
)
def test_lost_attempts_are_retried_up_to_max_lost_then_fail(
    fields: dict[str, object], losses: int, retried: int
) -> None:
    """on_lost=retry (the default) tries a lost attempt again, with no backoff, up to
    `max_lost` times (default 3) whatever the retry policy; the next loss fails the task
    with an error that names the cap, and the run fails."""
    history = History(config(task("a", **fields), task("b")))
    history.start("b")
    for loss in range(1, losses + 1):
        history.start("a")
        history.lose("a")
        a = history.state.tasks["a"]
        if loss <= retried:
            assert history.changes() == [("a", "lost"), ("a", "scheduled")]
            assert (a.attempt, a.lost, a.next_attempt_at) == (loss + 1, loss, None)
            assert a.error == f"attempt {loss} lost: lease expired"
            assert history.state.result == "unknown"
    a = history.state.tasks["a"]
    assert history.changes() == [("a", "lost"), ("a", "failed")]
    assert a.error == f"lease expired (lost {losses} times; max_lost is {retried})"
    assert history.state.result == "failed"


def test_lost_attempts_do_not_use_the_failure_budget_nor_the_other_way_round() -> None:
    """With max_attempts 2 (and the default max_lost), two losses and one failure still
    leave one attempt; the second failure is final. Losses after failures are retried
    too, and a lost retry ignores the failure backoff."""
    retry = {"max_attempts": 2, "backoff": "1m"}
    history = History(config(task("a", retry=retry), task("b", retry=retry)))
    history.start("a")
    history.lose("a")
    history.start("a")
    history.lose("a")
    history.start("a")
    history.finish("a", ok=False)
    a = history.state.tasks["a"]
    assert (a.status, a.attempt, a.lost) == ("scheduled", 4, 2)
    assert a.error == "attempt 3 failed: exit code 1"
    reason = run_view(history.state).tasks["a"].reason or ""
    assert reason.endswith("(attempt 4 of 4, 2 lost)")
    history.now = a.next_attempt_at or history.now
    history.start("a")
    history.finish("a", ok=False)
    assert history.status("a") == "failed"
    assert history.state.tasks["a"].attempt == 4
    # The other way round: a failure first does not shrink the lost budget.
    history.start("b")
    history.finish("b", ok=False)
    b = history.state.tasks["b"]
    history.now = b.next_attempt_at or history.now
    history.start("b")
    history.lose("b")
    b = history.state.tasks["b"]
    assert (b.status, b.attempt, b.next_attempt_at) == ("scheduled", 3, None)


@pytest.mark.parametrize("fields", [{}, {"max_lost": 5}], ids=["default", "max-lost-5"])
def test_on_lost_fail_fails_the_task_at_the_first_loss(fields: dict[str, object]) -> None:
    """on_lost=fail is unchanged: the first loss fails the task with the loss as error,
    whatever max_lost and the retry policy say."""
    history = History(
        config(task("once", on_lost="fail", retry={"max_attempts": 3}, **fields), task("b"))
    )
    history.start("once")
    history.lose("once")
    assert history.changes() == [("once", "lost"), ("once", "failed")]
    once = history.state.tasks["once"]
    assert (once.status, once.error, once.attempt) == ("failed", "lease expired", 1)


def test_an_attempt_never_confirmed_is_put_back_without_using_a_budget() -> None:
    """A loss whose executor never confirmed the attempt (the claim's answer was lost)
    schedules the next attempt at once even with on_lost=fail and no retry policy, and
    uses no budget: the next attempt's failure is still the task's first and only one."""
    history = History(config(task("a", on_lost="fail"), task("b")))
    history.start("a")
    history.lose("a", unconfirmed=True)
    assert history.changes() == [("a", "lost"), ("a", "scheduled")]
    lost = history.last[0]
    assert isinstance(lost, TaskStatusChanged)
    assert lost.unconfirmed is True
    a = history.state.tasks["a"]
    assert (a.attempt, a.lost, a.unconfirmed, a.next_attempt_at) == (2, 0, 1, None)
    assert a.error == "attempt 1 never confirmed by its executor: lease expired"
    history.start("a")
    history.finish("a", ok=False)
    assert history.status("a") == "failed"
    assert history.state.tasks["a"].attempt == 2


def test_unconfirmed_losses_are_free_only_up_to_their_cap() -> None:
    """Past MAX_UNCONFIRMED, a never-confirmed loss is an ordinary one (so an executor
    that dies on receiving a task cannot loop on it): with on_lost=fail, the task fails."""
    history = History(config(task("a", on_lost="fail"), task("b")))
    for _ in range(commands.MAX_UNCONFIRMED):
        history.start("a")
        history.lose("a", unconfirmed=True)
        assert history.status("a") == "scheduled"
    history.start("a")
    history.lose("a", unconfirmed=True)
    lost = history.last[0]
    assert isinstance(lost, TaskStatusChanged)
    assert lost.unconfirmed is msgspec.UNSET
    assert history.status("a") == "failed"
    a = history.state.tasks["a"]
    assert (a.lost, a.unconfirmed) == (1, commands.MAX_UNCONFIRMED)


def test_only_an_unconfirmed_loss_carries_the_flag_in_its_encoding() -> None:
    """Other status changes encode exactly as before the field existed."""
    history = History(config(task("a")))
    history.start("a")
    history.lose("a", unconfirmed=True)
    lost, scheduled = history.last[0], history.last[1]
    assert b'"unconfirmed":true' in msgspec.json.encode(lost)
    assert b"unconfirmed" not in msgspec.json.encode(scheduled)


def test_a_loss_while_the_run_stops_ends_the_task_stopped() -> None:
    """A stop wins over on_lost: a lost attempt of a stopping run ends `stopped`."""
    history = History(config(task("a")))
    history.start("a")
    history.stop()
    history.lose("a")
    assert history.changes() == [("a", "lost"), ("a", "stopped")]
    assert (history.state.phase, history.state.result) == ("finished", "stopped")


def test_an_attempts_outputs_travel_with_its_end_and_show_until_the_next_starts() -> None:
    """The change that ends an attempt carries the outputs its executor reported, failed
    or not, and the task shows them (like its exit code) until its next attempt starts; a
    lost attempt reported none."""
    history = History(config(task("a", retry={"max_attempts": 3}), task("b", "a")))
    history.start("a")
    history.finish("a", ok=False, outputs={"why": "flaky"})
    retry = history.last[0]
    assert isinstance(retry, TaskStatusChanged)
    assert (retry.status, retry.outputs) == ("scheduled", {"why": "flaky"})
    assert history.state.tasks["a"].outputs == {"why": "flaky"}
    history.start("a")
    assert history.state.tasks["a"].outputs == {}
    history.lose("a")
    assert history.state.tasks["a"].outputs == {}
    history.start("a")
    history.finish("a", outputs={"version": "1.2", "notes": "one\ntwo\n"})
    assert history.changes() == [("a", "success"), ("b", "scheduled")]
    assert history.state.tasks["a"].outputs == {"version": "1.2", "notes": "one\ntwo\n"}
    assert history.state.tasks["b"].outputs == {}


def test_a_stopped_or_failed_task_keeps_its_last_attempts_outputs() -> None:
    """A run stopped while a task runs: the task ends `stopped` with what its attempt
    wrote; a task failed for good shows its last attempt's outputs."""
    history = History(config(task("a"), task("b")))
    history.start("a")
    history.start("b")
    history.finish("b", ok=False, outputs={"log": "b.txt"})
    history.stop()
    history.finish("a", ok=False, outputs={"partial": "yes"})
    assert history.statuses() == {"a": "stopped", "b": "failed"}
    assert history.state.tasks["a"].outputs == {"partial": "yes"}
    assert history.state.tasks["b"].outputs == {"log": "b.txt"}


def test_the_view_shows_outputs_only_where_an_attempt_wrote_some() -> None:
    """`tasks.<name>.outputs` is the map of the attempt's outputs, and absent for a task
    without any, so that views of runs without outputs keep their shape."""
    history = History(config(task("a"), task("b")))
    history.start("a")
    history.finish("a", outputs={"image": "registry/app:1.2"})
    history.run_task("b")
    view = msgspec.json.decode(msgspec.json.encode(run_view(history.state)))
    assert view["tasks"]["a"]["outputs"] == {"image": "registry/app:1.2"}
    assert "outputs" not in view["tasks"]["b"]


def test_a_runs_size_in_memory_counts_its_outputs() -> None:
    """Caches bounded by memory see a run's outputs, which may be far larger than the
    rest of a task."""
    history = History(config(task("a"), task("b")))
    before = approximate_size(history.state)
    history.start("a")
    history.finish("a", outputs={"blob": "x" * 60_000})
    assert approximate_size(history.state) >= before + 60_000


# What the version before outputs stored for an attempt's success and for a recreation
# carrying a task: the bytes the hash chain covers.
SUCCESS_BEFORE_OUTPUTS = bytes.fromhex(
    "89a474797065b37461736b5f7374617475735f6368616e676564a47461736ba56275696c64a673746174"
    "7573a773756363657373a7617474656d707401a26174d7ff1d6f2800695735a5a86578656375746f72a2"
    "7831a9657869745f636f646500a56572726f72c0af6e6578745f617474656d70745f6174c0"
)
CREATED_BEFORE_OUTPUTS = bytes.fromhex(
    "de000fa474797065ab72756e5f63726561746564a672756e5f6964a27231a567726f7570a22f67a46e61"
    "6d65a16ea7636f756e74657201a6636f6e66696781a57461736b7391de0002a46e616d65a56275696c64"
    "a372756ea474727565aa637265617465645f6174d7ff1d6f2800695735a5ab616e6e6f746174696f6e73"
    "80b27374617469635f656e7669726f6e6d656e7480ab656e7669726f6e6d656e7480ac73657475705f65"
    "72726f727390af6964656d706f74656e63795f6b6579c0af636f6e63757272656e63795f6b6579c0ae72"
    "65637265617465645f66726f6dc0a76361727269656481a56275696c6483a26964a3616263a761747465"
    "6d707401a9657869745f636f646500"
)


def test_events_without_outputs_keep_the_bytes_they_had_before_outputs() -> None:
    """Events stored before outputs existed decode without any and encode back to the
    very bytes stored, which their hashes cover; the same events made now, without
    outputs, are those bytes too. With outputs, they round-trip."""
    at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    success = TaskStatusChanged(
        task="build", status="success", attempt=1, at=at, executor="x1", exit_code=0
    )
    created = RunCreated(
        run_id="r1",
        group="/g",
        name="n",
        counter=1,
        config=RunConfig(tasks=[TaskConfig(name="build", run="true")]),
        created_at=at,
        carried={"build": CarriedTask(id="abc", attempt=1, exit_code=0)},
    )
    for event, stored in ((success, SUCCESS_BEFORE_OUTPUTS), (created, CREATED_BEFORE_OUTPUTS)):
        decoded = decode_event(event_type_of(event), stored)
        assert decoded == event
        assert encode_event(decoded) == stored
        assert encode_event(event) == stored
    with_outputs = msgspec.structs.replace(success, outputs={"k": "v\nw"})
    assert decode_event("task_status_changed", encode_event(with_outputs)) == with_outputs
    history = History(config(task("a")))
    history.run_task("a")
    assert all(b"outputs" not in encode_event(event) for event in history.events)
