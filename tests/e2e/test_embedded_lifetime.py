"""The embedded PostgreSQL and SeaweedFS never outlive the `runsvc serve` that started them:
not when it is killed (SIGKILL), not when its terminal closes (SIGHUP), not when its whole
process group gets SIGTERM (a terminal's or systemd's stop), and a server an owner left
behind is adopted by the next `serve`, which stops it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import ROOT, free_port, wait_ready

SERVERS = ("postgres", "weed")


def servers_on(data_dir: Path) -> dict[str, list[int]]:
    """The PostgreSQL postmasters and weed processes working on `data_dir`, by name."""
    found: dict[str, list[int]] = {name: [] for name in SERVERS}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        name = Path(argv[0].decode(errors="replace")).name
        if name in found and any(str(data_dir).encode() in arg for arg in argv[1:]):
            found[name].append(int(entry.name))
    return found


def wardens_of(data_dir: Path) -> list[int]:
    """The warden processes watching servers on `data_dir` (their last argument names the
    server's pid first)."""
    servers = {pid for pids in servers_on(data_dir).values() for pid in pids}
    wardens = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and b"stand down" in argv[-3]:
            spec = json.loads(argv[-2])
            if isinstance(spec, list) and spec[0] in servers:
                wardens.append(int(entry.name))
    return wardens


async def until_none_left(data_dir: Path) -> dict[str, list[int]]:
    """What is still running on `data_dir` once nothing is, or after 90 s."""
    for _ in range(900):
        left = servers_on(data_dir)
        if not any(left.values()):
            break
        await asyncio.sleep(0.1)
    return left


class Serve:
    """`runsvc serve` with its embedded servers in `data_dir`, leading a process group of
    its own (as a terminal or systemd would start it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.log = data_dir.parent / f"serve-{self.port}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNSVC_")}
        env.update(RUNSVC_DATA_DIR=str(data_dir), RUNSVC_LOG_FORMAT="json")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "runsvc", "serve", "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def ready(self) -> None:
        await wait_ready(f"http://127.0.0.1:{self.port}", self.process)

    async def ended(self) -> int:
        return await asyncio.to_thread(self.process.wait, 120)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGHUP", "SIGTERM to the process group"])
async def test_embedded_servers_end_with_their_owner(tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "data"
    serve = Serve(data_dir)
    try:
        await serve.ready()
        running = servers_on(data_dir)
        assert all(running[name] for name in SERVERS), running
        # As any pytest session starting meanwhile does: pytest's temporary root becomes
        # private again, so a stop that needs to reach the data directory as the
        # server's user (PostgreSQL runs as `embedded_postgres` under root) cannot.
        tmp_path.parent.parent.chmod(0o700)
        if how == "SIGKILL":
            serve.process.kill()
        elif how == "SIGHUP":
            serve.process.send_signal(signal.SIGHUP)
        else:
            os.killpg(serve.process.pid, signal.SIGTERM)
        code = await serve.ended()
        assert await until_none_left(data_dir) == {name: [] for name in SERVERS}
        if how != "SIGKILL":
            output = serve.log.read_text()
            assert code == 0, output
            assert "Traceback" not in output
            assert '"level": "error"' not in output
    finally:
        if serve.process.poll() is None:
            serve.process.kill()


async def test_a_server_left_behind_is_adopted_and_stopped(tmp_path: Path) -> None:
    """Without its warden (an owner from before wardens, or a warden killed too), a
    killed `serve` leaves its PostgreSQL running; the next `serve` on the directory takes
    it over instead of merely using it, and stops it when it stops."""
    data_dir = tmp_path / "data"
    first = Serve(data_dir)
    await first.ready()
    wardens = wardens_of(data_dir)
    assert len(wardens) == 2  # PostgreSQL's and weed's
    for warden in wardens:
        os.kill(warden, signal.SIGKILL)
    first.process.kill()
    await first.ended()
    orphans = servers_on(data_dir)["postgres"]
    assert orphans
    second = Serve(data_dir)
    try:
        await second.ready()
        assert servers_on(data_dir)["postgres"] == orphans  # adopted, not started anew
        second.process.send_signal(signal.SIGTERM)
        assert await second.ended() == 0
        assert await until_none_left(data_dir) == {name: [] for name in SERVERS}
    finally:
        if second.process.poll() is None:
            second.process.kill()
