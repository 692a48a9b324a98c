"""The executor protocol: what an executor and the service say to each other over HTTP.

Both sides import these types, so the wire format has one definition. Request types reject
unknown fields (a typo must not be silently ignored by the server); response types accept
them, because the API adds fields over time and an older executor must keep working.

Durations travel as strings such as `20s` in requests (the API's duration syntax) and as
seconds (floats) in responses, where a client only computes with them.

A claim hands out one attempt of one task under a *lease*. Every later call names the
lease; once the lease is no longer current (lost, expired, replaced, completed, released)
the server answers 409 and changes nothing, so a late or duplicated report can never
overwrite the outcome of a newer attempt.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Annotated, Final, Literal
from urllib.parse import quote

import msgspec

CLAIM_PATH: Final = "/api/v1/executor/claim"
HEARTBEAT_PATH: Final = "/api/v1/executor/leases/{lease}/heartbeat"
LOGS_PATH: Final = "/api/v1/executor/leases/{lease}/logs"
ARTIFACT_PATH: Final = "/api/v1/executor/leases/{lease}/artifacts/{path}"
INPUTS_PATH: Final = "/api/v1/executor/leases/{lease}/inputs/{task_id}"
INPUT_PATH: Final = "/api/v1/executor/leases/{lease}/inputs/{task_id}/{path}"
COMPLETE_PATH: Final = "/api/v1/executor/leases/{lease}/complete"
RELEASE_PATH: Final = "/api/v1/executor/leases/{lease}/release"

LOG_OFFSET_HEADER: Final = "X-Log-Offset"
"""The byte offset, in the attempt's log as stored (UTF-8), of the chunk a logs request
carries. A chunk sent twice (a retry after a lost answer) names the same offset, so the
server stores it once."""


SHA256_HEADER: Final = "X-Artifact-Sha256"
"""The SHA-256 (hex) of an artifact's bytes: sent with an upload, which the server
refuses when the bytes it received differ, and answered with an input's download, which
the executor checks the bytes it wrote against."""

ATTEMPT_HEADER: Final = "X-Artifact-Attempt"
"""The attempt of the producing task that uploaded an input being downloaded."""


OUTPUT_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]*$(?!\n)"
"""The names of an attempt's outputs: a letter or `_`, then letters, digits or `_`. (The
lookahead refuses a trailing newline, which `$` alone lets through in Python's regular
expressions; in JSON Schema's, where `$` ends the text, it changes nothing.)"""

OutputName = Annotated[str, msgspec.Meta(pattern=OUTPUT_NAME_PATTERN)]

DEFAULT_MAX_OUTPUT_BYTES: Final = 64 * 1024
"""What an attempt's output file may hold unless the server says otherwise
(`RUNSVC_MAX_OUTPUT_BYTES`)."""


def outputs_size(outputs: dict[str, str]) -> int:
    """The bytes (UTF-8) of an attempt's output names and values, which the server holds
    to its limit. The file they were read from is at least as large (every entry also
    takes a `=` or a block's delimiters), so a file within the limit always passes."""
    return sum(len(name.encode()) + len(value.encode()) for name, value in outputs.items())


class ClaimRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Ask for one ready task. `labels` are matched against the task's `runs_on`; `wait` is
    how long the server may hold the request open until a task becomes ready."""

    executor: str
    labels: dict[str, str] = {}
    wait: str = "20s"


class InputSource(msgspec.Struct, frozen=True, kw_only=True):
    """One task whose artifacts an input takes: the task named, or each item of a
    foreach task. `attempt` is its successful attempt, None when it did not succeed (it
    then has no artifacts to give)."""

    task: str
    task_id: str
    attempt: int | None = None


class TaskInput(msgspec.Struct, frozen=True, kw_only=True):
    """Artifacts to download into the work directory before the attempt starts: from
    each of `sources` (in item order), those at or under `paths` (all when empty).
    Each path must be found in each source, or the attempt fails naming it."""

    task: str
    paths: list[str] = []
    sources: list[InputSource] = []


class InputFile(msgspec.Struct, frozen=True, kw_only=True):
    """One artifact of a source's successful attempt: its path (relative, `/`-separated),
    its size and SHA-256 (None for an artifact uploaded without one, by an executor
    older than inputs)."""

    path: str
    size: int
    sha256: str | None = None


class InputFiles(msgspec.Struct, frozen=True, kw_only=True):
    """The artifacts of one source that an attempt's inputs ask for, in path order."""

    files: list[InputFile] = []


class WorkItem(msgspec.Struct, frozen=True, kw_only=True):
    """One attempt of one task, with everything an executor needs to run it.

    Exactly one of `run` (a shell string, run by `/bin/sh -c`) and `command` (an argv
    list) is set. `item` is the foreach item of an expanded child task. `artifacts` are
    paths relative to the attempt's work directory, uploaded when it ends; `inputs` are
    artifacts of earlier tasks, downloaded there before it starts.
    `max_output_bytes` is the most the attempt's output file may hold: the server's
    limit, so that the executor refuses what the server would.
    """

    task_id: str
    run_id: str
    group: str
    task: str
    attempt: int
    run: str | None = None
    command: list[str] | None = None
    static_environment: dict[str, str] = {}
    environment: dict[str, str] = {}
    env: dict[str, str] = {}
    item: str | None = None
    artifacts: list[str] = []
    inputs: list[TaskInput] = []
    timeout_s: float | None = None
    progress_timeout_s: float | None = None
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    secret_env: list[str] = []
    """The names of the `env` entries that hold secrets' values."""
    masks: list[str] = []
    """The values of the secrets the attempt was given: the executor writes `***` in
    their place (and their base64 and URL-encoded forms) in the log it ships, and fails
    an attempt whose outputs hold one."""


class Claim(msgspec.Struct, frozen=True, kw_only=True):
    """A claimed attempt: the lease that every later call names, when it expires unless
    renewed by a heartbeat, and how often to send heartbeats."""

    lease: str
    lease_expires_at: datetime
    heartbeat_interval_s: float
    task: WorkItem


class HeartbeatAnswer(msgspec.Struct, frozen=True, kw_only=True):
    """The 200 answer to a heartbeat: stop the task (a stop was requested, or the server
    decided it timed out). A 204 answer means keep going, see `KEEP_GOING`."""

    stop: bool
    reason: str | None = None


KEEP_GOING: Final = HeartbeatAnswer(stop=False)
"""What a 204 heartbeat answer means, so that callers always get a `HeartbeatAnswer`."""


ExitCode = Annotated[int, msgspec.Meta(ge=-(2**31), le=2**31 - 1)]
"""A process's exit status as an executor reports it: any 32-bit integer (shells use 0-255,
some report a killing signal as a negative number)."""


class Completion(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The outcome of an attempt. `exit_code` is None when the process did not exit by
    itself (killed by a signal, could not start); `error` says why it failed. `outputs`
    are what the attempt wrote to its output file (`$RUNSVC_OUTPUT`), at most the
    server's `RUNSVC_MAX_OUTPUT_BYTES` of names and values."""

    status: Literal["success", "failed"]
    exit_code: ExitCode | None = None
    error: str | None = None
    outputs: dict[OutputName, str] = {}


def lease_path(template: str, lease: str, path: str = "") -> str:
    """A lease route with its parameters percent-encoded: the lease as one segment, an
    artifact path segment by segment (its slashes kept)."""
    return template.format(lease=quote(lease, safe=""), path=quote(path, safe="/"))


def wanted(path: str, paths: Sequence[str]) -> bool:
    """Whether an input asking for `paths` takes the artifact at `path`: every artifact
    when `paths` is empty, else those that are one of `paths` or under one of them (a
    directory)."""
    return not paths or any(path == p or path.startswith(p + "/") for p in paths)


def input_path(template: str, lease: str, task_id: str, path: str = "") -> str:
    """An input route with its parameters percent-encoded, as `lease_path`."""
    return template.format(
        lease=quote(lease, safe=""), task_id=quote(task_id, safe=""), path=quote(path, safe="/")
    )


def format_duration(seconds: float) -> str:
    """Seconds as the API's duration syntax: whole seconds as `20s`, anything finer in
    milliseconds (`1500ms`), rounded up so that a wait is never shortened to zero."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"a duration must be finite and not negative, got {seconds!r}")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{math.ceil(seconds * 1000)}ms"


def compose_environment(item: WorkItem) -> dict[str, str]:
    """The variables the service defines for an attempt: the run's static environment,
    overlaid by its (recreatable) environment, overlaid by the task's own `env`; then the
    foreach item as `RUNSVC_ITEM` and, unless the task already defines it, `ITEM`; then the
    attempt's identity as `RUNSVC_RUN_ID`, `RUNSVC_TASK`, `RUNSVC_TASK_ID` and
    `RUNSVC_ATTEMPT`, which always win because scripts rely on them being true.

    The executor puts a few of its own variables (PATH, HOME, ...) underneath.
    """
    composed = {**item.static_environment, **item.environment, **item.env}
    if item.item is not None:
        composed["RUNSVC_ITEM"] = item.item
        composed.setdefault("ITEM", item.item)
    composed["RUNSVC_RUN_ID"] = item.run_id
    composed["RUNSVC_TASK"] = item.task
    composed["RUNSVC_TASK_ID"] = item.task_id
    composed["RUNSVC_ATTEMPT"] = str(item.attempt)
    return composed
