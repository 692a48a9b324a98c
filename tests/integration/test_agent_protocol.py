"""The executor agent against an in-memory double of the executor protocol (the server's
side of `runsvc.wire.executor`, kept in this test so that the agent can be tested before and
apart from the real service): claiming, log streaming, artifacts, completion, stops, lost
leases, a server outage and shutdown by signal."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from runsvc.client import ApiClient, ExecutorClient, RetryPolicy
from runsvc.executor import Agent, AgentConfig, AgentError, AttemptEnd
from runsvc.wire.api import ErrorBody
from runsvc.wire.executor import (
    LOG_OFFSET_HEADER,
    Claim,
    ClaimRequest,
    Completion,
    HeartbeatAnswer,
    WorkItem,
)
from tests.integration.test_executor_process import live_members

TOKEN = "rsv_executor_token"
FAST = RetryPolicy(first_backoff_s=0.02, max_backoff_s=0.1)
LEASE_ROUTE = "/api/v1/executor/leases/{lease}"


@dataclass
class Lease:
    """What the double knows of one lease."""

    item: WorkItem
    state: str = "active"  # active | completed | lost | released
    log: bytearray = field(default_factory=bytearray)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    completion: Completion | None = None
    stop: str | None = None
    calls: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.log.decode()


def error(status: int, code: str, message: str) -> web.Response:
    body = msgspec.json.encode(ErrorBody(code=code, message=message))
    return web.Response(status=status, body=body, content_type="application/json")


class Double:
    """The server side of the executor protocol, in memory."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        self.leases: dict[str, Lease] = {}
        self.claims: list[ClaimRequest] = []
        self.url = ""
        self.unavailable: set[str] = set()
        """Calls (`claim`, `heartbeat`, `logs`, `complete`, ...) answered 503 for now."""
        self.refused: Counter[str] = Counter()
        self.refuse_outputs = False
        """Completions with outputs answered 413, as a server with a lower limit would."""
        self.completions: list[Completion] = []
        self._changed = asyncio.Condition()
        self._ids = itertools.count(1)
        self.app = web.Application(middlewares=[self.gate])
        self.app.router.add_post("/api/v1/executor/claim", self.claim)
        self.app.router.add_post(LEASE_ROUTE + "/heartbeat", self.heartbeat)
        self.app.router.add_put(LEASE_ROUTE + "/logs", self.logs)
        self.app.router.add_put(LEASE_ROUTE + "/artifacts/{path:.+}", self.artifact)
        self.app.router.add_post(LEASE_ROUTE + "/complete", self.complete)
        self.app.router.add_post(LEASE_ROUTE + "/release", self.release)

    def lease_of(self, task_id: str) -> Lease:
        return next(lease for lease in self.leases.values() if lease.item.task_id == task_id)

    async def until(self, predicate: Callable[[], bool]) -> None:
        """Wait until `predicate` holds (it is checked whenever the double's state changes)."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), 15)

    async def changed(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    @web.middleware
    async def gate(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """503 for the calls made unavailable, 401 without the token; every answered call
        wakes the tests waiting on the double's state."""
        call = request.path.split("/")[6 if "/artifacts/" in request.path else -1]
        if call in self.unavailable:
            self.refused[call] += 1
            await self.changed()
            return web.Response(status=503, text="down for maintenance")
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return error(401, "unauthorized", "a valid bearer token is required")
        response = await handler(request)
        await self.changed()
        return response

    async def claim(self, request: web.Request) -> web.Response:
        try:
            asked = msgspec.json.decode(await request.read(), type=ClaimRequest)
        except msgspec.ValidationError as exc:
            return error(400, "bad_request", str(exc))
        self.claims.append(asked)
        wait_s = (
            float(asked.wait.removesuffix("ms")) / 1000
            if asked.wait.endswith("ms")
            else float(asked.wait.removesuffix("s"))
        )
        try:
            item = await asyncio.wait_for(self.queue.get(), wait_s)
        except TimeoutError:
            return web.Response(status=204)
        lease_id = f"lease-{next(self._ids)}"
        self.leases[lease_id] = Lease(item)
        claim = Claim(
            lease=lease_id,
            lease_expires_at=datetime.now(UTC) + timedelta(seconds=30),
            heartbeat_interval_s=0.1,
            task=item,
        )
        return web.Response(body=msgspec.json.encode(claim), content_type="application/json")

    def current(self, request: web.Request, call: str) -> Lease | web.Response:
        lease = self.leases.get(request.match_info["lease"])
        if lease is None:
            return error(404, "not_found", "no such lease")
        lease.calls.append(call)
        if lease.state != "active":
            return error(409, "conflict", f"the lease is {lease.state}")
        return lease

    async def heartbeat(self, request: web.Request) -> web.Response:
        lease = self.current(request, "heartbeat")
        if isinstance(lease, web.Response):
            return lease
        if lease.stop is None:
            return web.Response(status=204)
        answer = HeartbeatAnswer(stop=True, reason=lease.stop)
        return web.Response(body=msgspec.json.encode(answer), content_type="application/json")

    async def logs(self, request: web.Request) -> web.Response:
        lease = self.current(request, "logs")
        if isinstance(lease, web.Response):
            return lease
        offset = int(request.headers[LOG_OFFSET_HEADER])
        chunk = (await request.text()).encode()
        if offset > len(lease.log):
            return error(400, "bad_request", f"offset {offset} leaves a gap")
        # As the server does: a chunk sent again after a lost answer starts at an offset
        # already stored and may have grown since; what overlaps must be the same bytes.
        stored = lease.log[offset:]
        if chunk[: len(stored)] != stored[: len(chunk)]:
            return error(400, "bad_request", "a repeated chunk differs")
        lease.log += chunk[len(stored) :]
        return web.Response(status=204)

    async def artifact(self, request: web.Request) -> web.Response:
        lease = self.current(request, "artifact")
        if isinstance(lease, web.Response):
            return lease
        path = request.match_info["path"]
        if path.startswith("/") or ".." in path.split("/"):
            return error(400, "bad_request", "the path escapes")
        lease.artifacts[path] = await request.read()
        return web.Response(status=204)

    async def complete(self, request: web.Request) -> web.Response:
        completion = msgspec.json.decode(await request.read(), type=Completion)
        self.completions.append(completion)
        if self.refuse_outputs and completion.outputs:
            return error(413, "too_large", "RUNSVC_MAX_OUTPUT_BYTES allows 10")
        lease = self.leases.get(request.match_info["lease"])
        if lease is not None and lease.state == "completed" and lease.completion == completion:
            return web.Response(status=204)  # the same completion, repeated
        lease_or_error = self.current(request, "complete")
        if isinstance(lease_or_error, web.Response):
            return lease_or_error
        lease_or_error.completion = completion
        lease_or_error.state = "completed"
        return web.Response(status=204)

    async def release(self, request: web.Request) -> web.Response:
        lease = self.current(request, "release")
        if isinstance(lease, web.Response):
            return lease
        lease.state = "released"
        return web.Response(status=204)


class Ends:
    """How the agent parted with each attempt, awaitable per lease."""

    def __init__(self) -> None:
        self.ends: dict[str, AttemptEnd] = {}
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def record(self, claim: Claim, end: AttemptEnd) -> None:
        self.ends[claim.lease] = end
        self._events[claim.lease].set()

    async def of(self, lease: str) -> AttemptEnd:
        await asyncio.wait_for(self._events[lease].wait(), 15)
        return self.ends[lease]


@pytest.fixture
async def double() -> AsyncIterator[Double]:
    """The protocol double, served on a local port; `double.url` is its base URL."""
    served = Double()
    server = TestServer(served.app)
    await server.start_server()
    served.url = str(server.make_url("")).rstrip("/")
    try:
        yield served
    finally:
        await server.close()


@asynccontextmanager
async def agent_running(
    double: Double, tmp_path: Path, *, token: str = TOKEN, shutdown_grace_s: float = 30.0
) -> AsyncIterator[tuple[Agent, Ends, asyncio.Task[None]]]:
    """An agent running in this process against the double, with short waits and fast
    retries; on leaving, it is shut down without grace."""
    ends = Ends()
    settings = AgentConfig(
        name="exec-1",
        work_root=tmp_path / "agent",
        labels={"os": "linux"},
        claim_wait_s=0.2,
        log_interval_s=0.05,
        kill_grace_s=1.0,
        inherited_env={"PATH": os.defpath, "RUNSVC_TOKEN": token},
        shutdown_grace_s=shutdown_grace_s,
    )
    async with ApiClient(double.url, token, retry=FAST) as api:
        agent = Agent(ExecutorClient(api), settings, on_attempt_end=ends.record)
        running = asyncio.create_task(agent.run())
        try:
            yield agent, ends, running
        finally:
            agent.shutdown()
            agent.shutdown()
            await asyncio.wait({running}, timeout=20)


def item(task_id: str, **fields: object) -> WorkItem:
    base: dict[str, object] = {
        "task_id": task_id,
        "run_id": "run-1",
        "group": "/org/p",
        "task": task_id,
        "attempt": 1,
    }
    return msgspec.convert({**base, **fields}, WorkItem)


def pgid_in(log: str) -> int:
    return int(log.split("pgid ", 1)[1].split(maxsplit=1)[0])


async def test_claim_stream_upload_complete(double: Double, tmp_path: Path) -> None:
    """The agent claims with its name and labels, runs the task in its environment, streams
    its log, uploads its artifacts (noting what it cannot) and reports success."""
    script = (
        'echo "task=$RUNSVC_TASK item=$ITEM greeting=$GREETING token=${RUNSVC_TOKEN:-none}"; '
        "echo to-stderr >&2; mkdir -p dist/sub; echo a > dist/a.txt; echo b > dist/sub/b.txt; "
        "echo report > report.txt"
    )
    await double.queue.put(
        item(
            "build",
            run=script,
            item="shard-1",
            environment={"GREETING": "hi"},
            artifacts=["report.txt", "dist", "missing.txt", "../up"],
        )
    )
    async with agent_running(double, tmp_path) as (_agent, ends, _):
        await double.until(lambda: bool(double.leases))
        lease_id, lease = next(iter(double.leases.items()))
        assert await ends.of(lease_id) is AttemptEnd.COMPLETED
    assert double.claims[0].executor == "exec-1"
    assert double.claims[0].labels == {"os": "linux"}
    assert lease.completion == Completion(status="success", exit_code=0, error=None)
    assert lease.text.startswith("task=build item=shard-1 greeting=hi token=none\nto-stderr\n")
    assert "[runsvc] artifact 'missing.txt' not found\n" in lease.text
    assert "[runsvc] artifact '../up' refused" in lease.text
    assert lease.artifacts == {
        "report.txt": b"report\n",
        "dist/a.txt": b"a\n",
        "dist/sub/b.txt": b"b\n",
    }
    # Heartbeats go on while the attempt is reported (they notice a lost lease during long
    # uploads), so one may land after the completion; everything else comes before it.
    assert [call for call in lease.calls if call != "heartbeat"][-1] == "complete"
    assert not (tmp_path / "agent").exists() or not any((tmp_path / "agent").iterdir())


async def test_failure_is_reported_with_exit_code(double: Double, tmp_path: Path) -> None:
    """A command that exits nonzero is reported failed with its exit code; one that cannot
    start is reported failed with why."""
    await double.queue.put(item("fails", command=["sh", "-c", "echo bad; exit 3"]))
    await double.queue.put(item("absent", command=[str(tmp_path / "no-such-program")]))
    async with agent_running(double, tmp_path):
        await double.until(
            lambda: sum(x.completion is not None for x in double.leases.values()) == 2
        )
    assert double.lease_of("fails").completion == Completion(
        status="failed", exit_code=3, error="exit code 3"
    )
    absent = double.lease_of("absent")
    assert absent.completion is not None
    assert absent.completion.exit_code is None
    assert (absent.completion.error or "").startswith("cannot start:")
    assert "[runsvc] attempt failed: cannot start" in absent.text


async def test_outputs_are_reported_with_the_completion(double: Double, tmp_path: Path) -> None:
    """What a task writes to $RUNSVC_OUTPUT (an empty file beside its work directory, not
    in it) is sent with its completion: plain and multi-line values, the last of a name
    written twice; a failed command's outputs too."""
    script = """
        [ -f "$RUNSVC_OUTPUT" ] && [ ! -s "$RUNSVC_OUTPUT" ] || exit 9
        [ "$(dirname "$RUNSVC_OUTPUT")" != "$PWD" ] || exit 8
        echo "version=1.2.3" >> "$RUNSVC_OUTPUT"
        echo "version=1.2.4" >> "$RUNSVC_OUTPUT"
        printf 'notes<<EOF\nfirst line\nsecond = line\nEOF\n' >> "$RUNSVC_OUTPUT"
    """
    await double.queue.put(item("writes", run=script))
    await double.queue.put(item("fails", run='echo "why=disk full" >> "$RUNSVC_OUTPUT"; exit 4'))
    async with agent_running(double, tmp_path):
        await double.until(
            lambda: sum(x.completion is not None for x in double.leases.values()) == 2
        )
    assert double.lease_of("writes").completion == Completion(
        status="success",
        exit_code=0,
        outputs={"version": "1.2.4", "notes": "first line\nsecond = line"},
    )
    assert double.lease_of("fails").completion == Completion(
        status="failed", exit_code=4, error="exit code 4", outputs={"why": "disk full"}
    )


async def test_an_unreadable_output_file_fails_the_attempt(double: Double, tmp_path: Path) -> None:
    """A command that succeeded but left an output file over the claim's limit, malformed
    (the error names the line), or swapped for a symbolic link fails the attempt, with no
    outputs; a command that failed keeps its own error and the log says why its outputs
    were not recorded."""
    await double.queue.put(
        item("big", run='printf "k=%051d" 0 >> "$RUNSVC_OUTPUT"', max_output_bytes=50)
    )
    await double.queue.put(item("bad", run='printf "a=1\nb 2\n" >> "$RUNSVC_OUTPUT"'))
    await double.queue.put(item("link", run='ln -sf /etc/hostname "$RUNSVC_OUTPUT"'))
    await double.queue.put(item("both", run='echo "<<" >> "$RUNSVC_OUTPUT"; exit 3'))
    async with agent_running(double, tmp_path):
        await double.until(
            lambda: sum(x.completion is not None for x in double.leases.values()) == 4
        )
    assert double.lease_of("big").completion == Completion(
        status="failed",
        exit_code=0,
        error="$RUNSVC_OUTPUT: holds more than 50 bytes, the limit of an attempt's outputs "
        "(RUNSVC_MAX_OUTPUT_BYTES)",
    )
    assert double.lease_of("bad").completion == Completion(
        status="failed",
        exit_code=0,
        error="$RUNSVC_OUTPUT line 2: 'b 2' is neither key=value nor key<<DELIMITER",
    )
    assert "[runsvc] attempt failed: $RUNSVC_OUTPUT line 2:" in double.lease_of("bad").text
    assert double.lease_of("link").completion == Completion(
        status="failed", exit_code=0, error="$RUNSVC_OUTPUT: was replaced by a symbolic link"
    )
    both = double.lease_of("both")
    assert both.completion == Completion(status="failed", exit_code=3, error="exit code 3")
    assert "[runsvc] outputs not recorded: $RUNSVC_OUTPUT line 1: '' is not an output name" in (
        both.text
    )


async def test_outputs_the_server_refuses_fail_the_attempt(double: Double, tmp_path: Path) -> None:
    """A server that refuses the outputs (413: its limit is lower than the claim said)
    records nothing; the attempt is reported again, failed, with the server's reason."""
    double.refuse_outputs = True
    await double.queue.put(item("writes", run='echo "k=v" >> "$RUNSVC_OUTPUT"'))
    async with agent_running(double, tmp_path) as (_agent, ends, _):
        await double.until(lambda: bool(double.leases))
        lease_id = next(iter(double.leases))
        assert await ends.of(lease_id) is AttemptEnd.COMPLETED
    assert double.completions == [
        Completion(status="success", exit_code=0, outputs={"k": "v"}),
        Completion(
            status="failed",
            exit_code=0,
            error="outputs refused by the server: RUNSVC_MAX_OUTPUT_BYTES allows 10",
        ),
    ]
    assert double.lease_of("writes").completion == double.completions[1]


async def test_stop_from_heartbeat_kills_the_group(double: Double, tmp_path: Path) -> None:
    """A heartbeat answered with stop ends the whole process group; the attempt is reported
    failed with the server's reason."""
    await double.queue.put(item("long", run="sleep 100 & echo pgid $$; sleep 100"))
    async with agent_running(double, tmp_path):
        await double.until(lambda: bool(double.leases) and "pgid" in double.lease_of("long").text)
        lease = double.lease_of("long")
        lease.stop = "stop requested"
        await double.until(lambda: lease.completion is not None)
    assert lease.completion == Completion(status="failed", exit_code=None, error="stop requested")
    assert live_members(pgid_in(lease.text)) == []


async def test_lost_lease_abandons_without_reporting(double: Double, tmp_path: Path) -> None:
    """A 409 on a heartbeat kills the process group, and nothing but the calls already on
    their way reach the server afterwards: no completion, no release."""
    await double.queue.put(item("long", run="sleep 100 & echo pgid $$; sleep 100"))
    async with agent_running(double, tmp_path) as (_, ends, _):
        await double.until(lambda: bool(double.leases) and "pgid" in double.lease_of("long").text)
        lease_id, lease = next(iter(double.leases.items()))
        lease.state = "lost"
        calls_before = len(lease.calls)
        assert await ends.of(lease_id) is AttemptEnd.ABANDONED
        assert live_members(pgid_in(lease.text)) == []
    # The task printed nothing more, so only heartbeats met the lost lease.
    assert set(lease.calls[calls_before:]) == {"heartbeat"}
    assert lease.completion is None


async def test_task_survives_a_server_outage(double: Double, tmp_path: Path) -> None:
    """While the server answers 503, the task keeps running and finishes; its log and then
    its completion are delivered, each once, when the server is back."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    await double.queue.put(
        item(
            "steady",
            run='echo started; read line < "$GO"; echo "finished $line"',
            env={"GO": str(fifo)},
        )
    )
    async with agent_running(double, tmp_path):
        await double.until(
            lambda: bool(double.leases) and "started" in double.lease_of("steady").text
        )
        double.unavailable = {"heartbeat", "logs", "complete"}
        await asyncio.to_thread(fifo.write_text, "now\n")
        await double.until(lambda: double.refused["heartbeat"] >= 3 and double.refused["logs"] >= 3)
        # Back in stages: the log first, so that the completion (sent after the whole log)
        # meets the outage too.
        double.unavailable = {"complete"}
        await double.until(lambda: double.refused["complete"] >= 3)
        lease = double.lease_of("steady")
        assert lease.completion is None
        double.unavailable = set()
        await double.until(lambda: lease.completion is not None)
    assert lease.completion == Completion(status="success", exit_code=0, error=None)
    assert lease.text == "started\nfinished now\n"


async def test_shutdown_releases_what_outlives_the_grace(double: Double, tmp_path: Path) -> None:
    """On shutdown a task still running when the grace period ends is killed and its lease
    released (handed back), not completed."""
    await double.queue.put(item("long", run="echo pgid $$; exec sleep 100"))
    async with agent_running(double, tmp_path, shutdown_grace_s=0.3) as (agent, ends, running):
        await double.until(lambda: bool(double.leases) and "pgid" in double.lease_of("long").text)
        lease_id, lease = next(iter(double.leases.items()))
        agent.shutdown()
        assert await ends.of(lease_id) is AttemptEnd.RELEASED
        await asyncio.wait_for(running, 10)
    assert lease.state == "released"
    assert lease.completion is None
    assert "[runsvc] released: the executor shut down" in lease.text
    assert live_members(pgid_in(lease.text)) == []


async def test_refused_claims_stop_the_agent(double: Double, tmp_path: Path) -> None:
    """A token the server refuses ends the agent with AgentError instead of retrying
    forever."""
    async with agent_running(double, tmp_path, token="rsv_wrong") as (_, _, running):
        with pytest.raises(AgentError, match="unauthorized"):
            await asyncio.wait_for(running, 10)


AGENT_MAIN = """
import argparse, sys
from runsvc.cli import executor
parser = argparse.ArgumentParser(prog="runsvc")
executor.register(parser.add_subparsers(dest="command", required=True))
args = parser.parse_args(sys.argv[1:])
sys.exit(args.handler(args))
"""


async def test_sigterm_finishes_or_releases_running_tasks(double: Double, tmp_path: Path) -> None:
    """`runsvc executor` on SIGTERM stops claiming and lets running tasks finish; a second
    SIGTERM ends the rest, releases their leases, and the process exits 0."""
    fifo = tmp_path / "go"
    os.mkfifo(fifo)
    await double.queue.put(
        item("quick", run='echo started; read line < "$GO"; echo finished', env={"GO": str(fifo)})
    )
    await double.queue.put(item("slow", run="echo started; exec sleep 100"))
    stderr = (tmp_path / "agent.log").open("wb")
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AGENT_MAIN,
        "executor",
        "--concurrency",
        "2",
        "--labels",
        "os=linux",
        "--name",
        "exec-cli",
        "--work-dir",
        str(tmp_path / "work"),
        # As the test's own user: the task reads a fifo under the private tmp_path.
        "--task-user",
        "",
        env={"PATH": os.defpath, "RUNSVC_SERVER": double.url, "RUNSVC_TOKEN": TOKEN},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
    )
    try:
        await double.until(
            lambda: (
                len(double.leases) == 2
                and all("started" in lease.text for lease in double.leases.values())
            )
        )
        agent.send_signal(signal.SIGTERM)
        await asyncio.to_thread(fifo.write_text, "go\n")
        quick = double.lease_of("quick")
        await double.until(lambda: quick.completion is not None)
        agent.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(agent.wait(), 15) == 0
    finally:
        if agent.returncode is None:
            agent.kill()
            await agent.wait()
        stderr.close()
    assert quick.completion == Completion(status="success", exit_code=0, error=None)
    slow = double.lease_of("slow")
    assert slow.state == "released"
    assert slow.completion is None
    assert {(claim.executor, tuple(claim.labels.items())) for claim in double.claims} == {
        ("exec-cli", (("os", "linux"),))
    }
