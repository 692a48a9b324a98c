"""The executor's token leaves its process's environment and command line by a
re-execution, its memory is closed to other processes while its tasks' is not, and an
executor running as root refuses a token file or a work directory that do not fit its
task user. Real processes, read through /proc."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.processes import ROOT

TOKEN = "rsv_0123456789ab_SecretPartOfTheToken"

# Resolves a token as `runsvc executor` does, re-executing when it is exposed, and reports
# what the re-executed image has and shows of itself.
REEXECUTE = """
import json, os, sys
from pathlib import Path
from runsvc.executor.credential import reexecute_without_token, resolve_token, take_handed_over
handed = take_handed_over(os.environ)
if handed is None:
    print(json.dumps({"image": "first", "pid": os.getpid()}), flush=True)
    found = resolve_token(
        argument=sys.argv[1] or None, file=None, environ=os.environ, stdin=sys.stdin
    )
    reexecute_without_token(found.value)
print(json.dumps({
    "image": "second",
    "pid": os.getpid(),
    "token": handed,
    "environ": Path("/proc/self/environ").read_bytes().decode(),
    "cmdline": Path("/proc/self/cmdline").read_bytes().decode(),
    "fds": sorted(int(fd) for fd in os.listdir("/proc/self/fd")),
    "variables": sorted(name for name in os.environ if name.startswith("RUNSVC_")),
}))
"""


def reexecuted(
    arguments: list[str], environment: dict[str, str]
) -> tuple[dict[str, object], dict[str, object]]:
    result = subprocess.run(
        [sys.executable, "-c", REEXECUTE, *arguments],
        cwd=ROOT,
        env={"PATH": os.defpath, **environment},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert TOKEN not in result.stderr
    return first, second


@pytest.mark.parametrize(
    ("arguments", "environment", "kept"),
    [
        (["", "--name=x"], {"RUNSVC_TOKEN": TOKEN}, "--name=x"),
        ([TOKEN, f"--token={TOKEN}"], {}, "--token=\0"),
    ],
    ids=["environment", "arguments"],
)
def test_an_exposed_token_is_handed_over_to_a_new_image(
    arguments: list[str], environment: dict[str, str], kept: str
) -> None:
    """A token in RUNSVC_TOKEN or on the command line (as a value, or after `=`): the
    same process (same pid) executes itself again, gets the token, and neither its
    environment nor its command line in /proc shows it any more; the pipe it came
    through is closed."""
    first, second = reexecuted(arguments, environment)
    assert (first["image"], second["image"]) == ("first", "second")
    assert first["pid"] == second["pid"]
    assert second["token"] == TOKEN
    assert "SecretPart" not in str(second["environ"])
    assert "SecretPart" not in str(second["cmdline"])
    assert kept in str(second["cmdline"])  # the other arguments as they were
    assert second["variables"] == []
    assert second["fds"] == [0, 1, 2, 3]  # the standard three and the listing's own


def test_a_token_from_a_file_needs_no_new_image(tmp_path: Path) -> None:
    """A token read from RUNSVC_TOKEN_FILE was never in the environment: no re-execution."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    code = (
        "import os, sys\n"
        "from runsvc.executor.credential import resolve_token\n"
        "found = resolve_token(argument=None, file=None, environ=os.environ, stdin=sys.stdin)\n"
        "print(found.exposed, found.file, found.value == sys.argv[1])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, TOKEN],
        cwd=ROOT,
        env={"PATH": os.defpath, "RUNSVC_TOKEN_FILE": str(token_file)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["False", str(token_file), "True"]


UNDUMPABLE = """
import ctypes, subprocess, sys
from runsvc.executor.hardening import make_undumpable
PR_GET_DUMPABLE = 3
libc = ctypes.CDLL(None)
before = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
made = make_undumpable()
after = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
child = subprocess.run(
    [sys.executable, "-c", "import ctypes; print(ctypes.CDLL(None).prctl(3, 0, 0, 0, 0))"],
    capture_output=True, text=True, check=True,
).stdout.strip()
print(before, made, after, child)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl is Linux's")
def test_the_executor_is_undumpable_and_what_it_starts_is_not() -> None:
    """After make_undumpable the process is not dumpable (its /proc files and memory
    closed to its user's other processes); a program it executes is dumpable again."""
    result = subprocess.run(
        [sys.executable, "-c", UNDUMPABLE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["1", "True", "0", "1"]


def executor(
    tmp_path: Path, *arguments: str, **environment: str
) -> subprocess.CompletedProcess[str]:
    """`runsvc executor` against a server that does not exist: what is checked before it
    connects decides the outcome."""
    server = "http://127.0.0.1:9"
    return subprocess.run(
        [sys.executable, "-m", "runsvc", "executor", "--server", server, *arguments],
        check=False,
        cwd=ROOT,
        env={"PATH": os.defpath, **environment},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="only root runs tasks as another user")


@root_only
def test_a_token_file_the_task_user_can_read_is_refused(open_dir: Path) -> None:
    """As root, with tasks running as nobody, a world-readable token file stops the start
    (exit 2) with a message that names the file, not the token."""
    token_file = open_dir / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    result = executor(
        open_dir, "--token-file", str(token_file), "--work-dir", str(open_dir / "work")
    )
    assert result.returncode == 2
    assert f"nobody, who can read the token file {token_file}" in result.stderr
    assert "SecretPart" not in result.stderr + result.stdout


@root_only
def test_a_work_dir_the_task_user_cannot_reach_is_refused(tmp_path: Path) -> None:
    """As root, with tasks running as nobody, a work directory under a private one stops
    the start (exit 2), naming the directory in the way."""
    blocked = executor(tmp_path, "--work-dir", str(tmp_path / "work"), RUNSVC_TOKEN=TOKEN)
    assert blocked.returncode == 2
    assert "tasks run as nobody, who may not enter" in blocked.stderr
    assert "SecretPart" not in blocked.stderr + blocked.stdout


@pytest.mark.parametrize("setting", ["no-such-user-here", "0"])
def test_task_user_errors_are_usage_errors(tmp_path: Path, setting: str) -> None:
    """An unknown task user, or (when not root) any other user, stops the start."""
    if setting == "0" and os.geteuid() == 0:
        pytest.skip("root may run tasks as root")
    result = executor(
        tmp_path, "--task-user", setting, "--work-dir", str(tmp_path / "w"), RUNSVC_TOKEN=TOKEN
    )
    assert result.returncode == 2
    assert "--task-user" in result.stderr
    assert "SecretPart" not in result.stderr
