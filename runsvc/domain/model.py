"""The in-memory run: tasks, their states, and the indexes that make deciding cheap.

`Run` is mutated only by the fold (`runsvc.domain.fold.apply`). Besides what the API
shows it keeps derived indexes, each a pure function of the task states, maintained
incrementally so that a decision costs what changed rather than the size of the run:

- `pending[t]`: how many parents of t are not final yet;
- buckets of tasks that need the scheduler, sorted by visiting order: `skip` (a parent is
  final with an outcome its dependency does not accept, whether or not the other parents
  are final yet, since nothing can make the task run any more; or all parents are final
  and `when` does not hold), `gate` (needs an approval first),
  `expand` (a foreach parent ready to fan out), and per slot group the tasks ready to be
  scheduled once `max_parallel` allows (`slots`);
- counts of active (scheduled or running) tasks, per run and per foreach parent;
- foreach parents whose children are all final (`closing`);
- running attempts' deadlines, sorted (stale entries are dropped when reached);
- how many tasks have not started yet (a stop cancels them);

The scheduler must not change a run it is given, yet it needs to see the effect of its own
decisions to reach a fixed point in one call. So the fold can keep an undo journal:
`Run.journal()` records every change made through the `_set` and bucket helpers, and
rolling it back restores the run exactly. That keeps one implementation of "what an event
does" for the projection, the command side and the scheduler.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from runsvc.domain.config import Dependency, RunConfig, TaskConfig, parse_duration
from runsvc.domain.events import Phase, Resolved, Result, TaskStatus

FINAL = frozenset({"success", "failed", "skipped", "stopped", "cancelled"})
ACTIVE = frozenset({"scheduled", "running"})
OUTCOME = {
    "success": "success",
    "failed": "failure",
    "skipped": "skipped",
    "stopped": "failure",
    "cancelled": "failure",
}

OrderKey = tuple[int, int]
TOP = ""  # the slot group of top-level tasks


def task_id(run_id: str, task_name: str) -> str:
    """An opaque, deterministic task id: object-storage keys use it, so it must not
    contain the run id or the group, yet the scheduler must derive it without I/O."""
    return hashlib.blake2b(f"{run_id}\x00{task_name}".encode(), digest_size=16).hexdigest()


DEFAULT_MAX_FOREACH_ITEMS = 1000
"""The most items a `foreach` expression may give, unless the service says otherwise."""


class Task:
    """One task (or foreach child) of a run."""

    __slots__ = (
        "accepts",
        "approval_comment",
        "approval_message",
        "approved_at",
        "approved_by",
        "attempt",
        "children",
        "depends",
        "error",
        "executor",
        "exit_code",
        "expanded",
        "finished_at",
        "id",
        "index",
        "item",
        "item_json",
        "lost",
        "name",
        "next_attempt_at",
        "order",
        "outputs",
        "parent",
        "resolved",
        "spec",
        "started_at",
        "status",
        "unconfirmed",
    )

    def __init__(
        self,
        *,
        name: str,
        id: str,
        spec: TaskConfig,
        depends: list[Dependency],
        order: OrderKey,
        parent: str | None = None,
        item: str | None = None,
        index: int | None = None,
    ) -> None:
        self.name = name
        self.id = id
        self.spec = spec
        self.depends = depends
        self.order = order
        self.parent = parent
        self.item = item
        self.index = index
        # `item` is the JSON of an item that was not a string (see ForeachChild.json).
        self.item_json = False
        self.status: TaskStatus = "notstarted"
        self.attempt = 0
        # Attempts that ended `lost`, counted by the fold from the events (so a replay
        # agrees): `attempt - lost` is how many used the failure budget (`retry`), `lost`
        # how many used the lost budget (`max_lost`).
        self.lost = 0
        # Lost attempts their executor never confirmed (see `MAX_UNCONFIRMED`): they use
        # no budget, so `attempt - lost - unconfirmed` attempts used the failure budget.
        self.unconfirmed = 0
        self.executor: str | None = None
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.exit_code: int | None = None
        self.error: str | None = None
        self.next_attempt_at: datetime | None = None
        # What the attempt whose end the task shows (as `exit_code`) wrote to its output
        # file; replaced, never changed in place, so views may hold on to it.
        self.outputs: dict[str, str] = {}
        # What the templates of the latest attempt rendered to (its start event says);
        # None when the task has none, or before its first start.
        self.resolved: Resolved | None = None
        self.approved_by: str | None = None
        self.approved_at: datetime | None = None
        self.approval_comment: str | None = None
        # What approvers are asked (the approval's message, rendered when the wait began).
        self.approval_message: str | None = None
        self.children: list[str] = []
        self.expanded = False
        # The parent outcomes each parent must end with for this task to run (a parent
        # named twice must satisfy both), so that a parent becoming final can tell at once
        # whether this task can still run, without looking at its other parents.
        self.accepts: dict[str, frozenset[str]] = {}
        for dependency in depends:
            allowed = frozenset(dependency.on)
            known = self.accepts.get(dependency.task)
            self.accepts[dependency.task] = allowed if known is None else known & allowed

    @property
    def is_parent(self) -> bool:
        """A foreach task: it runs nothing itself; its children do."""
        return self.parent is None and self.spec.foreach is not None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def slot_group(self) -> str:
        return self.parent if self.parent is not None else TOP

    def timeout(self) -> timedelta | None:
        return parse_duration(self.spec.timeout) if self.spec.timeout else None


class Run:
    """A run's current state; see the module docstring for the derived indexes."""

    def __init__(self) -> None:
        self.id = ""
        self.group = ""
        self.name = ""
        self.counter = 0
        self.phase: Phase = "queued"
        self.result: Result = "unknown"
        self.stop_requested = False
        self.stop_reason: str | None = None
        self.created_at: datetime | None = None
        self.started_at: datetime | None = None
        self.finished_at: datetime | None = None
        self.annotations: dict[str, str] = {}
        self.setup_errors: list[str] = []
        self.static_environment: dict[str, str] = {}
        self.environment: dict[str, str] = {}
        self.idempotency_key: str | None = None
        self.concurrency_key: str | None = None
        self.recreated_from: str | None = None
        self.submitted_by: str | None = None
        self.max_foreach_items = DEFAULT_MAX_FOREACH_ITEMS
        self.config = RunConfig(tasks=[])
        self.version = 0
        self.position = 0
        # Seconds during which the run waited for an approval; excluded from its timeout.
        self.output_deleted_at: datetime | None = None
        self.paused_s = 0.0
        self.paused_since: datetime | None = None
        self.tasks: dict[str, Task] = {}
        self.dependents: dict[str, list[str]] = {}
        self._journal: list[Any] | None = None
        self._keep_inner = False
        self.reset_indexes()

    # -- derived indexes -----------------------------------------------------------------

    def reset_indexes(self) -> None:
        self.pending: dict[str, int] = {}
        self.by_order: dict[OrderKey, str] = {}
        self.skip: list[OrderKey] = []
        self.gate: list[OrderKey] = []
        self.expand: list[OrderKey] = []
        self.slots: dict[str, list[OrderKey]] = {}
        self.closing: list[OrderKey] = []
        self.active = 0
        self.active_in: dict[str, int] = {}
        self.nonfinal = 0
        self.open_children: dict[str, int] = {}
        # Tasks waiting for an approval not given yet; the run's timeout is paused while
        # there is one and nothing is scheduled or running.
        self.waiting_approval = 0
        self.unstarted = 0
        self.blocking_failures = 0
        self.deadlines: list[tuple[datetime, OrderKey, int]] = []

    @property
    def merged_environment(self) -> dict[str, str]:
        return {**self.static_environment, **self.environment}

    def ordered(self, keys: list[OrderKey]) -> list[Task]:
        return [self.tasks[self.by_order[key]] for key in keys]

    # -- journal -------------------------------------------------------------------------
    #
    # The journal is one flat list of (undo, a, b, c) quadruples, with `undo` a module-level
    # function: recording a change allocates nothing the garbage collector tracks. A stop of
    # a 10,000-task run records some 70,000 changes; as closures they were 300,000 new
    # tracked objects, enough to set off several full collections of a large heap (each
    # stalls every request for as long as it takes to walk all of memory).

    @contextmanager
    def journal(self, *, keep_inner: bool = False) -> Iterator[None]:
        """Changes made inside are undone on exit: the run is left exactly as it was.
        Journals nest: an inner one undoes only what was changed inside it.

        `keep_inner` (outermost only): a journal opened inside that ends without an
        exception keeps its changes, for this one to undo. A caller that folds what a
        command decided (every command applies its events under its own journal) so saves
        applying them twice."""
        outermost = self._journal is None
        if outermost:
            self._journal = []
            self._keep_inner = keep_inner
        assert self._journal is not None
        mark = len(self._journal)
        try:
            yield
        except BaseException:
            self._undo_to(mark)
            raise
        else:
            if outermost or not self._keep_inner:
                self._undo_to(mark)
        finally:
            if outermost:
                self._journal = None
                self._keep_inner = False

    def _undo_to(self, mark: int) -> None:
        undo = self._journal
        assert undo is not None
        for at in range(len(undo) - 4, mark - 1, -4):
            undo[at](undo[at + 1], undo[at + 2], undo[at + 3])
        del undo[mark:]

    def _record(self, undo: Callable[[Any, Any, Any], object], a: Any, b: Any, c: Any) -> None:
        journal = self._journal
        if journal is not None:
            journal += (undo, a, b, c)

    def set(self, target: Any, attribute: str, value: Any) -> None:
        """Set an attribute of the run or a task, journaled."""
        journal = self._journal
        if journal is not None:
            journal += (setattr, target, attribute, getattr(target, attribute))
        setattr(target, attribute, value)

    def set_item(self, mapping: dict[Any, Any], key: Any, value: Any) -> None:
        journal = self._journal
        if journal is not None:
            if key in mapping:
                journal += (dict.__setitem__, mapping, key, mapping[key])
            else:
                journal += (_pop_key, mapping, key, None)
        mapping[key] = value

    def add(self, attribute: str, delta: int) -> None:
        self.set(self, attribute, getattr(self, attribute) + delta)

    def add_in(self, mapping: dict[str, int], key: str, delta: int) -> None:
        self.set_item(mapping, key, mapping.get(key, 0) + delta)

    def insort(self, keys: list[OrderKey], key: OrderKey) -> None:
        index = bisect.bisect_left(keys, key)
        if index < len(keys) and keys[index] == key:
            return
        keys.insert(index, key)
        self._record(_remove_sorted, keys, key, None)

    def discard(self, keys: list[OrderKey], key: OrderKey) -> None:
        index = bisect.bisect_left(keys, key)
        if index < len(keys) and keys[index] == key:
            del keys[index]
            self._record(_insort, keys, key, None)

    def slot_queue(self, group: str) -> list[OrderKey]:
        queue = self.slots.get(group)
        if queue is None:
            queue = []
            self.set_item(self.slots, group, queue)
        return queue

    # A sorted list rather than a heap: both are cheap to add to and take the smallest
    # from, but only a sorted list is cheap to undo (the journal removes what it added).
    def push_deadline(self, deadline: datetime, task: Task) -> None:
        entry = (deadline, task.order, task.attempt)
        bisect.insort(self.deadlines, entry)
        self._record(_remove_sorted, self.deadlines, entry, None)

    def pop_deadline(self) -> tuple[datetime, OrderKey, int]:
        entry = self.deadlines.pop(0)
        self._record(list.insert, self.deadlines, 0, entry)
        return entry


# The journal's undo steps: called as step(a, b, c).


def _remove_sorted(keys: list[Any], entry: Any, _: None) -> None:
    del keys[bisect.bisect_left(keys, entry)]


def _insort(keys: list[Any], entry: Any, _: None) -> None:
    bisect.insort(keys, entry)


def _pop_key(mapping: dict[Any, Any], key: Any, _: None) -> None:
    mapping.pop(key, None)


def topological_order(config: RunConfig) -> list[TaskConfig]:
    """Tasks in visiting order: topological, ties broken by name. Validated configs have
    no cycles; any task left over by a cycle comes last, by name."""
    tasks = {t.name: t for t in config.tasks}
    waiting = {t.name: {d.task for d in t.dependencies() if d.task in tasks} for t in config.tasks}
    dependents: dict[str, list[str]] = {name: [] for name in tasks}
    for name, parents in waiting.items():
        for parent in parents:
            dependents[parent].append(name)
    ready = sorted(name for name, parents in waiting.items() if not parents)
    order: list[str] = []
    while ready:
        name = ready.pop(0)
        order.append(name)
        for child in dependents[name]:
            waiting[child].discard(name)
            if not waiting[child]:
                bisect.insort(ready, child)
    order += sorted(set(tasks) - set(order))
    return [tasks[name] for name in order]


class Ancestry:
    """Which tasks each task depends on, directly or not, as one bit per task in an
    integer: a chain of 10,000 tasks takes some 12 MB this way, where sets of names
    would take gigabytes. Unknown dependencies are left out (validation reports them);
    in a cycle, what is found is incomplete but finite (the cycle is reported too)."""

    def __init__(self, config: RunConfig) -> None:
        ordered = topological_order(config)
        self._bit = {spec.name: 1 << index for index, spec in enumerate(ordered)}
        self._above: dict[str, int] = {}
        for spec in ordered:
            found = 0
            for dependency in spec.dependencies():
                parent = dependency.task
                if parent in self._bit and parent != spec.name:
                    found |= self._bit[parent] | self._above.get(parent, 0)
            self._above[spec.name] = found

    def has(self, task: str, ancestor: str) -> bool:
        bit = self._bit.get(ancestor)
        return bit is not None and bool(self._above.get(task, 0) & bit)


def approximate_size(run: Run) -> int:
    """Roughly the bytes a folded run takes in memory (measured: about 0.8 KiB per task
    for a run of 10,000 tasks), for caches that are bounded by memory. Outputs count
    apart: a task's may be as large as the server's output limit."""
    outputs = sum(
        len(name) + len(value)
        for task in run.tasks.values()
        if task.outputs
        for name, value in task.outputs.items()
    )
    return 4096 + 1024 * len(run.tasks) + outputs
