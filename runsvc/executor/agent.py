"""The executor agent: claim a ready task, run it, stream its log, upload its artifacts and
report how it ended; up to `concurrency` attempts at once.

What happens when things go wrong:

- The server is unreachable or answers 5xx: claiming backs off (up to 30 s) and tries
  again. A running task keeps running; heartbeats and log chunks are retried each round,
  and the final report (artifacts, the rest of the log, the completion) is retried until
  `report_deadline_s`. Whether the attempt still counts is the server's decision when it
  is back: it answers 409 if the lease expired meanwhile.
- The lease is no longer current (409 on any call, or 404): the process group is killed
  and the attempt abandoned without another word to the server, which has already moved
  on (another attempt may be running the task).
- A heartbeat answers "stop": the process group is ended (SIGTERM, SIGKILL after a grace
  period) and the attempt reported as failed with the server's reason.
- Claiming is refused for good (401, 403, 400, 404: a bad token, role or label): the agent
  shuts down as below and `run` raises `AgentError`.
- Shutdown (`shutdown()`, on SIGTERM/SIGINT): no more claims; running attempts get
  `shutdown_grace_s` to finish and report; the rest are ended and their leases released
  (handed back, so their retry policy decides at once instead of after a lease expiry).
  A second `shutdown()` skips what is left of the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import os
import re
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import structlog

from runsvc.client import (
    ApiError,
    BadRequestError,
    ConnectionFailed,
    ExecutorClient,
    InvalidResponse,
    LeaseLost,
    RetryPolicy,
    ServerError,
    TooLargeError,
)
from runsvc.executor.inputs import InputError, fetch_inputs
from runsvc.executor.masking import Masker
from runsvc.executor.outputs import OUTPUT_VARIABLE, OutputFileError, parse_outputs
from runsvc.executor.process import (
    ProcessResult,
    ProcessSpec,
    TaskProcess,
    attempt_argv,
    attempt_environment,
)
from runsvc.executor.shipping import LOG_INTERVAL_S, LogShipper, LogSpool, upload_artifacts
from runsvc.executor.taskuser import TaskUser
from runsvc.executor.workdirs import AttemptDirectory, sweep_abandoned
from runsvc.wire.executor import Claim, Completion

T = TypeVar("T")

log = structlog.get_logger("runsvc.executor")

# Pauses between failed claims; jittered, so that a fleet coming back after an outage
# does not claim in lockstep.
_CLAIM_BACKOFF = RetryPolicy(first_backoff_s=1.0, max_backoff_s=30.0)
# How long a handed-back attempt may take to flush its log and release its lease.
_HAND_BACK_S = 10.0
_SHUTDOWN_REASON = "the executor is shutting down"
_MIN_HEARTBEAT_S = 0.05
# Beside the work directory, not in it: a task running as another user may write the file
# but, unable to change the attempt directory, cannot swap it for a link to another file.
_OUTPUT_FILE = "outputs"


@dataclass(frozen=True)
class AgentConfig:
    """How an agent claims and runs tasks. `inherited_env` is the executor's own
    environment, of which tasks get only a few variables (see `attempt_environment`).
    `task_user` is who tasks run as (None: the executor's user; see `taskuser`)."""

    name: str
    work_root: Path
    labels: Mapping[str, str] = field(default_factory=dict)
    concurrency: int = 1
    claim_wait_s: float = 20.0
    shutdown_grace_s: float = 30.0
    kill_grace_s: float = 10.0
    report_deadline_s: float = 3600.0
    log_interval_s: float = LOG_INTERVAL_S
    inherited_env: Mapping[str, str] = field(default_factory=dict)
    keep_work_dirs: bool = False
    task_user: TaskUser | None = None


class AttemptEnd(enum.Enum):
    """How the agent parted with an attempt."""

    COMPLETED = "completed"  # the outcome was delivered
    RELEASED = "released"  # handed back unfinished at shutdown
    ABANDONED = "abandoned"  # the lease was lost; nothing more was reported
    UNREPORTED = "unreported"  # the server could not be told before the deadline


class AgentError(Exception):
    """The server refuses this executor's claims (token, role or labels); it stopped."""


AttemptHook = Callable[[Claim, AttemptEnd], None]


class _Attempt:
    """One claimed attempt while the agent holds it."""

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.lease = claim.lease
        self.process: TaskProcess | None = None
        self.stop_reason: str | None = None

    def stop(self, reason: str) -> None:
        """End the process group, now or as soon as it has started."""
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.process is not None:
            self.process.stop(reason)

    def hand_back(self) -> None:
        """End the process; its lease is then released instead of completed."""
        self.stop(_SHUTDOWN_REASON)


class Agent:
    """Claims and runs tasks until `shutdown()`. The caller owns the client's connection
    and the signal handlers (see `runsvc.cli.executing`)."""

    def __init__(
        self,
        client: ExecutorClient,
        config: AgentConfig,
        *,
        on_attempt_end: AttemptHook | None = None,
    ) -> None:
        if config.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.client = client
        self.config = config
        self._on_attempt_end = on_attempt_end
        self._slots = asyncio.Semaphore(config.concurrency)
        self._stopping = asyncio.Event()
        self._hurry = asyncio.Event()
        self._attempts: dict[asyncio.Task[None], _Attempt] = {}
        self._fatal: ApiError | None = None

    def shutdown(self) -> None:
        """Stop claiming and let running attempts finish within the grace period; called a
        second time, end them now."""
        if self._stopping.is_set():
            self._hurry.set()
        self._stopping.set()

    async def run(self) -> None:
        """Claim and run until shut down, then wind down the running attempts."""
        self.config.work_root.mkdir(parents=True, exist_ok=True)
        user = self.config.task_user
        log.info(
            "executor started",
            executor=self.config.name,
            labels=dict(self.config.labels),
            task_user=None if user is None else user.name,
        )
        abandoned = await asyncio.to_thread(sweep_abandoned, self.config.work_root)
        if abandoned:
            log.info(
                "removed work directories of executors that died",
                directories=[path.name for path in abandoned],
            )
        try:
            await self._claim_until_stopped()
        finally:
            await self._wind_down()
        log.info("executor stopped", executor=self.config.name)
        if self._fatal is not None:
            raise AgentError(f"the server refuses this executor's claims: {self._fatal}")

    async def _claim_until_stopped(self) -> None:
        config = self.config
        failures = 0
        while not self._stopping.is_set():
            if not await self._unless_stopping(self._slots.acquire()):
                break
            try:
                claim = await self._unless_stopping(
                    self.client.claim(config.name, dict(config.labels), wait_s=config.claim_wait_s)
                )
            except (ConnectionFailed, ServerError, InvalidResponse) as exc:
                self._slots.release()
                failures += 1
                pause = _CLAIM_BACKOFF.backoff(failures)
                log.warning("claim failed", error=str(exc), retry_in_s=round(pause, 1))
                with contextlib.suppress(TimeoutError):  # not wait_for: eventlog.listener
                    async with asyncio.timeout(pause):
                        await self._stopping.wait()
                continue
            except ApiError as exc:
                self._slots.release()
                log.error("claim refused", error=str(exc))
                self._fatal = exc
                self.shutdown()
                break
            failures = 0
            if claim is None:
                self._slots.release()
            elif self._stopping.is_set():
                # Claimed in the very moment shutdown began: give it straight back.
                self._slots.release()
                with contextlib.suppress(ApiError):
                    await self.client.release(claim.lease, deadline=_deadline(_HAND_BACK_S))
            else:
                self._start_attempt(claim)

    async def _unless_stopping(self, awaitable: Awaitable[T]) -> T | None:
        """The awaitable's result, or None when shutdown began first (it is then cancelled;
        a result that beat the cancellation is still returned, so a claim is never lost)."""
        job = asyncio.ensure_future(awaitable)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({job, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not job.done():
                job.cancel()
                await asyncio.wait({job})
        return None if job.cancelled() else job.result()

    def _start_attempt(self, claim: Claim) -> None:
        attempt = _Attempt(claim)
        task = asyncio.create_task(self._run_attempt(attempt), name=f"attempt {claim.lease}")
        self._attempts[task] = attempt
        task.add_done_callback(self._attempt_done)

    def _attempt_done(self, task: asyncio.Task[None]) -> None:
        self._attempts.pop(task, None)
        self._slots.release()

    async def _wind_down(self) -> None:
        running = set(self._attempts)
        if not running:
            return
        log.info("waiting for running attempts", attempts=len(running))
        # Waiting on a wait() leaves the attempts alone when the grace period runs out;
        # gather() would cancel them.
        finished = asyncio.ensure_future(asyncio.wait(running))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait(
            {finished, hurry},
            timeout=self.config.shutdown_grace_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        finished.cancel()
        hurry.cancel()
        running = {task for task in running if not task.done()}
        for task in running:
            self._attempts[task].hand_back()
        if running:
            _, late = await asyncio.wait(running, timeout=self.config.kill_grace_s + _HAND_BACK_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def _run_attempt(self, attempt: _Attempt) -> None:
        claim = attempt.claim
        item = claim.task
        directory = self.config.work_root / _directory_name(claim)
        end = AttemptEnd.UNREPORTED
        with structlog.contextvars.bound_contextvars(
            run_id=item.run_id, task_id=item.task_id, task=item.task, attempt=item.attempt
        ):
            log.info("attempt claimed", lease=claim.lease)
            owned: AttemptDirectory | None = None
            try:
                owned = await asyncio.to_thread(AttemptDirectory, directory)
                work_dir = directory / "work"
                work_dir.mkdir()
                output_file = (directory / _OUTPUT_FILE).absolute()
                output_file.touch(mode=0o600, exist_ok=False)
                if self.config.task_user is not None:
                    self.config.task_user.give(work_dir)
                    self.config.task_user.give_file(output_file)
                spool = LogSpool(directory / "output.log", masks=item.masks)
                try:
                    end = await self._attend(attempt, work_dir, output_file, spool)
                finally:
                    if attempt.process is not None:
                        # However this ends (lost lease, a bug, cancellation), leave no
                        # process behind.
                        attempt.process.stop("the attempt was abandoned")
                        await attempt.process.wait()
                    spool.close()
            except LeaseLost:
                end = AttemptEnd.ABANDONED
            except Exception:
                log.exception("attempt failed in the executor")
            finally:
                if owned is not None:
                    await asyncio.to_thread(owned.release, remove=not self.config.keep_work_dirs)
                log.info("attempt ended", end=end.value)
                if self._on_attempt_end is not None:
                    self._on_attempt_end(claim, end)

    async def _attend(
        self, attempt: _Attempt, work_dir: Path, output_file: Path, spool: LogSpool
    ) -> AttemptEnd:
        """Run the attempt and report it; LeaseLost (from any call) ends it early."""
        shipper = LogShipper(
            spool, self._log_sender(attempt.lease), interval_s=self.config.log_interval_s
        )
        heartbeat = asyncio.create_task(self._heartbeat(attempt))
        shipping = asyncio.create_task(shipper.run())
        try:
            result = await self._race(
                self._execute(attempt, work_dir, output_file, spool), {heartbeat, shipping}
            )
            outputs: dict[str, str] = {}
            if result.error != _SHUTDOWN_REASON:
                limit = attempt.claim.task.max_output_bytes
                try:
                    outputs = await asyncio.to_thread(read_outputs, output_file, limit)
                    refuse_secrets(outputs, attempt.claim.task.masks)
                except OutputFileError as exc:
                    outputs = {}
                    problem = _unquoted(exc) if attempt.claim.task.masks else str(exc)
                    if result.succeeded:
                        result = ProcessResult(result.exit_code, problem)
                    else:  # the command's own failure stays the attempt's error
                        spool.note(f"outputs not recorded: {problem}")
            if result.error is not None and result.error != _SHUTDOWN_REASON:
                # The error is recorded in the run's history (an output file's refused
                # line is quoted in it, say): no secret may pass into it.
                result = ProcessResult(
                    result.exit_code, Masker(attempt.claim.task.masks).mask(result.error)
                )
            if result.error is not None:
                spool.note(f"attempt failed: {result.error}")
            await _settle(shipping)
            # Handed back only when the shutdown ended the process; one that finished by
            # itself (or was stopped for another reason) meanwhile is reported as usual.
            if result.error == _SHUTDOWN_REASON:
                return await self._race(self._hand_back(attempt, shipper), {heartbeat})
            return await self._race(
                self._report(attempt, work_dir, shipper, result, outputs), {heartbeat}
            )
        finally:
            for watcher in (heartbeat, shipping):
                with contextlib.suppress(ApiError):
                    await _settle(watcher)

    async def _execute(
        self, attempt: _Attempt, work_dir: Path, output_file: Path, spool: LogSpool
    ) -> ProcessResult:
        item = attempt.claim.task
        user = self.config.task_user
        if item.inputs:
            try:
                await fetch_inputs(
                    self.client, attempt.lease, item.inputs, work_dir, spool, task_user=user
                )
            except InputError as exc:
                return ProcessResult(None, str(exc))
            if attempt.stop_reason is not None:  # stopped while the inputs came
                return ProcessResult(None, attempt.stop_reason)
        inherited = self.config.inherited_env
        if user is not None:
            inherited = {**inherited, **user.identity()}
        try:
            spec = ProcessSpec(
                argv=attempt_argv(item),
                cwd=work_dir,
                env=attempt_environment(item, inherited, output_file=output_file),
                timeout_s=item.timeout_s,
                progress_timeout_s=item.progress_timeout_s,
                kill_grace_s=self.config.kill_grace_s,
                user=user,
            )
            attempt.process = await TaskProcess.start(spec, spool.write)
        except (OSError, ValueError) as exc:
            return ProcessResult(None, f"cannot start: {exc}")
        if attempt.stop_reason is not None:  # a stop or shutdown overtook the start
            attempt.process.stop(attempt.stop_reason)
        result = await attempt.process.wait()
        spool.finish_output()
        return result

    async def _report(
        self,
        attempt: _Attempt,
        work_dir: Path,
        shipper: LogShipper,
        result: ProcessResult,
        outputs: dict[str, str],
    ) -> AttemptEnd:
        deadline = _deadline(self.config.report_deadline_s)
        lease = attempt.lease

        async def upload(name: str, source: Path, sha256: str) -> None:
            await self.client.upload_artifact(lease, name, source, sha256=sha256, deadline=deadline)

        await upload_artifacts(work_dir, attempt.claim.task.artifacts, upload, shipper.spool)
        try:
            await shipper.flush(deadline)
        except LeaseLost:
            raise
        except ApiError as exc:
            log.error("log not fully delivered", error=str(exc), delivered=shipper.shipped)
        completion = Completion(
            status="success" if result.succeeded else "failed",
            exit_code=result.exit_code,
            error=result.error,
            outputs=outputs,
        )
        try:
            try:
                await self.client.complete(lease, completion, deadline=deadline)
            except (BadRequestError, TooLargeError) as exc:
                if not outputs:
                    raise
                # The server refused the outputs (its limit was lowered since the claim,
                # say) and recorded nothing: the attempt still gets an outcome.
                log.error("outputs refused by the server", error=str(exc))
                completion = Completion(
                    status="failed",
                    exit_code=result.exit_code,
                    error=f"outputs refused by the server: {exc.message}",
                )
                await self.client.complete(lease, completion, deadline=deadline)
        except LeaseLost:
            raise
        except ApiError as exc:
            log.error("completion not delivered", error=str(exc), status=completion.status)
            return AttemptEnd.UNREPORTED
        return AttemptEnd.COMPLETED

    async def _hand_back(self, attempt: _Attempt, shipper: LogShipper) -> AttemptEnd:
        deadline = _deadline(_HAND_BACK_S)
        shipper.spool.note("released: the executor shut down before the task finished")
        try:
            with contextlib.suppress(LeaseLost):
                await shipper.flush(deadline)
            await self.client.release(attempt.lease, deadline=deadline)
        except LeaseLost:
            # A release repeated after a lost answer finds the lease already ended.
            return AttemptEnd.RELEASED
        except ApiError as exc:
            log.error("lease not released", error=str(exc))
            return AttemptEnd.UNREPORTED
        return AttemptEnd.RELEASED

    async def _heartbeat(self, attempt: _Attempt) -> NoReturn:
        # A floor, so that a server's zero or negative interval cannot make this spin.
        interval = max(attempt.claim.heartbeat_interval_s, _MIN_HEARTBEAT_S)
        # The first beat goes at once: it confirms to the server that this executor has
        # the attempt (an unconfirmed lease that expires is put back as never started).
        first = True
        while True:
            if not first:
                await asyncio.sleep(interval)  # the pace the server asked for
            first = False
            try:
                answer = await self.client.heartbeat(attempt.lease, deadline=_deadline(interval))
            except LeaseLost:
                log.warning("lease lost; abandoning the attempt")
                raise
            except ApiError as exc:
                # Keep the task running through an outage; the next beat tries again.
                log.warning("heartbeat not delivered", error=str(exc))
                continue
            if answer.stop:
                log.info("stop requested by the server", reason=answer.reason)
                attempt.stop(answer.reason or "stop requested")

    def _log_sender(self, lease: str) -> Callable[[int, str, float], Awaitable[None]]:
        async def send(offset: int, text: str, deadline: float) -> None:
            await self.client.append_log(lease, offset, text, deadline=deadline)

        return send

    @staticmethod
    async def _race(work: Awaitable[T], watchers: Collection[asyncio.Future[Any]]) -> T:
        """`work`'s result, unless a watcher (heartbeat, log shipping) ends first: they only
        end by raising (LeaseLost), and that is raised here after `work` is cancelled."""
        job = asyncio.ensure_future(work)
        try:
            await asyncio.wait({job, *watchers}, return_when=asyncio.FIRST_COMPLETED)
            if job.done():
                return job.result()
            for watcher in watchers:
                if watcher.done():
                    watcher.result()
            raise RuntimeError("a watcher ended without an error")  # pragma: no cover
        finally:
            await _settle(job, reraise=False)


async def _settle(task: asyncio.Future[Any], *, reraise: bool = True) -> None:
    """Cancel a task and wait until it is done. An error it ended with before it could be
    cancelled (LeaseLost) is raised here rather than lost, unless `reraise` is off."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled() and task.exception() is not None and reraise:
        task.result()


class SecretInOutputs(OutputFileError):
    """An output holds a secret's value; the message names the output only."""


def _unquoted(error: OutputFileError) -> str:
    """An output file's refusal without the text it quotes (up to 40 characters of the
    line, which could be a part of a secret the masker cannot recognise)."""
    if isinstance(error, SecretInOutputs):
        return str(error)
    where = f"${OUTPUT_VARIABLE}" + (f" line {error.line}" if error.line is not None else "")
    return f"{where}: refused (its text is not quoted: the attempt was given secrets)"


def refuse_secrets(outputs: dict[str, str], masks: Sequence[str]) -> None:
    """OutputFileError naming the first output that holds a secret's value (or its
    base64 or URL-encoded form): outputs are recorded in the run's history for ever."""
    masker = Masker(masks)
    if not masker:
        return
    for key, value in outputs.items():
        if masker.holds(value):
            raise SecretInOutputs(
                None,
                f"output {key} holds a secret's value; outputs are recorded in the run's "
                "history, so none of this attempt's were",
            )


def read_outputs(path: Path, limit: int) -> dict[str, str]:
    """The outputs in the attempt's output file; OutputFileError when it holds more than
    `limit` bytes, is not in the form, or is no longer the file the executor made."""
    try:
        # Not following a link: run as the executor's user, a task could put one there.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {}  # the task removed it: it leaves nothing
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OutputFileError(None, "was replaced by a symbolic link") from None
        raise OutputFileError(None, f"cannot be read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputFileError(None, "is not a regular file")
        # One byte past the limit tells a file over it, however much a task wrote.
        return parse_outputs(file.read(limit + 1), limit=limit)


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds


def _directory_name(claim: Claim) -> str:
    """A directory per attempt: readable (task id, attempt) and unique per lease, so that
    two agents sharing a work root never collide."""
    item = claim.task
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", item.task_id)[:80]
    unique = hashlib.sha256(claim.lease.encode()).hexdigest()[:8]
    return f"{readable}-{item.attempt}-{unique}"
