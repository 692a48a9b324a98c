"""Recreating a run: from scratch, from failed tasks, or from chosen tasks."""

from __future__ import annotations

import msgspec
import pytest

from runsvc.domain import commands
from runsvc.domain.errors import Conflict
from runsvc.domain.events import RunCreated
from tests.unit.histories import T0, History, config, task

CONFIG = config(task("a"), task("b", "a"), task("c", "b"), task("d"))


def failed_history() -> History:
    history = History(CONFIG, environment={"E": "1"})
    history.run_task("a")
    history.run_task("d")
    history.start("b")
    history.finish("b", ok=False)
    assert history.state.phase == "finished"
    return history


def recreated(history: History, **kwargs: object) -> RunCreated:
    events = commands.recreate(
        history.state,
        run_id="run2",
        counter=2,
        now=T0,
        admitted=True,
        **kwargs,  # type: ignore[arg-type]
    )
    created = events[0]
    assert isinstance(created, RunCreated)
    return created


def test_from_failed_reruns_failures_and_their_dependents_and_keeps_successes() -> None:
    """Succeeded tasks are carried with their ids; failed ones and what depends on them
    run again; environments and origin are recorded."""
    history = failed_history()
    created = recreated(history, mode="failed", tasks=None, environment={"E": "2"})
    assert set(created.carried) == {"a", "d"}
    assert created.carried["a"].id == history.state.tasks["a"].id
    assert created.recreated_from == "run1"
    assert created.environment == {"E": "2"}
    new = History.__new__(History)
    assert created.static_environment == history.state.static_environment
    del new


def test_from_scratch_and_from_chosen_tasks() -> None:
    """Scratch carries nothing; choosing `a` re-runs a and everything below it."""
    history = failed_history()
    assert recreated(history, mode="scratch", tasks=None, environment=None).carried == {}
    chosen = recreated(history, mode="failed", tasks=["a"], environment=None)
    assert set(chosen.carried) == {"d"}


def test_carried_tasks_start_final_and_the_rest_runs() -> None:
    """In the new run, carried tasks are success from the start and their dependents
    are ready."""
    history = failed_history()
    events = commands.recreate(
        history.state,
        mode="failed",
        tasks=None,
        environment=None,
        run_id="run2",
        counter=2,
        now=T0,
        admitted=True,
    )
    again = History(CONFIG)
    again.events, again.run = [], None
    again.apply(events)
    assert again.statuses() == {"a": "success", "b": "scheduled", "c": "notstarted", "d": "success"}
    assert again.state.tasks["a"].id == history.state.tasks["a"].id


def test_only_ended_runs_can_be_recreated() -> None:
    """Recreating a running run is a conflict."""
    with pytest.raises(Conflict):
        commands.recreate(
            History(CONFIG).state,
            mode="failed",
            tasks=None,
            environment=None,
            run_id="x",
            counter=2,
            now=T0,
            admitted=True,
        )


def test_carried_tasks_keep_their_outputs() -> None:
    """A task carried into the recreated run keeps the outputs of its successful attempt,
    as it keeps its exit code; a carried task without outputs encodes as before."""
    history = History(CONFIG)
    history.start("a")
    history.finish("a", outputs={"artifact": "app-1.2.tar.gz"})
    history.run_task("d")
    history.start("b")
    history.finish("b", ok=False)
    created = recreated(history, mode="failed", tasks=None, environment=None)
    assert created.carried["a"].outputs == {"artifact": "app-1.2.tar.gz"}
    assert created.carried["d"].outputs == {}
    again = History(CONFIG)
    again.events, again.run = [], None
    again.apply([created])
    assert again.state.tasks["a"].outputs == {"artifact": "app-1.2.tar.gz"}
    assert again.state.tasks["d"].outputs == {}
    assert b"outputs" not in msgspec.msgpack.encode(created.carried["d"])
