"""Attacks on what a local user or a task can reach (see docs/security.md once written)."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import aiohttp
import pytest

from runsvc.infra.objectstore import ObjectStoreConfig
from tests.e2e.test_execution import finished, submit
from tests.fixtures.processes import ROOT, Cluster, api


async def test_the_first_admin_token_is_never_in_the_log(
    database_dsn: str, object_store_config: ObjectStoreConfig, tmp_path: Path
) -> None:
    """`runsvc serve` with its output going to a file (not a terminal), on a database
    without tokens: the admin token it creates is in the data directory's 0600 file and
    works, and appears nowhere in what the process wrote."""
    cluster = Cluster(database_dsn, object_store_config, tmp_path)
    cluster.overrides["RUNSVC_BOOTSTRAP_ADMIN_TOKEN"] = "true"
    try:
        url = await cluster.start_server()
        token, mode = await asyncio.to_thread(token_file, tmp_path / "data" / "admin.token")
        assert mode == 0o600
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{url}/api/v1/runs") as response,
        ):
            assert response.status == 200
    finally:
        await asyncio.to_thread(cluster.stop_all)
    output = await asyncio.to_thread(server_output, tmp_path)
    assert b"admin token created" in output
    assert token.encode() not in output
    # rsv_<hex id>_<secret>; the secret itself may hold underscores.
    secret = token.split("_", 2)[2].encode()
    assert secret not in output


def token_file(path: Path) -> tuple[str, int]:
    return path.read_text().strip(), stat.S_IMODE(path.stat().st_mode)


def server_output(root: Path) -> bytes:
    return b"".join(log.read_bytes() for log in root.glob("server-*.log"))


# What a task that wants the executor's token tries, as a shell script would: the
# environment of its parent (the attempt's supervisor) and of every ancestor up to the
# executor (found by walking PPid), their command lines and memory; the token file; and a
# recursive grep through the executor's directories. It prints what it reads, so the
# token shows in its log if any of it works. (The walk stops at a command line holding
# HUNT_UNTIL, kept out of this script: the supervisor's command line holds the script.)
TOKEN_HUNT = r"""
echo "task uid $(id -u)"
echo "own environment: $(cat /proc/self/environ | tr '\0' '\n' | grep '^HUNT_MARKER=')"
"$HUNT_PYTHON" -c "$HUNT_SCAN" $$ self
echo "== parent $PPID"
cat /proc/$PPID/environ | tr '\0' '\n'
pid=$$
while [ "$pid" -gt 1 ]; do
    pid=$(awk '/^PPid:/ {print $2}' /proc/$pid/status)
    command=$(cat /proc/$pid/cmdline | tr '\0' ' ')
    printf '== ancestor %s: %s\n' "$pid" "$command"
    cat /proc/$pid/environ | tr '\0' '\n'
    "$HUNT_PYTHON" -c "$HUNT_SCAN" $pid ancestor
    case "$command" in *"$HUNT_UNTIL"*) break ;; esac
done
echo "== token file"
cat "$HUNT_TOKEN_FILE"
echo "== grep"
grep -r -a -o -E 'rsv_[-A-Za-z0-9_]+' $HUNT_PLACES
exit 0
"""

# Reads every readable mapping of a process through /proc/<pid>/mem (what a debugger
# does) and prints whatever looks like a token.
HUNT_SCAN = r"""
import re, sys
pid, label = sys.argv[1], sys.argv[2]
found = set()
try:
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            addresses, permissions = line.split()[:2]
            start, end = (int(address, 16) for address in addresses.split("-"))
            if not permissions.startswith("r") or end - start > 1 << 28:
                continue
            try:
                mem.seek(start)
                found.update(re.findall(rb"rsv_[-A-Za-z0-9_]+", mem.read(end - start)))
            except (OSError, OverflowError, ValueError):
                continue
    print(f"memory of {label} {pid}: read", *sorted(token.decode() for token in found))
except OSError as error:
    print(f"memory of {label} {pid}: {error}")
"""


def python_for(user: str | None, *modules: str) -> tuple[str, dict[str, str]] | None:
    """An interpreter that `user` can run and import `modules` with (this checkout and its
    virtual environment on PYTHONPATH), and that environment; None if there is none. The
    virtual environment's own interpreter may live under a home directory others cannot
    enter."""
    paths = sysconfig.get_paths()
    environment = {
        "PATH": os.defpath,
        "PYTHONPATH": os.pathsep.join([str(ROOT), paths["purelib"], paths["platlib"]]),
    }
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, shutil.which(version, path="/usr/local/bin:/usr/bin:/bin")]
    for candidate in candidates:
        if candidate is None:
            continue
        try:
            probe = subprocess.run(
                [candidate, "-c", "import " + ", ".join(("sys", *modules))],
                cwd=ROOT,
                env=environment,
                user=user,
                capture_output=True,
                check=False,
            )
        except PermissionError:  # not even executable for `user`
            continue
        if probe.returncode == 0:
            return candidate, environment
    return None


async def hunt_for_the_token(
    cluster: Cluster, executor: subprocess.Popen[bytes], task_user: str | None, **env: str
) -> str:
    """Run TOKEN_HUNT on `executor` (the only one running); its output, once it ended.
    Checks that the hunt did what it says, so that a token absent from the output means
    the token was out of reach, not that the hunt never looked."""
    hunter = python_for(task_user)
    if hunter is None:
        pytest.skip(f"no Python interpreter that {task_user} may run")
    task = {
        "name": "hunt",
        "run": TOKEN_HUNT,
        "env": {
            "HUNT_PYTHON": hunter[0],
            "HUNT_SCAN": HUNT_SCAN,
            "HUNT_MARKER": "mine",
            "HUNT_UNTIL": "runsvc executor",
            **env,
        },
    }
    run = await submit(cluster, {"tasks": [task]})
    final = await finished(cluster, run["id"])
    assert final["tasks"]["hunt"]["status"] == "success", final["tasks"]["hunt"]
    status, log = await api(cluster, "GET", f"/api/v1/tasks/{final['tasks']['hunt']['id']}/logs")
    assert status == 200
    output = log.decode(errors="replace")
    assert f"== ancestor {executor.pid}: " in output
    assert "own environment: HUNT_MARKER=mine" in output
    assert re.search(r"memory of self \d+: read", output), output
    return output


def assert_no_token(cluster: Cluster, output: str) -> None:
    token = cluster.tokens["executor"]
    secret = token.split("_", 2)[2]  # rsv_<id>_<secret>; the secret may hold "_" too
    assert token not in output
    assert secret not in output


@pytest.mark.parametrize("token_via", ["environment", "file", "stdin", "argument"])
async def test_a_task_cannot_find_its_executors_token(
    cluster: Cluster, open_dir: Path, token_via: str
) -> None:
    """An executor started as documented (its default task user; the token in
    RUNSVC_TOKEN, a file, standard input or an argument): a task that reads its parent's
    and its ancestors' environments, command lines and memory, the token file and the
    executor's directories finds the token nowhere. As root the task runs as nobody."""
    token_file = open_dir / "executor.token"
    executor = cluster.start_executor(
        "guarded",
        concurrency=1,
        task_user=None,
        work_dir=open_dir / "work",
        token_via=token_via,
        token_file=token_file,
    )
    places = f"{cluster.root} {open_dir}"
    output = await hunt_for_the_token(
        cluster,
        executor,
        "nobody" if os.geteuid() == 0 else None,
        HUNT_TOKEN_FILE=str(token_file),
        HUNT_PLACES=places,
    )
    assert_no_token(cluster, output)
    expected_uid = pwd.getpwnam("nobody").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert f"task uid {expected_uid}\n" in output


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the executor as another user")
@pytest.mark.parametrize("token_via", ["environment", "argument"])
async def test_a_task_of_an_unprivileged_executor_cannot_find_its_token(
    cluster: Cluster, open_dir: Path, token_via: str
) -> None:
    """The executor runs as nobody, so its tasks do too (same user: nothing but the
    executor itself keeps them from its /proc files): the hunt still finds no token."""
    interpreter = python_for("nobody", "runsvc.cli", "aiohttp", "msgspec", "structlog")
    if interpreter is None:
        pytest.skip("no Python interpreter that nobody may run with runsvc's dependencies")
    python, environment = interpreter
    nobody = pwd.getpwnam("nobody")
    os.chown(open_dir, nobody.pw_uid, nobody.pw_gid)
    executor = cluster.start_executor(
        "unprivileged",
        concurrency=1,
        task_user=None,
        work_dir=open_dir / "work",
        token_via=token_via,
        user="nobody",
        python=python,
        environment=environment,
    )
    output = await hunt_for_the_token(
        cluster,
        executor,
        "nobody",
        HUNT_TOKEN_FILE="/nonexistent",
        HUNT_PLACES=f"{open_dir}",
    )
    assert_no_token(cluster, output)
    assert f"task uid {nobody.pw_uid}\n" in output
