"""Work directories of executors that died are found by their released lock and removed;
those of live executors, and those kept on purpose, never are."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runsvc.executor.workdirs import AttemptDirectory, sweep_abandoned

_HOLD = """
import sys, time
from pathlib import Path
from runsvc.executor.workdirs import AttemptDirectory
AttemptDirectory(Path(sys.argv[1]))
print("holding", flush=True)
time.sleep(600)
"""


@pytest.fixture
def holders() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


def hold(path: Path, holders: list[subprocess.Popen[str]]) -> subprocess.Popen[str]:
    """Another process that owns `path` as an attempt directory until it is killed."""
    process = subprocess.Popen(
        [sys.executable, "-c", _HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    holders.append(process)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "holding"
    return process


def test_a_sweep_removes_only_directories_whose_owner_died(
    tmp_path: Path, holders: list[subprocess.Popen[str]]
) -> None:
    dead = hold(tmp_path / "dead-owner", holders)
    hold(tmp_path / "live-owner", holders)
    mine = AttemptDirectory(tmp_path / "this-process")
    (tmp_path / "dead-owner" / "work").mkdir()
    (tmp_path / "dead-owner" / "work" / "output.bin").write_bytes(b"x" * 1000)
    kept = AttemptDirectory(tmp_path / "kept")
    kept.release(remove=False)
    (tmp_path / "not-an-attempt").mkdir()

    dead.send_signal(signal.SIGKILL)
    dead.wait()
    removed = sweep_abandoned(tmp_path)

    assert removed == [tmp_path / "dead-owner"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kept",
        "live-owner",
        "not-an-attempt",
        "this-process",
    ]
    mine.release(remove=True)
    assert not (tmp_path / "this-process").exists()


def test_the_owner_lock_is_not_inherited_by_the_task(tmp_path: Path) -> None:
    """A task started from the executor must not keep the directory locked: the lock's
    file descriptor is closed on exec."""
    owned = AttemptDirectory(tmp_path / "attempt")
    descriptors = subprocess.run(
        ["ls", "-l", "/proc/self/fd/"], capture_output=True, text=True, check=True
    ).stdout
    assert ".owner" not in descriptors
    assert os.path.exists(tmp_path / "attempt" / ".owner")
    owned.release(remove=True)


def test_a_sweep_of_a_missing_root_finds_nothing(tmp_path: Path) -> None:
    assert sweep_abandoned(tmp_path / "never-created") == []
