"""Artifacts as inputs against the real service: what the claim says an attempt's inputs
are, who may read them through the executor protocol, which attempt's files they are,
the checksum an upload is held to, and an agent (in this process) that downloads them or
fails the attempt naming the path it did not find."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runsvc.client import ApiClient, ExecutorClient, RetryPolicy, RunsClient
from runsvc.executor import Agent, AgentConfig, AttemptEnd
from runsvc.executor.inputs import InputError, _create
from runsvc.http.keys import SERVICE
from runsvc.wire.executor import (
    INPUT_PATH,
    INPUTS_PATH,
    SHA256_HEADER,
    Claim,
    Completion,
    InputFile,
    InputSource,
    TaskInput,
    input_path,
)
from tests.fixtures.service import Service
from tests.integration.test_runs_api import caught_up, create

FAST = RetryPolicy(attempts=3, first_backoff_s=0.01, max_backoff_s=0.05)


def base_url(service: Service) -> str:
    return str(service.client.make_url("")).rstrip("/")


@asynccontextmanager
async def executor_of(service: Service) -> AsyncIterator[ExecutorClient]:
    async with ApiClient(base_url(service), service.tokens["executor"], retry=FAST) as api:
        yield ExecutorClient(api)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def claim_task(executor: ExecutorClient, name: str) -> Claim:
    """Claim until the task `name` is handed out (the only one ready, in these tests)."""
    claim = await executor.claim("exec-1", wait_s=10)
    assert claim is not None
    assert claim.task.task == name, claim.task.task
    return claim


async def upload(
    executor: ExecutorClient, claim: Claim, files: dict[str, bytes], tmp_path: Path
) -> None:
    for name, data in files.items():
        source = tmp_path / "upload"
        source.write_bytes(data)
        await executor.upload_artifact(claim.lease, name, source, sha256=sha256(data))


async def get(service: Service, path: str, role: str = "executor") -> tuple[int, bytes]:
    response = await service.client.get(path, headers=service.auth(role))
    return response.status, await response.read()


async def test_the_claim_carries_inputs_resolved_from_the_run(
    service: Service, tmp_path: Path
) -> None:
    """The claim of a task with inputs names, per input, the paths it asks for and the
    producing tasks with their successful attempts: the task itself, or each item of a
    foreach task in item order."""
    config = {
        "tasks": [
            {"name": "checkout", "run": "x", "artifacts": ["src"]},
            {"name": "shard", "run": "x", "foreach": ["a", "b", "c"], "artifacts": ["out"]},
            {
                "name": "build",
                "run": "x",
                "depends": ["checkout", "shard"],
                "inputs": ["checkout", {"task": "shard", "paths": ["out/"]}],
            },
        ]
    }
    run = await create(service, config=config)
    async with executor_of(service) as executor:
        for _ in range(4):
            await caught_up(service)
            claim = await executor.claim("exec-1", wait_s=10)
            assert claim is not None
            assert claim.task.inputs == []
            await executor.complete(claim.lease, Completion(status="success", exit_code=0))
        await caught_up(service)
        claim = await claim_task(executor, "build")
    state = await service.app[SERVICE].load(run["id"])
    shard = [state.tasks[f"shard[{i}]"] for i in range(3)]
    assert claim.task.inputs == [
        TaskInput(
            task="checkout",
            paths=[],
            sources=[InputSource(task="checkout", task_id=state.tasks["checkout"].id, attempt=1)],
        ),
        TaskInput(
            task="shard",
            paths=["out"],
            sources=[InputSource(task=t.name, task_id=t.id, attempt=1) for t in shard],
        ),
    ]


async def producer_and_consumer(
    service: Service, executor: ExecutorClient, tmp_path: Path, *, retry: bool = False
) -> Claim:
    """A run whose `checkout` uploaded `src/hello.txt` and `docs/readme` and succeeded
    (after a failed attempt that uploaded other files, with `retry`), with `build`
    (inputs: checkout's src) claimed; returns build's claim."""
    config = {
        "tasks": [
            {
                "name": "checkout",
                "run": "x",
                "artifacts": ["src", "docs"],
                **({"retry": {"max_attempts": 2}} if retry else {}),
            },
            {
                "name": "build",
                "run": "x",
                "depends": ["checkout"],
                "inputs": [{"task": "checkout", "paths": ["src"]}],
            },
            {"name": "other", "run": "x", "depends": ["checkout"]},
        ]
    }
    await create(service, config=config)
    await caught_up(service)
    if retry:
        first = await claim_task(executor, "checkout")
        stale = {"src/hello.txt": b"from the failed attempt\n", "src/stale.txt": b"stale\n"}
        await upload(executor, first, stale, tmp_path)
        await executor.complete(first.lease, Completion(status="failed", exit_code=1))
        await caught_up(service)
    claim = await claim_task(executor, "checkout")
    files = {"src/hello.txt": b"hello\n", "docs/readme": b"read me\n"}
    await upload(executor, claim, files, tmp_path)
    await executor.complete(claim.lease, Completion(status="success", exit_code=0))
    await caught_up(service)
    build = await executor.claim("exec-1", wait_s=10)
    assert build is not None
    if build.task.task != "build":  # `other` came first: claim again
        build = await claim_task(executor, "build")
    return build


async def test_inputs_are_read_through_the_lease_of_their_attempt_only(
    service: Service, tmp_path: Path
) -> None:
    """The attempt holding build's lease lists and downloads checkout's `src` (with its
    size and checksum); not `docs`, which its input does not ask for (403). The lease of
    another task (403), an unknown lease (409), a reader's token (403) and the lease once
    its attempt has ended (409) read nothing."""
    async with executor_of(service) as executor:
        build = await producer_and_consumer(service, executor, tmp_path)
        checkout_id = build.task.inputs[0].sources[0].task_id
        listed = await executor.input_files(build.lease, checkout_id)
        assert listed.files == [
            InputFile(path="src/hello.txt", size=6, sha256=sha256(b"hello\n")),
        ]
        async with executor.download_input(build.lease, checkout_id, "src/hello.txt") as got:
            assert (got.size, got.sha256) == (6, sha256(b"hello\n"))
            assert b"".join([chunk async for chunk in got.chunks()]) == b"hello\n"

        def route(lease: str, path: str | None = None) -> str:
            if path is None:
                return input_path(INPUTS_PATH, lease, checkout_id)
            return input_path(INPUT_PATH, lease, checkout_id, path)

        assert (await get(service, route(build.lease, "docs/readme")))[0] == 403
        other = await claim_task(executor, "other")
        for path in (None, "src/hello.txt"):
            status, body = await get(service, route(other.lease, path))
            assert status == 403, body
            assert b"gives no input to this attempt" in body
            assert (await get(service, route("no-such-lease", path)))[0] == 409
            assert (await get(service, route(build.lease, path), role="reader"))[0] == 403
        await executor.complete(build.lease, Completion(status="success", exit_code=0))
        for path in (None, "src/hello.txt"):
            assert (await get(service, route(build.lease, path)))[0] == 409


async def test_inputs_are_the_successful_attempts_files_only(
    service: Service, tmp_path: Path
) -> None:
    """Every attempt uploads under the task's id: the reader's listing shows the file only
    the failed attempt uploaded beside the one the retry replaced. An input lists and
    downloads the successful attempt's alone: the replaced file with its new bytes, the
    stale file not at all (404)."""
    async with executor_of(service) as executor:
        build = await producer_and_consumer(service, executor, tmp_path, retry=True)
        checkout_id = build.task.inputs[0].sources[0].task_id
        assert build.task.inputs[0].sources[0].attempt == 2
        async with ApiClient(base_url(service), service.tokens["reader"], retry=FAST) as api:
            every = await RunsClient(api).artifacts(checkout_id)
        assert sorted(a.key for a in every.artifacts) == [
            "docs/readme",
            "src/hello.txt",
            "src/stale.txt",
        ]
        listed = await executor.input_files(build.lease, checkout_id)
        assert [(f.path, f.sha256) for f in listed.files] == [("src/hello.txt", sha256(b"hello\n"))]
        status, body = await get(
            service, input_path(INPUT_PATH, build.lease, checkout_id, "src/stale.txt")
        )
        assert status == 404
        assert b"uploaded no artifact 'src/stale.txt' when it succeeded" in body


async def test_an_upload_that_does_not_match_its_checksum_is_not_stored(
    service: Service, tmp_path: Path
) -> None:
    """An artifact whose bytes differ from the SHA-256 sent with them (a file that changed
    while it was read) is a 400 and leaves nothing stored, small or in parts; a
    malformed checksum is a 400 too. One that matches is stored with it."""
    await create(service, config={"tasks": [{"name": "build", "run": "x"}]})
    await caught_up(service)
    async with executor_of(service) as executor:
        claim = await claim_task(executor, "build")
        url = base_url(service) + f"/api/v1/executor/leases/{claim.lease}/artifacts/"
        headers = service.auth("executor")
        big = os.urandom(9 * 1024 * 1024)
        async with aiohttp.ClientSession(headers=headers) as session:
            for name, data in (("small.bin", b"small"), ("big.bin", big)):
                wrong = {SHA256_HEADER: sha256(data + b"!")}
                body = io.BytesIO(data)
                async with session.put(url + name, data=body, headers=wrong) as answer:
                    assert answer.status == 400, await answer.text()
                    assert "do not match" in (await answer.json())["message"]
            async with session.put(
                url + "bad.bin", data=b"x", headers={SHA256_HEADER: "nope"}
            ) as answer:
                assert answer.status == 400
        async with ApiClient(base_url(service), service.tokens["reader"], retry=FAST) as api:
            assert (await RunsClient(api).artifacts(claim.task.task_id)).artifacts == []
        source = tmp_path / "fine"
        source.write_bytes(b"fine")
        await executor.upload_artifact(claim.lease, "fine.bin", source, sha256=sha256(b"fine"))
        async with ApiClient(base_url(service), service.tokens["reader"], retry=FAST) as api:
            stored = (await RunsClient(api).artifacts(claim.task.task_id)).artifacts
        assert [a.key for a in stored] == ["fine.bin"]


@asynccontextmanager
async def agent_of(service: Service, tmp_path: Path) -> AsyncIterator[asyncio.Queue[str]]:
    """An agent in this process against the service; yields a queue of the tasks whose
    attempts it finished (completed and reported)."""
    ended: asyncio.Queue[str] = asyncio.Queue()

    def record(claim: Claim, end: AttemptEnd) -> None:
        assert end is AttemptEnd.COMPLETED, end
        ended.put_nowait(claim.task.task)

    settings = AgentConfig(
        name="exec-1",
        work_root=tmp_path / "agent",
        claim_wait_s=0.5,
        log_interval_s=0.05,
        kill_grace_s=1.0,
        inherited_env={"PATH": os.defpath},
    )
    async with ApiClient(base_url(service), service.tokens["executor"], retry=FAST) as api:
        agent = Agent(ExecutorClient(api), settings, on_attempt_end=record)
        running = asyncio.create_task(agent.run())
        try:
            yield ended
        finally:
            agent.shutdown()
            agent.shutdown()
            await asyncio.wait({running}, timeout=20)


async def test_an_agent_downloads_inputs_or_fails_naming_the_missing_path(
    service: Service, tmp_path: Path
) -> None:
    """`checkout` writes src/hello.txt and uploads it; `reads` (inputs: checkout) finds
    it in its work directory and succeeds; `wants_dist` (inputs: checkout's dist, never
    uploaded) fails before its command runs, its error naming the path and the task."""
    marker = tmp_path / "ran"
    config = {
        "tasks": [
            {
                "name": "checkout",
                "run": "mkdir src && echo hello > src/hello.txt",
                "artifacts": ["src"],
            },
            {
                "name": "reads",
                "depends": ["checkout"],
                "inputs": ["checkout"],
                "run": 'test "$(cat src/hello.txt)" = hello',
            },
            {
                "name": "wants_dist",
                "depends": ["checkout"],
                "inputs": [{"task": "checkout", "paths": ["dist"]}],
                "run": f"touch {marker}",
            },
        ]
    }
    run = await create(service, config=config)
    async with agent_of(service, tmp_path) as ended:
        async with asyncio.timeout(60):
            finished = {await ended.get() for _ in range(3)}
    assert finished == {"checkout", "reads", "wants_dist"}
    state = await service.app[SERVICE].load(run["id"])
    assert state.tasks["reads"].status == "success"
    failed = state.tasks["wants_dist"]
    assert failed.status == "failed"
    assert failed.error == (
        "input 'dist' of task 'checkout' is missing: 'checkout' uploaded no such artifact "
        "when it succeeded"
    )
    assert not marker.exists()


@pytest.mark.parametrize("paths", [None, ["src"]])
async def test_an_input_from_a_task_that_did_not_succeed(
    service: Service, tmp_path: Path, paths: list[str] | None
) -> None:
    """A task that runs after its producer failed (`on: [failure]`) takes nothing from
    it: with a bare name it runs (the log says so), with paths the attempt fails as
    missing."""
    entry: Any = "broken" if paths is None else {"task": "broken", "paths": paths}
    config = {
        "tasks": [
            {"name": "broken", "run": "mkdir src; echo x > src/x; exit 1", "artifacts": ["src"]},
            {
                "name": "report",
                "depends": [{"task": "broken", "on": ["failure"]}],
                "inputs": [entry],
                "run": "test ! -e src",
            },
        ]
    }
    run = await create(service, config=config)
    async with agent_of(service, tmp_path) as ended:
        async with asyncio.timeout(60):
            assert {await ended.get() for _ in range(2)} == {"broken", "report"}
    report = (await service.app[SERVICE].load(run["id"])).tasks["report"]
    if paths is None:
        assert report.status == "success"
    else:
        assert report.status == "failed"
        assert report.error == (
            "input 'src' of task 'broken' is missing: 'broken' did not succeed, so it has "
            "no artifacts to give"
        )


def test_an_input_is_never_placed_through_a_symlink(tmp_path: Path) -> None:
    """A directory component that is a symlink (to outside the work directory), a path
    that is not plain, or a file where a directory must go: refused, nothing written
    outside; a plain path gets its directories made."""
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "link").symlink_to(outside)
    (work / "file").write_text("x")
    source = InputSource(task="build", task_id="t", attempt=1)
    for path, problem in (
        ("link/x", "'link' is not a directory"),
        ("../x", "not a plain relative path"),
        ("file/x", "'file' is not a directory"),
    ):
        with pytest.raises(InputError, match=problem):
            _create(work, path, source, None)
    assert list(outside.iterdir()) == []
    os.close(_create(work, "a/b/c.txt", source, None))
    assert (work / "a" / "b" / "c.txt").is_file()
