"""Executors' side of the command side: claims, leases, heartbeats, reports.

A claim reserves the oldest ready task whose labels the executor has (`FOR UPDATE SKIP
LOCKED` on the claim queue, so two processes never reserve the same entry), writes the
lease, and then starts the attempt through the ordinary command path: the run is loaded,
`start_attempt` checks the task is claimable, and the start is appended with the run's
expected version. Only one start of an attempt can ever be appended, so a task attempt is
handed to exactly one executor, across every service process. A lease whose start never
got appended (the process died in between) simply expires.

No run is loaded while a database transaction holds a pooled connection: loading reads
the stream on a connection of its own, and holding one while waiting for another is how a
busy pool deadlocks.

Leases are fenced: heartbeats, log chunks, artifacts and the completion all name their
lease, and a lease that is no longer `active` is answered with a conflict and changes
nothing. A lease that expires (its executor vanished), stalls (no output for longer than
the task's `progress_timeout`) or is handed back ends its attempt as `lost`; the task's
`on_lost` decides what follows. Heartbeats renew the lease without writing events.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg
import msgspec
import structlog

from eventlog.listener import ChannelListener
from runsvc.domain import commands, templates
from runsvc.domain.config import parse_duration
from runsvc.domain.errors import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    SecretsNeeded,
    TooLarge,
)
from runsvc.domain.events import SYSTEM, Actor, Event, Resolved
from runsvc.domain.model import Run, Task
from runsvc.domain.validation import plain_path
from runsvc.service.executors_seen import ExecutorRegister
from runsvc.service.runs import RunService
from runsvc.service.secrets import SecretStore
from runsvc.service.task_logs import append_chunk
from runsvc.service.writer import Caller
from runsvc.wire.executor import (
    DEFAULT_MAX_OUTPUT_BYTES,
    Claim,
    Completion,
    HeartbeatAnswer,
    InputSource,
    TaskInput,
    WorkItem,
    outputs_size,
)

log = structlog.get_logger("runsvc.leases")
_completions = msgspec.msgpack.Encoder()


@dataclass(frozen=True)
class LeaseRow:
    lease_id: str
    run_id: str
    task: str
    task_id: str
    attempt: int
    executor: str
    state: str
    last_output_at: datetime
    log_bytes: int

    @classmethod
    def of(cls, record: asyncpg.Record) -> LeaseRow:
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


def work_item(
    run: Run, task: Task, *, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
) -> WorkItem:
    spec = task.spec
    # The start of the attempt recorded what its templates rendered to: the executor
    # runs exactly that, whichever process answers the claim.
    resolved = task.resolved or Resolved()
    return WorkItem(
        task_id=task.id,
        run_id=run.id,
        group=run.group,
        task=task.name,
        attempt=task.attempt,
        run=resolved.run if resolved.run is not None else spec.run,
        command=resolved.command if resolved.command is not None else spec.command,
        static_environment=run.static_environment,
        environment=run.environment,
        env={**spec.env, **resolved.env} if resolved.env else spec.env,
        item=task.item,
        artifacts=spec.artifacts,
        inputs=task_inputs(run, task),
        timeout_s=parse_duration(spec.timeout).total_seconds() if spec.timeout else None,
        progress_timeout_s=(
            parse_duration(spec.progress_timeout).total_seconds() if spec.progress_timeout else None
        ),
        max_output_bytes=max_output_bytes,
    )


def task_inputs(run: Run, task: Task) -> list[TaskInput]:
    """What the task's `inputs` name, resolved in the run as it is now: each producing
    task (a foreach task: its items, in item order) with its successful attempt. The
    producers are the task's ancestors (validation holds inputs to that), all final by
    the time it runs, so this is the same whenever it is asked during the attempt."""
    resolved = []
    for spec in task.spec.input_specs():
        producer = run.tasks.get(spec.task)
        if producer is None:  # an earlier version let it through
            producers: list[Task] = []
        elif producer.is_parent:
            producers = sorted(
                (run.tasks[name] for name in producer.children if name in run.tasks),
                key=lambda child: child.index or 0,
            )
        else:
            producers = [producer]
        resolved.append(
            TaskInput(
                task=spec.task,
                paths=[plain_path(path) or path for path in spec.paths],
                sources=[
                    InputSource(
                        task=each.name,
                        task_id=each.id,
                        attempt=each.attempt if each.status == "success" else None,
                    )
                    for each in producers
                ],
            )
        )
    return resolved


def _start(
    run: Run,
    now: datetime,
    *,
    task: str,
    attempt: int,
    executor: str,
    secrets: dict[str, int] | None = None,
) -> list[Event]:
    return commands.start_attempt(
        run, task, attempt=attempt, executor=executor, now=now, secrets=secrets
    )


def with_secrets(
    item: WorkItem, run: Run, task: Task, given: dict[str, tuple[int, str]]
) -> WorkItem:
    """The work item with the real values of the env entries that name secrets (the
    start recorded `***` there), and what the executor must keep out of its log and the
    outputs. Only a claim's answer carries this; nothing stores it."""
    if not given:
        return item
    values = {name: value for name, (_, value) in given.items()}
    rendered = templates.render_secret_env(run, task, values)
    return msgspec.structs.replace(
        item,
        env={**item.env, **rendered},
        secret_env=sorted(rendered),
        masks=sorted(set(values.values())),
    )


async def attempt_of(pool: asyncpg.Pool, task_id: str, attempt: int | None) -> tuple[int, str]:
    """The attempt whose log to read (the latest when not given) and its lease state."""
    row = await pool.fetchrow(
        """
        SELECT attempt, state FROM leases WHERE task_id = $1 AND ($2::int IS NULL OR attempt = $2)
        ORDER BY attempt DESC LIMIT 1
        """,
        task_id,
        attempt,
    )
    if row is None:
        raise NotFound(f"no log for task {task_id}" + (f" attempt {attempt}" if attempt else ""))
    return int(row["attempt"]), str(row["state"])


class LeaseService:
    def __init__(
        self,
        runs: RunService,
        ready: ChannelListener,
        *,
        lease_ttl_s: float = 30.0,
        heartbeat_interval_s: float = 10.0,
        max_log_bytes: int = 64 * 1024 * 1024,
        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
        secrets: SecretStore | None = None,
    ) -> None:
        self.secrets = secrets
        self.max_log_bytes = max_log_bytes
        self.max_output_bytes = max_output_bytes
        self.runs = runs
        self.pool = runs.pool
        self.ready = ready
        self.lease_ttl = timedelta(seconds=lease_ttl_s)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.closing = False
        self.seen = ExecutorRegister(self.pool)

    def shut_down(self) -> None:
        """Answer waiting claims now (204), so a graceful shutdown need not wait out
        their long polls; executors claim again from another instance."""
        self.closing = True
        self.ready.wake()

    # -- claims

    async def claim(
        self,
        executor: str,
        labels: dict[str, str],
        wait_s: float,
        *,
        answerable: Callable[[], bool] = lambda: True,
        actor: str | None = None,
    ) -> Claim | None:
        """One ready task for this executor, waiting up to `wait_s` for one to become
        ready (woken by the claim queue's notifications, not by polling in a loop).

        `answerable` says whether the executor still waits for the answer: one that hung up
        (it shut down, or gave up the request) is granted nothing, and a task claimed in
        the moment it hung up is handed straight back instead of waiting, unrun, for its
        lease to expire.

        `actor`: who the events are recorded as caused by (the executor's token name);
        `executor`, the name it announced, is kept in the task as a host hint."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        await self.seen.saw(executor, self.runs.clock(), labels)
        while True:
            if not answerable():
                return None
            claim = await self._try_claim(executor, labels, actor or executor)
            if claim is not None:
                if not answerable():
                    await self.lose(
                        claim.lease,
                        "the executor hung up before its claim was answered",
                        state="released",
                        unconfirmed=True,
                    )
                    return None
                return claim
            remaining = deadline - loop.time()
            if remaining <= 0 or self.closing:
                return None
            # A retry's start time passing sends no notification: wake for it too.
            await self.ready.wait(min(remaining, await self._until_next_start(labels)))

    async def _until_next_start(self, labels: dict[str, str]) -> float:
        seconds = await self.pool.fetchval(
            """
            SELECT extract(epoch FROM min(greatest(r.not_before, v.reserved_until)) - now())
            FROM ready_tasks r
            LEFT JOIN claim_reservations v ON v.task_id = r.task_id AND v.attempt = r.attempt
            WHERE greatest(r.not_before, v.reserved_until) > now()
              AND (v.reserved_until IS NULL OR isfinite(v.reserved_until))
              AND r.runs_on <@ $1::jsonb
            """,
            json.dumps(labels),
        )
        return max(0.05, float(seconds)) if seconds is not None else 60.0

    async def _reserve(self, labels: dict[str, str]) -> asyncpg.Record | None:
        """The first claimable queue entry for these labels, reserved for 30 s; `won` is
        false when a concurrent claim reserved it first (then try again)."""
        return await self.pool.fetchrow(
            """
            WITH candidate AS (
                SELECT r.task_id, r.run_id, r.task, r.attempt FROM ready_tasks r
                WHERE (r.not_before IS NULL OR r.not_before <= now())
                  AND r.runs_on <@ $1::jsonb
                  AND NOT EXISTS (
                      SELECT 1 FROM claim_reservations v
                      WHERE v.task_id = r.task_id AND v.attempt = r.attempt
                        AND v.reserved_until > now()
                  )
                ORDER BY r.position LIMIT 1
                FOR UPDATE OF r SKIP LOCKED
            ), reserved AS (
                INSERT INTO claim_reservations AS v (task_id, attempt, reserved_until)
                SELECT task_id, attempt, now() + interval '30 seconds' FROM candidate
                ON CONFLICT (task_id, attempt) DO UPDATE
                    SET reserved_until = excluded.reserved_until
                    WHERE v.reserved_until <= now()
                RETURNING task_id
            )
            SELECT c.task_id, c.run_id, c.task, c.attempt, r.task_id IS NOT NULL AS won
            FROM candidate c LEFT JOIN reserved r ON r.task_id = c.task_id
            """,
            json.dumps(labels),
        )

    async def _settle(self, task_id: str, attempt: int) -> None:
        """The attempt started (or its entry is stale): never hand it out again. The
        projection drops the queue entry once it folds the start."""
        await self.pool.execute(
            "UPDATE claim_reservations SET reserved_until = 'infinity' "
            "WHERE task_id = $1 AND attempt = $2",
            task_id,
            attempt,
        )

    async def forget_settled(self) -> None:
        """Drop reservations whose queue entry is gone (the timer loop calls this)."""
        await self.pool.execute(
            """
            DELETE FROM claim_reservations v WHERE NOT EXISTS (
                SELECT 1 FROM ready_tasks r WHERE r.task_id = v.task_id AND r.attempt = v.attempt
            )
            """
        )

    async def _take_lease(
        self, entry: asyncpg.Record, lease: str, executor: str, now: datetime, expires: datetime
    ) -> bool:
        """Record `lease` for the reserved attempt. False when the attempt already has a
        lease that is not an orphan (it started: the caller passes it over).

        A claim that died between recording its lease and appending the attempt's start
        (a crash, a lost connection) leaves a lease for an attempt that never started. The
        queue entry comes back once its reservation expires; its next claim finds that
        lease, sees in the run that the attempt is still only scheduled, and replaces it."""
        for _ in range(2):
            taken = await self.pool.fetchval(
                """
                INSERT INTO leases (lease_id, run_id, task, task_id, attempt, executor,
                                    expires_at, last_output_at)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                ON CONFLICT (task_id, attempt) DO NOTHING
                RETURNING lease_id
                """,
                lease,
                entry["run_id"],
                entry["task"],
                entry["task_id"],
                entry["attempt"],
                executor,
                expires,
                now,
            )
            if taken is not None:
                return True
            try:
                task = (await self.runs.load(entry["run_id"])).tasks[entry["task"]]
            except (NotFound, KeyError):
                return False
            if task.status != "scheduled" or task.attempt != entry["attempt"]:
                return False
            # Whatever its state (the expiry job may have marked it lost meanwhile): a
            # lease of an attempt that never started is an orphan.
            orphan = await self.pool.fetchval(
                "DELETE FROM leases WHERE task_id = $1 AND attempt = $2 RETURNING lease_id",
                entry["task_id"],
                entry["attempt"],
            )
            log.warning(
                "replaced the lease of a claim that never started its attempt",
                run_id=entry["run_id"],
                task=entry["task"],
                attempt=entry["attempt"],
                replaced=orphan is not None,
            )
        return False

    async def _try_claim(self, executor: str, labels: dict[str, str], actor: str) -> Claim | None:
        for _ in range(50):
            entry = await self._reserve(labels)
            if entry is None:
                return None
            if not entry["won"]:
                continue
            lease = secrets.token_urlsafe(18)
            now = self.runs.clock()
            expires = now + self.lease_ttl
            if not await self._take_lease(entry, lease, executor, now, expires):
                await self._settle(entry["task_id"], entry["attempt"])
                continue
            try:
                run, given = await self._start_attempt(entry, executor, actor)
            except (Conflict, NotFound):
                # Stale: the run moved on since the queue was written. Drop both.
                await self.pool.execute("DELETE FROM leases WHERE lease_id = $1", lease)
                await self._settle(entry["task_id"], entry["attempt"])
                continue
            await self._settle(entry["task_id"], entry["attempt"])
            task = run.tasks[entry["task"]]
            if task.status != "running" or task.attempt != entry["attempt"]:
                # The start failed the task instead (a template could not be rendered):
                # there is nothing to run, so no lease either.
                await self.pool.execute("DELETE FROM leases WHERE lease_id = $1", lease)
                continue
            item = work_item(run, task, max_output_bytes=self.max_output_bytes)
            return Claim(
                lease=lease,
                lease_expires_at=expires,
                heartbeat_interval_s=self.heartbeat_interval_s,
                task=with_secrets(item, run, task, given),
            )
        return None

    async def _start_attempt(
        self, entry: asyncpg.Record, executor: str, actor: str
    ) -> tuple[Run, dict[str, tuple[int, str]]]:
        """Append the attempt's start; a task whose env names secrets starts with the
        versions of those its run's group has, and the values (for the claim's answer
        only) are those versions' (looked up once, before the start)."""
        start = functools.partial(
            _start, task=entry["task"], attempt=entry["attempt"], executor=executor
        )
        caller = Caller(Actor(kind="executor", id=actor))
        try:
            return await self.runs.execute(entry["run_id"], start, caller), {}
        except SecretsNeeded as needed:
            given = await self.secrets.lookup(needed.group, needed.names) if self.secrets else {}
        versions = {name: version for name, (version, _) in given.items()}
        run = await self.runs.execute(
            entry["run_id"], functools.partial(start, secrets=versions), caller
        )
        return run, given

    async def running_by_executor(self) -> dict[str, int]:
        """Attempts each executor holds an active lease for."""
        rows = await self.pool.fetch(
            "SELECT executor, count(*) AS running FROM leases WHERE state = 'active' "
            "GROUP BY executor"
        )
        return {row["executor"]: row["running"] for row in rows}

    # -- reports

    async def _current(self, lease: str) -> LeaseRow:
        record = await self.pool.fetchrow("SELECT * FROM leases WHERE lease_id = $1", lease)
        if record is None:
            raise Conflict("no such lease (it may have expired and been replaced)")
        row = LeaseRow.of(record)
        if row.state != "active":
            raise Conflict(f"lease is {row.state}; this attempt is no longer current")
        return row

    async def input_source(self, lease: str, task_id: str) -> tuple[InputSource, list[str]]:
        """The source `task_id` of one of the inputs of the attempt `lease` holds, and the
        paths that input asks for (empty: all). Conflict when the lease is not current;
        Forbidden when the task gives this attempt no input: an executor reads the
        artifacts its attempt's inputs name, and nothing else."""
        row = await self._current(lease)
        run = await self.runs.load(row.run_id)
        task = run.tasks.get(row.task)
        if task is None or task.attempt != row.attempt or task.status != "running":
            raise Conflict("this attempt is no longer current")
        for each in task_inputs(run, task):
            for source in each.sources:
                if source.task_id == task_id:
                    return source, each.paths
        raise Forbidden(f"task {task_id!r} gives no input to this attempt")

    async def heartbeat(self, lease: str) -> HeartbeatAnswer | None:
        """Renew the lease. Returns a stop instruction, or None to keep going."""
        now = self.runs.clock()
        record = await self.pool.fetchrow(
            "UPDATE leases SET expires_at = $2, confirmed = true "
            "WHERE lease_id = $1 AND state = 'active' RETURNING *",
            lease,
            now + self.lease_ttl,
        )
        if record is None:
            await self._current(lease)  # raises the conflict that says why
            raise Conflict("this attempt is no longer current")
        row = LeaseRow.of(record)
        # A busy executor claims nothing until an attempt ends: its heartbeats say it is
        # still about.
        await self.seen.saw(row.executor, now)
        run = await self.runs.load(row.run_id)
        task = run.tasks[row.task]
        if task.status != "running" or task.attempt != row.attempt:
            # The server ended this attempt (e.g. it timed out): the lease is over.
            await self._close(lease, "lost")
            raise Conflict("this attempt has already ended")
        stalled = self._stalled(task, row, now)
        if stalled is not None:
            await self.lose(lease, stalled)
            raise Conflict(f"this attempt was ended: {stalled}")
        if run.stop_requested:
            return HeartbeatAnswer(stop=True, reason="the run was stopped")
        return None

    def _stalled(self, task: Task, row: LeaseRow, now: datetime) -> str | None:
        if not task.spec.progress_timeout:
            return None
        limit = parse_duration(task.spec.progress_timeout)
        if now - row.last_output_at > limit:
            return f"no output for {task.spec.progress_timeout}"
        return None

    async def append_log(self, lease: str, offset: int, data: bytes) -> None:
        """Store a chunk of output at `offset`; a chunk sent again is stored once. Output
        past the attempt's log limit is not kept: what fits is stored, and the sender is
        told (413) so it stops sending."""
        cut = False
        async with self.pool.acquire() as connection, connection.transaction():
            record = await connection.fetchrow(
                "SELECT * FROM leases WHERE lease_id = $1 FOR UPDATE", lease
            )
            if record is None or record["state"] != "active":
                raise Conflict("this attempt is no longer current")
            row = LeaseRow.of(record)
            if offset > row.log_bytes:
                raise BadRequest(
                    f"log chunk at offset {offset} leaves a gap (the log has {row.log_bytes} bytes)"
                )
            fresh = data[row.log_bytes - offset :]
            room = self.max_log_bytes - row.log_bytes
            if len(fresh) > room:
                fresh, cut = fresh[: max(room, 0)], True
            if not fresh:
                if cut:
                    raise self._log_full()
                return
            await append_chunk(connection, row.task_id, row.attempt, row.log_bytes, fresh)
            await connection.execute(
                "UPDATE leases SET log_bytes = log_bytes + $2, last_output_at = $3, "
                "confirmed = true WHERE lease_id = $1",
                lease,
                len(fresh),
                self.runs.clock(),
            )
        if cut:  # after the commit: what fitted is kept
            raise self._log_full()

    def _log_full(self) -> TooLarge:
        return TooLarge(
            f"the attempt's log reached its limit of {self.max_log_bytes} bytes; "
            "output past it is not kept"
        )

    async def lease_for_upload(self, lease: str) -> LeaseRow:
        row = await self._current(lease)
        await self.pool.execute("UPDATE leases SET confirmed = true WHERE lease_id = $1", lease)
        return row

    async def complete(
        self, lease: str, completion: Completion, *, actor: str | None = None
    ) -> LeaseRow:
        """Record the attempt's outcome, then end the lease. The same completion sent
        again (its answer was lost) is accepted again; a different one is refused, and so
        are outputs over the limit (413: the executor fails the attempt instead)."""
        record = await self.pool.fetchrow("SELECT * FROM leases WHERE lease_id = $1", lease)
        if record is not None and record["state"] == "completed":
            accepted = record["completion"]
            # Compared decoded: a completion stored before a field existed decodes with
            # its default, which the same completion sent again has too.
            earlier = (
                msgspec.msgpack.decode(bytes(accepted), type=Completion)
                if accepted is not None
                else None
            )
            if earlier is not None and earlier != completion:
                raise Conflict(f"this attempt already completed as {earlier.status}")
            return LeaseRow.of(record)
        size = outputs_size(completion.outputs)
        if size > self.max_output_bytes:
            raise TooLarge(
                f"the attempt's outputs hold {size} bytes of names and values; "
                f"RUNSVC_MAX_OUTPUT_BYTES allows {self.max_output_bytes}"
            )
        row = await self._current(lease)
        await self.runs.execute(
            row.run_id,
            lambda run, now: commands.finish_attempt(
                run,
                row.task,
                attempt=row.attempt,
                succeeded=completion.status == "success",
                exit_code=completion.exit_code,
                error=completion.error,
                now=now,
                outputs=completion.outputs,
            ),
            Caller(Actor(kind="executor", id=actor or row.executor)),
        )
        await self._close(lease, "completed", completion=_completions.encode(completion))
        return row

    async def lose(
        self, lease: str, reason: str, *, state: str = "lost", unconfirmed: bool = False
    ) -> LeaseRow | None:
        """End an active lease's attempt as lost (expired, stalled, handed back).
        `unconfirmed`: its executor never confirmed it had the attempt, so the task is put
        back without using a budget."""
        try:
            row = await self._current(lease)
        except Conflict:
            return None
        # A conflict means the attempt already ended another way; the lease just closes.
        with contextlib.suppress(Conflict, NotFound):
            await self.runs.execute(
                row.run_id,
                lambda run, now: commands.lose_attempt(
                    run,
                    row.task,
                    attempt=row.attempt,
                    error=reason,
                    now=now,
                    unconfirmed=unconfirmed,
                ),
                Caller(SYSTEM),
            )
        await self._close(lease, state)
        log.info("attempt lost", lease=lease, run_id=row.run_id, task=row.task, reason=reason)
        return row

    async def _close(self, lease: str, state: str, *, completion: bytes | None = None) -> None:
        await self.pool.execute(
            "UPDATE leases SET state = $2, ended_at = now(), completion = $3 "
            "WHERE lease_id = $1 AND state = 'active'",
            lease,
            state,
            completion,
        )

    async def expire(self) -> int:
        """End every lease past its expiry (its executor is gone)."""
        rows = await self.pool.fetch(
            "SELECT lease_id, confirmed FROM leases WHERE state = 'active' "
            "AND expires_at < now() ORDER BY expires_at LIMIT 100"
        )
        for row in rows:
            if row["confirmed"]:
                await self.lose(row["lease_id"], "executor lost: its lease expired")
            else:
                await self.lose(
                    row["lease_id"],
                    "its lease expired before the executor confirmed the attempt",
                    unconfirmed=True,
                )
        return len(rows)
