"""Scenario tests as short histories: commands in, events out, against the real fold."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from runsvc.domain import commands
from runsvc.domain.config import RunConfig
from runsvc.domain.events import Event, RunResultChanged, TaskStatusChanged
from runsvc.domain.fold import apply_event
from runsvc.domain.model import OUTCOME, Run
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.scheduler import decide

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def config(*tasks: dict[str, Any], **run: Any) -> RunConfig:
    return msgspec.convert({"tasks": list(tasks), **run}, RunConfig)


def task(name: str, *depends: Any, **fields: Any) -> dict[str, Any]:
    return {"name": name, "run": f"echo {name}", "depends": list(depends), **fields}


class History:
    """A run driven through the commands; `last` holds the events of the last command."""

    def __init__(
        self,
        run_config: RunConfig,
        *,
        environment: dict[str, str] | None = None,
        admitted: bool = True,
        setup_errors: list[str] | None = None,
        now: datetime = T0,
        submitted_by: str | None = None,
    ) -> None:
        self.now = now
        self.run: Run | None = None
        self.events: list[Event] = []
        self.last: list[Event] = []
        request = CreateRunRequest(
            group="/t",
            name="t",
            config=run_config,
            environment=environment or {},
            setup_errors=setup_errors or [],
        )
        self.apply(
            commands.create_run(
                request,
                run_id="run1",
                counter=1,
                now=now,
                admitted=admitted,
                submitted_by=submitted_by,
            )
        )

    @property
    def state(self) -> Run:
        assert self.run is not None
        return self.run

    def apply(self, events: list[Event]) -> list[Event]:
        for event in events:
            self.run = apply_event(self.run, event, version=len(self.events) + 1)
            self.events.append(event)
        self.last = events
        # Every command leaves the run at a fixed point.
        assert decide(self.state, self.now) == []
        check_decided_early(self.state, self.events)
        return events

    def at(self, seconds: float) -> History:
        self.now = T0 + timedelta(seconds=seconds)
        return self

    def status(self, name: str) -> str:
        return self.state.tasks[name].status

    def statuses(self) -> dict[str, str]:
        return {name: t.status for name, t in self.state.tasks.items()}

    def changes(self) -> list[tuple[str, str]]:
        """(task, status) of the last command's task events, in order."""
        return [(e.task, e.status) for e in self.last if isinstance(e, TaskStatusChanged)]

    def start(self, name: str, executor: str = "exec-1") -> list[Event]:
        attempt = self.state.tasks[name].attempt
        return self.apply(
            commands.start_attempt(
                self.state, name, attempt=attempt, executor=executor, now=self.now
            )
        )

    def finish(
        self,
        name: str,
        ok: bool = True,
        *,
        exit_code: int | None = None,
        error: str | None = None,
        outputs: dict[str, str] | None = None,
    ) -> list[Event]:
        attempt = self.state.tasks[name].attempt
        code = exit_code if exit_code is not None else (0 if ok else 1)
        return self.apply(
            commands.finish_attempt(
                self.state,
                name,
                attempt=attempt,
                succeeded=ok,
                exit_code=code,
                error=error,
                now=self.now,
                outputs=outputs,
            )
        )

    def run_task(self, name: str, ok: bool = True) -> list[Event]:
        self.start(name)
        return self.finish(name, ok)

    def lose(self, name: str, *, unconfirmed: bool = False) -> list[Event]:
        attempt = self.state.tasks[name].attempt
        return self.apply(
            commands.lose_attempt(
                self.state,
                name,
                attempt=attempt,
                error="lease expired",
                now=self.now,
                unconfirmed=unconfirmed,
            )
        )

    def approve(
        self,
        name: str,
        approver: str = "alice",
        comment: str | None = None,
        role: str | None = None,
    ) -> list[Event]:
        return self.apply(
            commands.approve(
                self.state,
                name,
                approver=approver,
                approver_role=role,
                comment=comment,
                now=self.now,
            )
        )

    def stop(self) -> list[Event]:
        return self.apply(commands.request_stop(self.state, self.now))

    def cancel(self) -> list[Event]:
        return self.apply(commands.cancel(self.state, self.now))

    def tick(self) -> list[Event]:
        return self.apply(commands.tick(self.state, self.now))


def check_decided_early(run: Run, events: list[Event]) -> None:
    """What must hold after every command, checked naively from the task states and the
    events rather than from the fold's indexes:
    - while the run runs and is not stopping, no task that has not started has a final
      parent with an outcome its dependency refuses (it is skipped at once);
    - a task that failed for good without continue_on_error makes the result `failed`;
    - the result is emitted at most once;
    - each task's `lost` and `unconfirmed` counts are the numbers of its `lost` events
      (with and without the flag), and no task stays
      `lost`."""
    if run.phase == "running" and not run.stop_requested:
        for task in run.tasks.values():
            if task.status != "notstarted":
                continue
            for dependency in task.depends:
                parent = run.tasks[dependency.task]
                assert not (parent.final and OUTCOME[parent.status] not in dependency.on), (
                    f"{task.name} can no longer run ({dependency.task} ended "
                    f"{parent.status}) but was not skipped"
                )
    if run.phase in ("running", "finished") and any(
        t.status == "failed" and not t.spec.continue_on_error for t in run.tasks.values()
    ):
        assert run.result == "failed"
    assert sum(isinstance(e, RunResultChanged) for e in events) <= 1
    lost: dict[str, int] = {}
    unconfirmed: dict[str, int] = {}
    for event in events:
        if isinstance(event, TaskStatusChanged) and event.status == "lost":
            counted = unconfirmed if event.unconfirmed is True else lost
            counted[event.task] = counted.get(event.task, 0) + 1
    assert {n: t.lost for n, t in run.tasks.items() if t.lost} == lost
    assert {n: t.unconfirmed for n, t in run.tasks.items() if t.unconfirmed} == unconfirmed
    assert all(t.status != "lost" for t in run.tasks.values()), "a loss is decided at once"
