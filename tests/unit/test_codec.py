"""The stored state of a run (`runsvc.domain.codec`): what `verify` compares the fold with."""

from __future__ import annotations

from typing import Any

import msgspec

from runsvc.domain.codec import RunState, TaskState, encode_run, same_state
from tests.unit.histories import History, config, task


def older_encoding(state: bytes) -> bytes:
    """`state` as the version before `unconfirmed` and `submitted_by` were stored wrote
    it: each task's array ends at `lost`, the run's at `output_deleted_at`."""
    run: list[Any] = msgspec.msgpack.decode(state)
    tasks_at = RunState.__struct_fields__.index("tasks")
    task_end = TaskState.__struct_fields__.index("lost") + 1
    run[tasks_at] = [saved[:task_end] for saved in run[tasks_at]]
    return msgspec.msgpack.encode(run[: RunState.__struct_fields__.index("output_deleted_at") + 1])


def test_a_state_stored_by_an_earlier_version_is_the_same_state() -> None:
    """An earlier version's encoding of a state, without the fields added since, holds
    the same state as the fold (its bytes differ); a state that differs, or bytes that
    are no state, do not."""
    history = History(config(task("a"), task("b", "a")))
    history.run_task("a")
    run = history.state
    stored = older_encoding(encode_run(run))
    assert stored != encode_run(run)
    assert same_state(stored, run)
    assert same_state(encode_run(run), run)
    history.run_task("b", ok=False)
    assert not same_state(stored, history.state)
    assert not same_state(b"\xc1not a state", run)
    assert not same_state(msgspec.msgpack.encode([1, 2]), run)
