"""A run's full state as bytes (MessagePack), for the run_state table that the command
side uses as a cache. Only states are stored; the derived indexes are rebuilt on decode."""

from __future__ import annotations

from datetime import datetime

import msgspec

from runsvc.domain.config import Dependency, RunConfig
from runsvc.domain.events import Phase, Resolved, Result, TaskStatus
from runsvc.domain.fold import child_spec, rebuild_indexes
from runsvc.domain.model import DEFAULT_MAX_FOREACH_ITEMS, Run, Task, task_id, topological_order


class TaskState(msgspec.Struct, array_like=True):
    name: str
    id: str
    status: TaskStatus
    attempt: int
    executor: str | None
    started_at: datetime | None
    finished_at: datetime | None
    exit_code: int | None
    error: str | None
    next_attempt_at: datetime | None
    approved_by: str | None
    approval_comment: str | None
    parent: str | None
    item: str | None
    index: int | None
    expanded: bool
    children: list[str]
    # Added after the first stored states: a default, so that those still decode (as 0).
    lost: int = 0
    unconfirmed: int = 0
    approved_at: datetime | None = None
    outputs: dict[str, str] = {}
    resolved: Resolved | None = None
    item_json: bool = False
    approval_message: str | None = None


class RunState(msgspec.Struct, array_like=True):
    id: str
    group: str
    name: str
    counter: int
    phase: Phase
    result: Result
    stop_requested: bool
    stop_reason: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    annotations: dict[str, str]
    setup_errors: list[str]
    static_environment: dict[str, str]
    environment: dict[str, str]
    idempotency_key: str | None
    concurrency_key: str | None
    recreated_from: str | None
    config: RunConfig
    version: int
    position: int
    paused_s: float
    paused_since: datetime | None
    tasks: list[TaskState]
    output_deleted_at: datetime | None = None
    submitted_by: str | None = None
    max_foreach_items: int = DEFAULT_MAX_FOREACH_ITEMS


_TASK_FIELDS = TaskState.__struct_fields__
_RUN_FIELDS = tuple(f for f in RunState.__struct_fields__ if f != "tasks")
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RunState)


def encode_run(run: Run) -> bytes:
    tasks = [
        TaskState(*(getattr(task, field) for field in _TASK_FIELDS))
        for task in sorted(run.tasks.values(), key=lambda t: t.order)
    ]
    values = {field: getattr(run, field) for field in _RUN_FIELDS}
    state = RunState(**{**values, "tasks": tasks})
    return _encoder.encode(state)


def same_state(stored: bytes, run: Run) -> bool:
    """Whether `stored`, written by this version or an earlier one, holds `run`'s state.

    Compared as this version reads it: an earlier version's encoding lacks the fields
    added since, which decode to their defaults, so its bytes differ from this version's
    encoding of the very same state. A state that does not decode holds no run's."""
    try:
        state = _decoder.decode(stored)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return False
    return _encoder.encode(state) == encode_run(run)


def decode_run(data: bytes) -> Run:
    state = _decoder.decode(data)
    run = Run()
    for field in _RUN_FIELDS:
        setattr(run, field, getattr(state, field))
    specs = {spec.name: (index, spec) for index, spec in enumerate(topological_order(state.config))}
    for saved in state.tasks:
        if saved.parent is None:
            index, spec = specs[saved.name]
            task = Task(
                name=saved.name,
                id=saved.id,
                spec=spec,
                depends=spec.dependencies(),
                order=(index, -1),
            )
        else:
            parent = run.tasks[saved.parent]
            assert saved.index is not None
            sequence = parent.spec.foreach_strategy == "sequence" and saved.index > 0
            task = Task(
                name=saved.name,
                id=saved.id or task_id(run.id, saved.name),
                spec=child_spec(parent.spec),
                depends=[Dependency(task=parent.children[saved.index - 1])] if sequence else [],
                order=(parent.order[0], saved.index),
                parent=saved.parent,
                item=saved.item,
                index=saved.index,
            )
        for field in _TASK_FIELDS:
            if field not in ("name", "id", "parent", "item", "index"):
                setattr(task, field, getattr(saved, field))
        run.tasks[task.name] = task
        run.dependents[task.name] = []
    for task in run.tasks.values():
        for dependency in task.depends:
            run.dependents[dependency.task].append(task.name)
    rebuild_indexes(run)
    return run
