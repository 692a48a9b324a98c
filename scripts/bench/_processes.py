"""What the benchmarks that run real `runsvc` processes share: a free port, waiting for a
server to answer, a whole service on embedded stores, and stopping everything they
started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from runsvc.infra.postgres import EmbeddedPostgres
from runsvc.infra.seaweed import EmbeddedSeaweed

ROOT = Path(__file__).resolve().parents[2]


def service_environment(
    dsn: str, seaweed: EmbeddedSeaweed, root: Path, **settings: str
) -> dict[str, str]:
    """The environment of a benchmarked `runsvc serve`: this process's without any
    RUNSVC_ variable, pointed at `dsn` and the started `seaweed` (with its keys), quiet,
    without a first admin token, plus `settings` (RUNSVC_* names)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSVC_")}
    env.update(
        RUNSVC_DATABASE_URL=dsn,
        RUNSVC_S3_ENDPOINT=seaweed.endpoint,
        RUNSVC_S3_ACCESS_KEY=seaweed.credentials.access_key,
        RUNSVC_S3_SECRET_KEY=seaweed.credentials.secret_key,
        RUNSVC_DATA_DIR=str(root / "data"),
        RUNSVC_BOOTSTRAP_ADMIN_TOKEN="false",
        RUNSVC_LOG_LEVEL="warning",
        **settings,
    )
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(url: str, path: str = "/readyz") -> None:
    """Until `url + path` answers 200 (a service may take a few seconds to migrate)."""
    async with aiohttp.ClientSession() as session, asyncio.timeout(120):
        while True:
            try:
                async with session.get(f"{url}{path}") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)


def stop_all(processes: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to each (to its whole process group when it leads one, as executors do, so
    their tasks go too), newest first; SIGKILL what has not ended 30 s later."""
    for process in reversed(processes):
        if process.poll() is None:
            if os.getpgid(process.pid) == process.pid:
                os.killpg(process.pid, signal.SIGTERM)
            else:
                process.terminate()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


@dataclass
class Served:
    """A `runsvc serve` on embedded stores: its URL, the database's DSN, and the processes
    started (the server first; a benchmark may add its own to be stopped with it)."""

    url: str
    dsn: str
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def served(root: Path, **settings: str) -> AsyncIterator[Served]:
    """An embedded PostgreSQL and SeaweedFS under `root` and a `runsvc serve` on them
    (with `settings`, RUNSVC_* names), its output in `root/serve.log`; ready when
    entered, everything stopped on exit."""
    postgres = EmbeddedPostgres(root / "pg")
    dsn = await asyncio.to_thread(postgres.start)
    seaweed = EmbeddedSeaweed(root / "s3")
    await seaweed.astart()
    port = free_port()
    service = Served(url=f"http://127.0.0.1:{port}", dsn=dsn)
    env = service_environment(dsn, seaweed, root, **settings)
    try:
        with (root / "serve.log").open("wb") as log:
            command = [sys.executable, "-m", "runsvc", "serve", "--port", str(port)]
            service.processes.append(
                subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
            )
        await wait_ready(service.url)
        yield service
    finally:
        stop_all(service.processes)
        await seaweed.astop()
        await asyncio.to_thread(postgres.stop)
