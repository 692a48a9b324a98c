"""What the benchmarks that run real `runsvc` processes share: a free port, waiting for a
server to answer, and stopping everything they started."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from runsvc.infra.seaweed import EmbeddedSeaweed


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
