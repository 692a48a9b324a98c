"""How long a short `runsvc` command takes, against the imports no client can do without,
through a real `runsvc serve` on embedded PostgreSQL and SeaweedFS.

    .venv/bin/python scripts/bench/cli_start.py [--repeat 20]

Each command runs `--repeat` times, interleaved with the baseline so that a busy machine
slows both alike; the measure is the median wall time of a whole process. The baseline is
`python -c "import aiohttp, msgspec"`: a client command cannot start faster than the
libraries it speaks HTTP and JSON with. Target: within 1.5x of it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path[0] = str(ROOT)
sys.path.append(str(HERE))

import asyncpg
from _processes import served
from _report import emit, note

from runsvc.service.auth import create_token

BASELINE = [sys.executable, "-c", "import aiohttp, msgspec"]
RUNSVC = str(Path(sys.executable).with_name("runsvc"))


def wall_time(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True)
    return time.perf_counter() - started


def compare(name: str, command: list[str], env: dict[str, str], repeat: int) -> None:
    wall_time(command, env)  # the first call pays for cold caches, not for runsvc
    ours, base = [], []
    for _ in range(repeat):
        ours.append(wall_time(command, env))
        base.append(wall_time(BASELINE, env))
    value, baseline = statistics.median(ours), statistics.median(base)
    note(f"{name}: median {value * 1000:.0f} ms, baseline {baseline * 1000:.0f} ms")
    emit(f"cli start: {name}", value * 1000, "ms", baseline=baseline * 1000, target="ratio<=1.5")


async def bench(args: argparse.Namespace, root: Path) -> None:
    async with served(root) as service:
        connection = await asyncpg.connect(service.dsn)
        token = (await create_token(connection, role="reader", name="bench")).token
        await connection.close()
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSVC_")}
        client_env.update(RUNSVC_SERVER=service.url, RUNSVC_TOKEN=token)
        compare("runsvc --help", [RUNSVC, "--help"], client_env, args.repeat)
        compare("runsvc runs list", [RUNSVC, "runs", "list"], client_env, args.repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="runsvc-bench-") as root:
        asyncio.run(bench(args, Path(root)))


if __name__ == "__main__":
    main()
