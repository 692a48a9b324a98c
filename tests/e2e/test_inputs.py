"""End to end: files a task uploads as artifacts reach later tasks' work directories
through real `runsvc executor` processes, and a large input streams to disk without the
executor's memory growing with it."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.test_execution import finished, submit
from tests.fixtures.processes import Cluster, api

MiB = 1024 * 1024
BIG = 105 * MiB  # over 100 MB (and 100 MiB)
MEMORY_LIMIT = 100 * 1000 * 1000


def peak_rss(pid: int) -> int:
    """The process's peak resident set size so far (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for process {pid}")


async def test_files_flow_from_task_to_task(cluster: Cluster) -> None:
    """`checkout` writes src/hello.txt as an artifact; `build` (inputs: checkout) reads it
    and uploads dist/; `test` (inputs: build's dist) reads dist, and finds neither src
    nor build's other artifact, which it did not ask for. Each runs on another executor,
    so the files can only have come through the service."""
    for pool in ("a", "b", "c"):
        cluster.start_executor(pool, concurrency=1, labels={"pool": pool})
    config = {
        "tasks": [
            {
                "name": "checkout",
                "runs_on": {"pool": "a"},
                "run": "mkdir src && echo hello > src/hello.txt",
                "artifacts": ["src"],
            },
            {
                "name": "build",
                "runs_on": {"pool": "b"},
                "depends": ["checkout"],
                "inputs": ["checkout"],
                "run": "mkdir dist && sed s/hello/built/ src/hello.txt > dist/app.txt "
                "&& echo notes > notes.txt",
                "artifacts": ["dist", "notes.txt"],
            },
            {
                "name": "test",
                "runs_on": {"pool": "c"},
                "depends": ["build"],
                "inputs": [{"task": "build", "paths": ["dist"]}],
                "run": 'test "$(cat dist/app.txt)" = built && test ! -e src '
                "&& test ! -e notes.txt && echo tested",
            },
        ]
    }
    run = await submit(cluster, config)
    final = await finished(cluster, run["id"])
    tasks = final["tasks"]
    assert {name: task["status"] for name, task in tasks.items()} == dict.fromkeys(
        ("checkout", "build", "test"), "success"
    ), tasks
    status, log = await api(cluster, "GET", f"/api/v1/tasks/{tasks['test']['id']}/logs")
    assert status == 200
    assert log.decode() == "[runsvc] inputs: 1 file (6 bytes) from 'build'\ntested\n"


async def test_a_large_input_streams_without_the_executors_memory_growing(
    cluster: Cluster,
) -> None:
    """A 105 MiB artifact, made and uploaded on one executor, is downloaded by another
    into its task's work directory byte for byte (the task checks the SHA-256 its
    producer recorded as an output), and the downloading executor's peak resident set
    stays under 100 MB: the file went to disk in chunks, never whole in memory."""
    cluster.start_executor("maker", concurrency=1, labels={"pool": "maker"})
    reader = cluster.start_executor("reader", concurrency=1, labels={"pool": "reader"})
    config = {
        "tasks": [
            {
                "name": "make",
                "runs_on": {"pool": "maker"},
                "run": f"mkdir big && head -c {BIG} /dev/urandom > big/big.bin "
                '&& echo "sum=$(sha256sum big/big.bin | cut -d" " -f1)" >> "$RUNSVC_OUTPUT"',
                "artifacts": ["big"],
            },
            {
                "name": "use",
                "runs_on": {"pool": "reader"},
                "depends": ["make"],
                "inputs": [{"task": "make", "paths": ["big/big.bin"]}],
                "run": 'echo "${{ tasks.make.outputs.sum }}  big/big.bin" | sha256sum -c',
            },
        ]
    }
    run = await submit(cluster, config)
    final = await finished(cluster, run["id"], within=120)
    assert final["tasks"]["make"]["status"] == "success", final["tasks"]["make"]
    assert final["tasks"]["use"]["status"] == "success", final["tasks"]["use"]
    peak = peak_rss(reader.pid)
    print(f"downloading executor's peak RSS (VmHWM): {peak / MiB:.1f} MiB")
    assert peak < MEMORY_LIMIT
