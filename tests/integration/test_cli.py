"""`runsvc` client commands as people and scripts run them: separate processes against a
real `runsvc serve` and executor (one of each for the whole module), with the server and
token in the environment. Tables are read, `--format json` is parsed back, exit codes
are checked: 0 success, 1 the run failed or was stopped, 2 usage, 3 server, 4 not found.

Commands run as processes rather than in this one: `main` configures structlog for the
whole process, which would leak into every later test of the session.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from runsvc.cli import build_parser, main
from runsvc.infra.seaweed import EmbeddedSeaweed
from tests.fixtures.processes import ROOT, Cluster, cluster_of_its_own

WITHIN_S = 60


@dataclass(frozen=True)
class Outcome:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        return json.loads(self.stdout)

    def json_lines(self) -> list[Any]:
        return [json.loads(line) for line in self.stdout.splitlines()]


class Cli:
    """`runsvc` as a separate process: server and token from the environment, a config
    directory of its own, and no admin token to fall back on."""

    def __init__(self, cluster: Cluster, home: Path) -> None:
        self.cluster = cluster
        self.home = home

    def environment(self, **extra: str | None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("RUNSVC_") and k not in ("COLUMNS", "LINES")
        }
        env.update(
            RUNSVC_SERVER=self.cluster.url,
            RUNSVC_TOKEN=self.cluster.tokens["admin"],
            XDG_CONFIG_HOME=str(self.home / "config"),
            RUNSVC_DATA_DIR=str(self.home / "no-data-dir"),
        )
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    async def start(self, *args: str, **env: str | None) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runsvc",
            *args,
            cwd=ROOT,
            env=self.environment(**env),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def __call__(self, *args: str, **env: str | None) -> Outcome:
        process = await self.start(*args, **env)
        async with asyncio.timeout(WITHIN_S):
            out, err = await process.communicate()
        assert process.returncode is not None
        return Outcome(process.returncode, out.decode(), err.decode())


async def read_until(
    stream: asyncio.StreamReader | None, done: Callable[[str], bool], seen: list[str]
) -> str:
    """Lines of a process's output, appended to `seen`, up to the first for which `done`
    holds."""
    assert stream is not None
    async with asyncio.timeout(WITHIN_S):
        while True:
            line = (await stream.readline()).decode()
            assert line, f"output ended before the line waited for:\n{''.join(seen)}"
            seen.append(line)
            if done(line):
                return line


async def eventually(cli: Cli, holds: Callable[[Outcome], bool], *args: str) -> Outcome:
    """`runsvc *args` once `holds(outcome)`: `runs show` and `runs list` read projections,
    which trail the log (and so `watch` and `--wait`) by a moment."""
    async with asyncio.timeout(WITHIN_S):
        while not holds(outcome := await cli(*args)):
            pass
    return outcome


@pytest.fixture(scope="module")
def cli_cluster(
    postgres_server: str, seaweed: EmbeddedSeaweed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """One `runsvc serve` and one executor shared by a module's tests (each test makes
    runs of its own), on a database and bucket of their own."""
    with cluster_of_its_own(postgres_server, seaweed, tmp_path_factory.mktemp("cli")) as cluster:
        cluster.start_executor("cli", concurrency=4)
        yield cluster


@pytest.fixture(scope="module")
def cli(cli_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    """The command line pointed at the module's server with an admin token."""
    return Cli(cli_cluster, tmp_path_factory.mktemp("cli-home"))


def gated(group: str) -> str:
    """A bare config whose second task waits for an approval."""
    return f"""\
# {group}
tasks:
  - name: first
    run: echo first
  - name: gate
    depends: [first]
    approval: true
    run: echo "gate passed"
  - name: after
    depends: [gate]
    run: echo after
"""


async def submitted(cli: Cli, *args: str) -> dict[str, Any]:
    """The run a `submit ... --format json` created."""
    outcome = await cli("submit", *args, "--format", "json")
    assert outcome.code == 0, outcome.stderr
    run: dict[str, Any] = outcome.json()
    return run


# -- help and usage --------------------------------------------------------------------


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from _commands(child, (*path, name))


def test_help_lists_exit_codes_and_every_command_has_an_example(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`runsvc --help` documents the exit codes; every command that does something has
    `--help` with an example, and asking for help exits 0."""
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    for code in range(6):
        assert re.search(rf"^  {code}  \S", top, re.M), code
    leaves = [
        path
        for path, parser in _commands(build_parser())
        if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)
    ]
    assert {("submit",), ("watch",), ("logs",), ("runs", "list"), ("completion",)} <= set(leaves)
    for path in leaves:
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        assert "example" in text, path
        assert f"runsvc {path[0]}" in text, path


async def test_version_is_the_installed_distributions(cli: Cli) -> None:
    """`runsvc --version` prints the version the installed package's metadata holds."""
    outcome = await cli("--version")
    assert outcome.code == 0, outcome.stderr
    assert outcome.stdout == f"runsvc {importlib.metadata.version('runsvc')}\n"


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown command, a missing argument or a bad choice is a usage error (2)."""
    assert main(["frobnicate"]) == 2
    assert main(["runs", "show"]) == 2
    assert main(["runs", "list", "--phase", "sleeping"]) == 2
    assert main(["state", "some-run"]) == 2  # neither --at-version nor --at-position
    assert "invalid choice: 'sleeping'" in capsys.readouterr().err


async def test_bad_files_and_arguments_name_the_line_and_exit_2(cli: Cli, tmp_path: Path) -> None:
    """A YAML syntax error and a value of the wrong type are reported with file, line and
    path; a bare config without --group, a `--env` without `=` and a missing file are
    usage errors too: nothing reaches the server."""
    syntax = tmp_path / "syntax.yaml"
    syntax.write_text(
        "group: /cli/usage\nname: x\nconfig:\n  tasks:\n    - name: a\n      run: [x\n"
    )
    typed = tmp_path / "typed.yaml"
    typed.write_text(
        "tasks:\n  - name: a\n    run: echo a\n  - name: b\n    run: echo b\n    timeout: [1]\n"
    )
    outcomes = await asyncio.gather(
        cli("submit", str(syntax)),
        cli("submit", str(typed), "--group", "/cli/usage", "--name", "x"),
        cli("submit", str(typed)),
        cli("submit", "examples/fanout.yaml", "--env", "NOEQUALS"),
        cli("simulate", str(tmp_path / "missing.yaml")),
        cli("simulate", "examples/nightly.yaml", "--outcome", "transform=maybe"),
    )
    assert [o.code for o in outcomes] == [2] * 6, [o.stderr for o in outcomes]
    syntax_error, type_error, no_group, no_equals, missing, outcome = (o.stderr for o in outcomes)
    assert re.search(rf"^error: {re.escape(str(syntax))}:7: ", syntax_error, re.M)
    assert f"{typed}:6: tasks[1].timeout: Expected" in type_error
    assert "no group" in no_group
    assert "--group" in no_group
    assert "'NOEQUALS' is not KEY=VALUE" in no_equals
    assert "missing.yaml: No such file or directory" in missing
    assert "transform=maybe" in outcome
    for text in outcomes:
        assert "Traceback" not in text.stderr


# -- server and connection errors ------------------------------------------------------


async def test_refusals_print_the_server_message_with_the_documented_exit_code(
    cli: Cli, cli_cluster: Cluster, tmp_path: Path
) -> None:
    """A config with a cycle is refused (400, exit 2): the server's message is printed
    with the detail's path and the line of the file it points at. An unknown token and a
    role that may not submit exit 5; an unreachable server 3; a server that is not an
    http(s) URL is a usage error naming the flag."""
    cycle = tmp_path / "cycle.yaml"
    cycle.write_text(
        "group: /cli/refused\nname: cycle\nconfig:\n  tasks:\n"
        "    - name: a\n      run: echo a\n      depends: [b]\n"
        "    - name: b\n      run: echo b\n      depends: [a]\n"
    )
    reader = await cli(
        "token", "create", "--role", "reader", "--name", "cli-reader",
        "--database-url", cli_cluster.dsn,
    )  # fmt: skip
    assert reader.code == 0, reader.stderr
    outcomes = await asyncio.gather(
        cli("submit", str(cycle)),
        cli("simulate", str(cycle)),
        cli("runs", "list", RUNSVC_TOKEN="rsv_unknown_token"),
        cli("submit", "examples/fanout.yaml", RUNSVC_TOKEN=reader.stdout.strip()),
        cli("runs", "list", "--server", "http://127.0.0.1:9"),
        cli("runs", "list", "--server", "127.0.0.1:8080"),
        cli("simulate", "examples/ci.yaml", "--outcome", "tset=failure"),
    )
    assert [o.code for o in outcomes] == [2, 2, 5, 5, 3, 2, 2], [o.stderr for o in outcomes]
    submit, simulate, unknown, forbidden, unreachable, no_url, typo = (o.stderr for o in outcomes)
    for text in (submit, simulate):
        assert text.startswith("error: invalid run: cycle")
        # tasks[1] is b, whose `depends` is on line 10 of the file.
        assert f"{cycle}:10: config.tasks[1].depends: cycle" in text
    assert "error: " in unknown
    assert "RUNSVC_TOKEN" in unknown
    assert forbidden.startswith("error: ")
    assert "reader" in forbidden
    assert "http://127.0.0.1:9" in unreachable
    assert no_url.startswith("error: --server: '127.0.0.1:8080' is not an http(s) URL")
    # The task name came from the command line: no line of the file is to blame.
    assert "  --outcome: outcomes.tset: unknown task 'tset' (did you mean 'test'?)" in typo
    for text in outcomes:
        assert "Traceback" not in text.stderr


async def test_unknown_runs_and_tasks_exit_4(cli: Cli, tmp_path: Path) -> None:
    """Asking for a run or a task that does not exist exits 4 with the server's message."""
    config = tmp_path / "gated.yaml"
    config.write_text(gated("/cli/missing"))
    run = await submitted(cli, str(config), "--group", "/cli/missing", "--name", "m")
    nobody = "01M00000000000000000000000"
    outcomes = await asyncio.gather(
        cli("runs", "show", nobody),
        cli("history", nobody),
        cli("watch", nobody),
        cli("approve", nobody, "gate"),
        cli("logs", run["id"], "no-such-task"),
    )
    assert [o.code for o in outcomes] == [4] * 5, [o.stderr for o in outcomes]
    assert outcomes[0].stderr == f"error: no run {nobody}\n"
    assert "no task 'no-such-task'" in outcomes[4].stderr
    assert "gate" in outcomes[4].stderr
    assert (await cli("stop", run["id"])).code == 0


# -- the examples ----------------------------------------------------------------------


async def test_ci_example_waits_for_runsvc_approve_then_logs_history_and_audit(
    cli: Cli, tmp_path: Path
) -> None:
    """examples/ci.yaml with `--wait`: the deploy gate is approved with `runsvc approve`
    while the run is followed (and `logs --follow` waits for deploy to start); it exits 0.
    Then the commands a person uses afterwards:
    logs of finished tasks, history (table and JSON lines), runs show and list, state at
    an earlier version, verify and the event log, each read back. Its deploy credential
    is a secret, set first with `runsvc secrets set`."""
    token = tmp_path / "deploy-token"
    token.write_text("ci-example-deploy-token")
    secret = await cli("secrets", "set", "DEPLOY_TOKEN", "--group", "/acme", "--file", str(token))
    assert secret.code == 0, secret.stderr
    waiting = await cli.start("submit", "examples/ci.yaml", "--wait")
    seen: list[str] = []
    line = await read_until(waiting.stdout, lambda line: "deploy waiting_approval" in line, seen)
    assert "waiting for approval: Deploy 1.0.0+3f9c2e1 to production?" in line
    run_id = re.search(r"run (\w+) running", "".join(seen))[1]  # type: ignore[index]
    # Its output: none yet; followed, it waits for the task to start.
    not_yet = await cli("logs", run_id, "deploy")
    assert not_yet.code == 4
    assert "deploy has not run (waiting for approval: Deploy 1.0.0+3f9c2e1" in not_yet.stderr
    deploy_log = await cli.start("logs", run_id, "deploy", "--follow")
    await read_until(deploy_log.stderr, lambda line: "waiting for deploy to start" in line, [])
    approved = await cli("approve", run_id, "deploy", "--comment", "ship it")
    assert approved.code == 0
    assert approved.stdout == f"approved deploy of {run_id}\n"
    async with asyncio.timeout(WITHIN_S):
        rest, err = await waiting.communicate()
    assert waiting.returncode == 0, err.decode()
    lines = "".join(seen) + rest.decode()
    assert f"run {run_id} created: /acme/shop/main ci" in err.decode()
    for task in ("checkout", "build", "report", "deploy"):
        assert f" {task} success (attempt 1)" in lines
    assert " test[3] success (attempt 1, item 4)" in lines
    assert f"run {run_id} finished: success" in lines
    async with asyncio.timeout(WITHIN_S):
        followed, _ = await deploy_log.communicate()
    assert deploy_log.returncode == 0
    version = "1.0.0+3f9c2e1"
    # The executor says first which inputs it placed in the work directory.
    fetched = "[runsvc] inputs: 1 file ({} bytes) from 'build'\n"
    deployed = followed.decode()
    assert re.fullmatch(
        re.escape(fetched).replace(r"\{\}", r"\d+")
        + re.escape(f"deploying shop-{version}.tar.gz as {version} to production\n"),
        deployed,
    ), deployed

    (
        build,
        shard,
        history,
        history_json,
        state,
        verify,
        page,
    ) = await asyncio.gather(
        cli("logs", run_id, "build"),
        cli("logs", run_id, "test[2]", "--attempt", "1"),
        cli("history", run_id),
        cli("history", run_id, "--format", "json"),
        cli("state", run_id, "--at-version", "3", "--format", "json"),
        cli("verify", run_id),
        cli("events", "--run", run_id, "--limit", "4", "--format", "json"),
    )
    assert build.code == shard.code == 0
    repository = "https://git.example.com/acme/shop.git"
    assert build.stdout.endswith(f"building {version} from checked out {repository} at main\n")
    assert build.stdout.startswith("[runsvc] inputs: 2 files (")
    assert shard.stdout.endswith(f"\nrunning test shard 3 of 4 on shop-{version}.tar.gz\n")

    assert history.code == 0
    header, *rows = history.stdout.splitlines()
    assert header.split() == ["VERSION", "POSITION", "RECORDED", "ACTOR", "TYPE", "WHAT"]
    assert any("task_approved" in r and "task=deploy" in r and "user:" in r for r in rows)
    events = history_json.json_lines()
    assert [e["version"] for e in events] == list(range(1, len(rows) + 1))
    approval = next(e for e in events if e["type"] == "task_approved")
    assert approval["data"]["comment"] == "ship it"

    show_json = await eventually(
        cli, lambda o: o.json()["phase"] == "finished", "runs", "show", run_id, "--format", "json"
    )
    run = show_json.json()
    assert run["result"] == "success"
    assert run["tasks"]["deploy"]["approval_comment"] == "ship it"
    show = await cli("runs", "show", run_id)
    assert show.code == 0
    assert show.stdout.startswith(f"run {run_id}  /acme/shop/main ci #1\nphase finished")
    assert re.search(r"^deploy\s+success\s+1\b", show.stdout, re.M)
    listing = await eventually(
        cli, lambda o: run_id in o.stdout,
        "runs", "list", "--group", "/acme/shop", "--result", "success",
    )  # fmt: skip
    assert listing.stdout.splitlines()[0].split()[:3] == ["ID", "GROUP", "NAME"]
    as_json = await cli("runs", "list", "--group", "/acme/shop", "--format", "json")
    assert [(r["id"], r["phase"]) for r in as_json.json()["runs"]] == [(run_id, "finished")]
    assert state.json()["version"] == 3
    assert state.json()["phase"] == "running"
    assert verify.code == 0
    assert verify.stdout.startswith(f"ok: {len(events)} events")
    assert [e["version"] for e in page.json_lines()] == [1, 2, 3, 4]

    # Followed from 0, the event log first replays what is stored; then it waits for more.
    follower = await cli.start(
        "events", "--run", run_id, "--follow", "--after", "0", "--format", "json"
    )
    replayed: list[str] = []
    await read_until(follower.stdout, lambda _line: len(replayed) == len(events), replayed)
    assert [json.loads(e)["position"] for e in replayed] == [e["position"] for e in events]
    follower.terminate()
    await follower.wait()


async def test_nightly_example_retries_until_it_succeeds(cli: Cli) -> None:
    """examples/nightly.yaml with `--wait --format json`: the run's events as JSON lines,
    the flaky transform failing twice before it passes (the first attempt's output kept),
    the cleanup skipped; exit 0."""
    outcome = await cli("submit", "examples/nightly.yaml", "--wait", "--format", "json")
    assert outcome.code == 0, outcome.stderr
    events = outcome.json_lines()
    assert events[0]["type"] == "run_created"
    transform = [
        (e["data"]["status"], e["data"]["attempt"], e["data"]["error"])
        for e in events
        if e["type"] == "task_status_changed" and e["data"]["task"] == "transform"
    ]
    assert [t for t in transform if t[2] or t[0] == "success"] == [
        ("scheduled", 2, "attempt 1 failed: exit code 1"),
        ("scheduled", 3, "attempt 2 failed: exit code 1"),
        ("success", 3, None),
    ]
    assert events[-1]["data"]["phase"] == "finished"
    run_id = events[0]["data"]["run_id"]
    first = await cli("logs", run_id, "transform", "--attempt", "1")
    assert first.stdout.startswith("upstream timed out (attempt 1)\n")
    shown = await eventually(
        cli, lambda o: o.json()["phase"] == "finished", "runs", "show", run_id, "--format", "json"
    )
    run = shown.json()
    assert run["tasks"]["cleanup"]["status"] == "skipped"
    assert run["result"] == "success"


async def test_fanout_example_runs_every_partition(cli: Cli) -> None:
    """examples/fanout.yaml with `--wait`: every partition is processed, merged and
    published; the lines show each item, with its value, as it ends; exit 0."""
    outcome = await cli("submit", "examples/fanout.yaml", "--wait")
    assert outcome.code == 0, outcome.stdout + outcome.stderr
    regions = ["eu-west", "eu-north", "us-east", "us-west", "ap-south", "ap-east"]
    for index, region in enumerate(regions):
        assert f" process[{index}] success (attempt 1, item {region})" in outcome.stdout
    assert re.search(r"publish success \(attempt 1\)\n.*finished \(success\)", outcome.stdout)
    run_id = re.search(r"^run (\w+) created", outcome.stderr)[1]  # type: ignore[index]
    logs = await cli("logs", run_id, "process[3]")
    assert logs.stdout == "processing partition us-west\n"
    every = await cli("logs", run_id, "process")
    assert every.code == 0, every.stderr
    assert every.stdout == "\n".join(
        f"==> process[{index}] (item {region}) <==\nprocessing partition {region}\n"
        for index, region in enumerate(regions)
    )


async def test_matrix_example_plans_its_shards_and_gathers_their_counts(cli: Cli) -> None:
    """examples/matrix.yaml with `--wait`: `plan` decides four shards at run time, each
    reports a count, `report` prints them in shard order and `release` reads the
    version `plan` decided; `runs show` lists the outputs."""
    outcome = await cli("submit", "examples/matrix.yaml", "--wait")
    assert outcome.code == 0, outcome.stdout + outcome.stderr
    for index, shard in enumerate(["unit", "api", "ui", "e2e"]):
        assert f" test[{index}] success (attempt 1, item {shard})" in outcome.stdout
    run_id = re.search(r"^run (\w+) created", outcome.stderr)[1]  # type: ignore[index]
    report = await cli("logs", run_id, "report")
    assert report.stdout == 'passed per shard ["4","3","2","3"]\n'
    shown = await eventually(
        cli, lambda o: o.json()["phase"] == "finished", "runs", "show", run_id, "--format", "json"
    )
    tasks = shown.json()["tasks"]
    version = tasks["plan"]["outputs"]["version"]
    assert re.fullmatch(r"1\.4\.\d{8}", version)
    release = await cli("logs", run_id, "release")
    assert release.stdout == f"releasing {version}\n"


async def test_simulate_expands_what_outputs_would_plan(cli: Cli) -> None:
    """`simulate --output` expands the matrix example's shards from the given output (and
    gives each shard's count to its `fail_if`); without it, the fan-out is blocked on
    the output and says so."""
    given, missing = await asyncio.gather(
        cli("simulate", "examples/matrix.yaml", "--output", 'plan.shards=["a","b"]',
            "--output", "plan.version=1", "--output", "test.passed=3", "--format", "json"),
        cli("simulate", "examples/matrix.yaml", "--format", "json"),
    )  # fmt: skip
    assert given.code == missing.code == 0, given.stderr + missing.stderr
    planned = {t["name"]: t["status"] for t in given.json()["tasks"]}
    assert planned == {
        "plan": "would_run",
        "test": "would_run",
        "test[0]": "would_run",
        "test[1]": "would_run",
        "report": "would_run",
        "release": "would_run",
    }
    blocked = {t["name"]: t for t in missing.json()["tasks"]}
    assert missing.json()["result"] == "blocked"
    assert blocked["test"]["status"] == "blocked"
    assert blocked["test"]["reason"].startswith("foreach: tasks.plan.outputs.shards was never set")


# -- simulate, failures, stop and cancel --------------------------------------------------


async def test_simulate_shows_what_would_run(cli: Cli) -> None:
    """`simulate` of the nightly example with a failing transform: the table says load
    would be skipped and the cleanup would run; the JSON says the run would fail."""
    table, as_json = await asyncio.gather(
        cli("simulate", "examples/nightly.yaml", "--outcome", "transform=failure"),
        cli("simulate", "examples/nightly.yaml", "--outcome", "transform=failure", "--format",
            "json"),
    )  # fmt: skip
    assert table.code == as_json.code == 0
    assert table.stdout.splitlines()[0].split() == ["WAVE", "TASK", "WOULD", "WHY"]
    assert re.search(r"^-\s+load\s+skipped\s+transform ended failed", table.stdout, re.M)
    assert "the run would end: failed" in table.stdout
    result = as_json.json()
    assert result["result"] == "failed"
    assert {t["name"]: t["status"] for t in result["tasks"]}["cleanup"] == "would_run"


async def test_a_failed_run_exits_1_and_is_recreated_from_its_failures(
    cli: Cli, tmp_path: Path
) -> None:
    """A bare config whose task fails on its first run: `submit --wait` exits 1, prints
    the last 20 lines of its output under the summary and says where to read the rest;
    `recreate --from failed` makes a new run that `watch` follows to success (exit 0)."""
    marker = tmp_path / "failed-once"
    config = tmp_path / "flaky.json"
    config.write_text(
        json.dumps(
            {
                "tasks": [
                    {"name": "prepare", "run": "echo prepared"},
                    {
                        "name": "flaky",
                        "depends": ["prepare"],
                        "run": 'test -f "$MARKER" || { touch "$MARKER"; seq 30; '
                        "echo boom; exit 3; }",
                    },
                ]
            }
        )
    )
    failed = await cli(
        "submit", str(config), "--group", "/cli/failing", "--name", "flaky",
        "--env", f"MARKER={marker}", "--wait",
    )  # fmt: skip
    assert failed.code == 1, failed.stderr
    run_id = re.search(r"^run (\w+) created", failed.stderr)[1]  # type: ignore[index]
    assert f"run {run_id} finished: failed" in failed.stdout
    output = [*(str(n) for n in range(1, 31)), "boom", "[runsvc] attempt failed: exit code 3"]
    summary = failed.stdout[failed.stdout.index(f"run {run_id} finished: failed") :]
    assert summary.splitlines()[1:24] == [
        "  flaky failed: exit code 3",
        "    the last 20 lines of its output:",
        *(f"    {line}" for line in output[-20:]),
        f"  all of its output: runsvc logs {run_id} flaky",
    ]
    assert (await cli("logs", run_id, "flaky")).stdout == "\n".join(output) + "\n"

    recreated = await cli("recreate", run_id, "--from", "failed", "--format", "json")
    assert recreated.code == 0, recreated.stderr
    again = recreated.json()
    assert again["recreated_from"] == run_id
    assert again["id"] != run_id
    watched = await cli("watch", again["id"])
    assert watched.code == 0, watched.stdout
    assert "flaky success (attempt 1)" in watched.stdout


async def test_stop_cancel_and_idempotent_submit(cli: Cli, tmp_path: Path) -> None:
    """A run waiting for an approval holds its concurrency key, so a second run with the
    key queues: `cancel` ends the queued one and `stop` the running one, and `watch`
    exits 1 for both. A repeat submit with the same idempotency key returns the running
    run; stopping an ended run is refused (exit 3)."""
    config = tmp_path / "gated.yaml"
    document = "group: /cli/stop\nname: gated\nconcurrency_key: cli-stop\nconfig:\n" + "".join(
        f"  {line}\n" for line in gated("/cli/stop").splitlines()
    )
    config.write_text(document)
    first = await submitted(cli, str(config), "--idempotency-key", "nightly-2026-11-25")
    again = await cli("submit", str(config), "--idempotency-key", "nightly-2026-11-25")
    assert again.code == 0
    assert again.stdout.startswith(f"run {first['id']} exists already (same idempotency key)")
    queued = await submitted(cli, str(config))
    listing = await eventually(
        cli, lambda o: queued["id"] in o.stdout, "runs", "list", "--group", "/cli/stop",
        "--phase", "queued",
    )  # fmt: skip
    assert first["id"] not in listing.stdout

    # In this order: once the first run stops, the queued one would start.
    cancel = await cli("cancel", queued["id"], "--format", "json")
    stop = await cli("stop", first["id"])
    assert cancel.code == stop.code == 0, cancel.stderr + stop.stderr
    assert cancel.json() == {"run": queued["id"], "action": "cancel"}
    assert stop.stdout == f"stop requested for {first['id']}\n"
    stopped, cancelled = await asyncio.gather(cli("watch", first["id"]), cli("watch", queued["id"]))
    assert stopped.code == cancelled.code == 1
    assert f"run {first['id']} finished: stopped" in stopped.stdout
    assert f"run {queued['id']} cancelled" in cancelled.stdout
    refused = await cli("stop", first["id"])
    assert refused.code == 2  # a 409: the request does not fit the run any more
    assert refused.stderr.startswith("error: run ")


# -- login and completion --------------------------------------------------------------


async def test_login_saves_a_private_config_that_later_commands_use(
    cli: Cli, cli_cluster: Cluster
) -> None:
    """`runsvc login` writes server and token to $XDG_CONFIG_HOME/runsvc/config.json,
    readable by its owner only; commands then need neither flags nor environment, and a
    flag still wins over the file."""
    saved = await cli("login", "--server", cli_cluster.url, "--token", cli_cluster.tokens["admin"])
    assert saved.code == 0
    path = cli.home / "config" / "runsvc" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text())["server"] == cli_cluster.url
    try:
        listed = await cli(
            "runs", "list", "--format", "json", RUNSVC_SERVER=None, RUNSVC_TOKEN=None
        )
        assert listed.code == 0, listed.stderr
        assert "runs" in listed.json()
        elsewhere = await cli(
            "runs", "list", "--server", "http://127.0.0.1:9", RUNSVC_SERVER=None, RUNSVC_TOKEN=None
        )
        assert elsewhere.code == 3
    finally:
        path.unlink()


async def test_bash_completion_completes_commands_and_options(cli: Cli) -> None:
    """The bash script from `runsvc completion bash` completes commands, subcommands and
    a command's options."""
    script = await cli("completion", "bash")
    assert script.code == 0
    probe = (
        script.stdout
        + """
complete_line() {
    read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 )); _runsvc_complete; echo "${COMPREPLY[*]}"
}
complete_line "runsvc ru"
complete_line "runsvc runs "
complete_line "runsvc runs list --gr"
complete_line "runsvc submit --group /acme --idem"
"""
    )
    bash = await asyncio.create_subprocess_exec(
        "bash", "-c", probe, stdout=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, _ = await bash.communicate()
    assert out.decode().splitlines() == [
        "runs",
        "--help list show",
        "--group",
        "--idempotency-key",
    ]


async def test_tokens_are_created_listed_and_revoked_from_the_command_line(
    cli: Cli, cli_cluster: Cluster
) -> None:
    """`token create` with labels and an expiry prints the token once; `token list` shows
    it without its secret; `token revoke` revokes it (the server refuses it at once), says
    so again without error, and exits 4 for an unknown id."""
    database = ("--database-url", cli_cluster.dsn)
    created = await cli(
        "token", "create", "--role", "executor", "--name", "cli-farm",
        "--labels", "os=linux", "--expires-in", "30d", *database,
    )  # fmt: skip
    assert created.code == 0, created.stderr
    token = created.stdout.strip()
    token_id, secret = token.split("_", 2)[1:]
    listed = await cli("token", "list", *database)
    assert listed.code == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert row.split()[1:4] == ["cli-farm", "executor", "os=linux"]
    assert secret not in listed.stdout
    assert (await cli("runs", "list", RUNSVC_TOKEN=token)).code == 5  # an executor may not read
    revoked = await cli("token", "revoke", token_id, *database)
    assert (revoked.code, revoked.stdout) == (0, f"revoked {token_id}\n")
    refused = await cli("runs", "list", RUNSVC_TOKEN=token)
    assert refused.code == 5
    assert "unknown token" in refused.stderr
    again = await cli("token", "revoke", token_id, *database)
    assert (again.code, again.stdout) == (0, f"{token_id} was already revoked\n")
    missing = await cli("token", "revoke", "nope", *database)
    assert missing.code == 4
    # Where `runsvc serve` never ran, nothing is created and no useless token printed.
    nowhere = cli.home / "not-a-data-dir"
    stray = await cli("token", "create", "--role", "reader", "--data-dir", str(nowhere))
    assert (stray.code, stray.stdout) == (2, "")
    assert "no runsvc data directory" in stray.stderr
    assert not nowhere.exists()
    bad = await cli("token", "create", "--role", "reader", "--labels", "os=linux", *database)
    assert bad.code == 2
    assert "labels: only executor tokens have labels" in bad.stderr


# -- paging and filtering runs ---------------------------------------------------------


async def test_runs_list_pages_on_with_the_cursor_it_names(cli: Cli, tmp_path: Path) -> None:
    """A page that is not the last names `--cursor X`; the same listing with it prints the
    next page, which names none when it is the last."""
    config = tmp_path / "one.yaml"
    config.write_text("tasks:\n  - name: one\n    run: 'true'\n")
    made = [
        (await submitted(cli, str(config), "--group", "/cli/paging", "--name", f"r{n}"))["id"]
        for n in range(3)
    ]
    listing = ("runs", "list", "--group", "/cli/paging", "--limit", "2")
    first = await eventually(cli, lambda o: made[-1] in o.stdout, *listing)
    assert [line.split()[0] for line in first.stdout.splitlines()[1:3]] == made[:0:-1]
    hint = re.search(r"^\(more: .*--cursor (\S+)\)$", first.stdout, re.M)
    assert hint, first.stdout
    second = await cli(*listing, "--cursor", hint[1])
    assert second.code == 0, second.stderr
    rows = second.stdout.splitlines()
    assert [line.split()[0] for line in rows[1:]] == made[:1]
    assert "--cursor" not in second.stdout
    as_json = await cli(*listing, "--cursor", hint[1], "--format", "json")
    assert [r["id"] for r in as_json.json()["runs"]] == made[:1]
    bad = await cli(*listing, "--cursor", "not-a-cursor")
    assert bad.code == 2
    assert "cursor" in bad.stderr


async def test_runs_list_waiting_approval_lists_runs_held_at_a_gate(
    cli: Cli, tmp_path: Path
) -> None:
    """`runs list --waiting-approval` lists the runs a person has to approve something in,
    and no other; once approved, the run drops off the list."""
    gate, plain = tmp_path / "gated.yaml", tmp_path / "plain.yaml"
    gate.write_text(gated("/cli/waiting"))
    plain.write_text("tasks:\n  - name: one\n    run: 'true'\n")
    held = await submitted(cli, str(gate), "--group", "/cli/waiting", "--name", "held")
    free = await submitted(cli, str(plain), "--group", "/cli/waiting", "--name", "free")
    await eventually(
        cli, lambda o: free["id"] in o.stdout, "runs", "list", "--group", "/cli/waiting"
    )
    listing = ("runs", "list", "--group", "/cli/waiting", "--waiting-approval")
    waiting = await eventually(cli, lambda o: held["id"] in o.stdout, *listing)
    assert free["id"] not in waiting.stdout
    assert (await cli("approve", held["id"], "gate")).code == 0
    await eventually(cli, lambda o: held["id"] not in o.stdout, *listing)


# -- the event log followed --------------------------------------------------------------


async def test_events_follow_starts_at_the_end_of_the_log_unless_after_is_given(
    cli: Cli, tmp_path: Path
) -> None:
    """`events --follow` prints only what is written from then on, like `tail -f`: a run
    waiting for an approval has events, yet the first one printed is its approval."""
    config = tmp_path / "gated.yaml"
    config.write_text(gated("/cli/follow-head"))
    run = await submitted(cli, str(config), "--group", "/cli/follow-head", "--name", "gated")
    await eventually(
        cli, lambda o: o.json()["tasks"]["gate"]["status"] == "waiting_approval",
        "runs", "show", run["id"], "--format", "json",
    )  # fmt: skip
    history = (await cli("history", run["id"], "--format", "json")).json_lines()
    follower = await cli.start("events", "--run", run["id"], "--follow", "--format", "json")
    try:
        started = await read_until(follower.stderr, lambda line: "following" in line, [])
        head = int(re.search(r"after position (\d+)", started)[1])  # type: ignore[index]
        assert head >= history[-1]["position"]
        assert (await cli("approve", run["id"], "gate")).code == 0
        first = json.loads(await read_until(follower.stdout, lambda _line: True, []))
        assert first["type"] == "task_approved"
        assert first["position"] > head
    finally:
        follower.terminate()
        await follower.wait()


# -- what a run's tasks say --------------------------------------------------------------

EXPLAINED = """\
tasks:
  - name: prepare
    run: echo prepared
  - name: flaky
    depends: [prepare]
    run: echo boom; exit 3
  - name: after
    depends: [flaky]
    run: echo after
  - name: last
    depends: [after]
    run: echo last
  - name: shards
    foreach: [eu-west, us-east]
    run: echo "shard $RUNSVC_ITEM"
  - name: gate
    depends: [shards]
    approval: true
    run: echo gate
"""


async def test_watch_and_show_say_why_skipped_who_approved_when_and_each_item(
    cli: Cli, tmp_path: Path
) -> None:
    """A skip two steps below a failure names the failure that started it; an approval
    says who gave it, when and with what comment; a foreach child shows its item. In the
    lines of `submit --wait` and in `runs show`."""
    config = tmp_path / "explained.yaml"
    config.write_text(EXPLAINED)
    waiting = await cli.start(
        "submit", str(config), "--group", "/cli/explained", "--name", "e", "--wait"
    )
    seen: list[str] = []
    await read_until(waiting.stdout, lambda line: "gate waiting_approval" in line, seen)
    run_id = re.search(r"run (\w+) running", "".join(seen))[1]  # type: ignore[index]
    assert (await cli("approve", run_id, "gate", "--comment", "ship it")).code == 0
    async with asyncio.timeout(WITHIN_S):
        rest, err = await waiting.communicate()
    assert waiting.returncode == 1, err.decode()
    lines = "".join(seen) + rest.decode()
    assert " shards[0] success (attempt 1, item eu-west)" in lines
    assert " shards[1] success (attempt 1, item us-east)" in lines
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
    assert re.search(rf" gate approved by e2e-admin at {when}: \"ship it\"\n", lines)
    assert " after skipped (attempt 0) - flaky ended failed; needs success\n" in lines
    assert (
        " last skipped (attempt 0) - after ended skipped; needs success (because flaky failed)\n"
    ) in lines

    show = await eventually(
        cli, lambda o: "phase finished" in o.stdout, "runs", "show", run_id
    )  # fmt: skip
    assert show.stdout.splitlines()[4].split() == [
        "TASK", "ITEM", "STATUS", "ATTEMPT", "TOOK", "EXIT", "NOTE"
    ]  # fmt: skip
    assert re.search(r"^shards\[1\]\s+us-east\s+success\s+1\b", show.stdout, re.M)
    assert re.search(r"^last\s+skipped\s+0\s+-\s+after ended skipped; needs success "
                     r"\(because flaky failed\)$", show.stdout, re.M)  # fmt: skip
    assert re.search(rf"^gate approved by e2e-admin at {when}: \"ship it\"$", show.stdout, re.M)
    as_json = (await cli("runs", "show", run_id, "--format", "json")).json()
    assert as_json["tasks"]["gate"]["approved_at"] is not None
    assert as_json["tasks"]["shards[0]"]["item"] == "eu-west"


# -- logs of a foreach task --------------------------------------------------------------

SHARDS = """\
tasks:
  - name: gate
    approval: true
    run: echo gate
  - name: shards
    depends: [gate]
    foreach: [a, b, c]
    foreach_strategy: sequence
    run: echo "shard $RUNSVC_ITEM"; test "$RUNSVC_ITEM" != b
"""


async def test_logs_of_a_foreach_task_print_each_items_log_under_a_header(
    cli: Cli, tmp_path: Path
) -> None:
    """`logs RUN PARENT --follow` of a foreach task waits for it to fan out, then prints
    each item's output under a header, in order, and says which never ran; without
    --follow, once the run ended, the same."""
    config = tmp_path / "shards.yaml"
    config.write_text(SHARDS)
    run = await submitted(cli, str(config), "--group", "/cli/shard-logs", "--name", "s")
    follower = await cli.start("logs", run["id"], "shards", "--follow")
    await read_until(follower.stderr, lambda line: "waiting for shards to start" in line, [])
    assert (await cli("approve", run["id"], "gate")).code == 0
    async with asyncio.timeout(WITHIN_S):
        out, err = await follower.communicate()
    assert follower.returncode == 0, err.decode()
    expected = (
        "==> shards[0] (item a) <==\nshard a\n\n"
        "==> shards[1] (item b) <==\nshard b\n[runsvc] attempt failed: exit code 1\n\n"
        "==> shards[2] (item c) <==\n(shards[2] has not run (skipped): no output)\n"
    )
    assert out.decode() == expected
    assert (await cli("watch", run["id"])).code == 1
    again = await cli("logs", run["id"], "shards")
    assert (again.code, again.stdout) == (0, expected)


# -- artifacts ---------------------------------------------------------------------------

BUILT = """\
tasks:
  - name: build
    run: mkdir -p dist && echo 'app v1' > dist/app.txt && seq 100000 > dist/numbers.txt
    artifacts: [dist]
  - name: parts
    foreach: [a, b]
    run: echo "$RUNSVC_ITEM" > part.txt
    artifacts: [part.txt]
"""


async def test_artifacts_are_listed_and_downloaded(cli: Cli, tmp_path: Path) -> None:
    """`artifacts list` shows a task's files with their sizes (a foreach task's: each
    item's), filtered by a path prefix; `artifacts get` writes one to standard output, to
    a file or into a directory, whole; a missing path exits 4, a foreach task 2."""
    config = tmp_path / "built.yaml"
    config.write_text(BUILT)
    done = await cli("submit", str(config), "--group", "/cli/artifacts", "--name", "b", "--wait")
    assert done.code == 0, done.stdout + done.stderr
    run_id = re.search(r"^run (\w+) created", done.stderr)[1]  # type: ignore[index]
    numbers = "".join(f"{n}\n" for n in range(1, 100001)).encode()

    listed = await cli("artifacts", "list", run_id, "build")
    assert listed.code == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["PATH", "SIZE", "UPLOADED"]
    assert [row.split()[:3] for row in rows] == [
        ["dist/app.txt", "7", "B"],
        ["dist/numbers.txt", f"{len(numbers) / 1024:.1f}", "KiB"],
    ]
    only = await cli("artifacts", "list", run_id, "build", "dist/app", "--format", "json")
    assert [(a["task"], a["key"], a["size"]) for a in only.json()["artifacts"]] == [
        ("build", "dist/app.txt", 7)
    ]
    items = await cli("artifacts", "list", run_id, "parts")
    assert [row.split()[:2] for row in items.stdout.splitlines()] == [
        ["TASK", "PATH"], ["parts[0]", "part.txt"], ["parts[1]", "part.txt"],
    ]  # fmt: skip

    printed = await cli("artifacts", "get", run_id, "build", "dist/app.txt")
    assert (printed.code, printed.stdout) == (0, "app v1\n")
    into = tmp_path / "downloads"
    into.mkdir()
    saved = await cli("artifacts", "get", run_id, "build", "dist/numbers.txt", "-o", str(into))
    assert saved.code == 0, saved.stderr
    assert f"saved to {into / 'numbers.txt'}" in saved.stderr
    named = await cli(
        "artifacts", "get", run_id, "build", "dist/numbers.txt", "-o", str(into / "n.txt")
    )
    assert named.code == 0, named.stderr
    assert (into / "numbers.txt").read_bytes() == (into / "n.txt").read_bytes() == numbers
    assert sorted(p.name for p in into.iterdir()) == ["n.txt", "numbers.txt"]
    item = await cli("artifacts", "get", run_id, "parts[1]", "part.txt")
    assert (item.code, item.stdout) == (0, "b\n")

    missing = await cli("artifacts", "get", run_id, "build", "dist/nope.txt", "-o", str(into))
    assert missing.code == 4
    assert "nope.txt" in missing.stderr
    assert sorted(p.name for p in into.iterdir()) == ["n.txt", "numbers.txt"]
    parent = await cli("artifacts", "get", run_id, "parts", "part.txt")
    assert parent.code == 2
    assert "parts is a foreach task" in parent.stderr
    none = await cli("artifacts", "list", run_id, "build", "nothing/")
    assert (none.code, none.stdout) == (0, "")
    assert "build has no artifacts under 'nothing/'" in none.stderr


# -- schedules ---------------------------------------------------------------------------


async def test_schedules_from_the_example_file(cli: Cli) -> None:
    """`runsvc schedules create examples/nightly-schedule.yaml`: the nightly batch fires at
    02:30 in Berlin (00:30 or 01:30 UTC); triggered, its run goes through the executor;
    pause, resume and delete answer as a person expects."""
    created = await cli("schedules", "create", "examples/nightly-schedule.yaml", "--format", "json")
    assert created.code == 0, created.stderr
    schedule = created.json()
    assert schedule["cron"] == "30 2 * * *"
    assert schedule["timezone"] == "Europe/Berlin"
    next_fire = datetime.fromisoformat(schedule["next_fire_at"])
    assert (next_fire.hour, next_fire.minute) in ((0, 30), (1, 30))
    listed = await cli("schedules", "list", "--group", "/acme/warehouse")
    assert listed.code == 0, listed.stderr
    assert schedule["id"] in listed.stdout
    assert "30 2 * * * (Europe/Berlin)" in listed.stdout

    triggered = await cli("schedules", "trigger", schedule["id"])
    assert triggered.code == 0, triggered.stderr
    run_id = triggered.stdout.split()[1]
    watched = await cli("watch", run_id)
    assert watched.code == 0, watched.stdout + watched.stderr
    shown = await cli("schedules", "show", schedule["id"])
    assert f"run {run_id}  manual" in shown.stdout

    paused = await cli("schedules", "pause", schedule["id"])
    assert "next:     paused" in paused.stdout
    resumed = await cli("schedules", "resume", schedule["id"], "--format", "json")
    assert resumed.json()["paused"] is False
    deleted = await cli("schedules", "delete", schedule["id"])
    assert deleted.code == 0
    missing = await cli("schedules", "show", schedule["id"])
    assert missing.code == 4


async def test_a_bad_schedule_file_says_where(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: x\ngroup: /cli/bad\ncron: '0 25 * * *'\ntimezone: Nowhere/City\n"
        "run: {config: {tasks: [{name: a, run: 'true'}]}}\n"
    )
    outcome = await cli("schedules", "create", str(path))
    assert outcome.code == 2
    assert "timezone: unknown timezone" in outcome.stderr


# -- webhooks --------------------------------------------------------------------------


async def test_webhooks_commands_keep_the_secret_out_of_every_output(
    cli: Cli, tmp_path: Path
) -> None:
    """`webhooks create FILE --secret-file` creates a webhook whose receiver gets signed
    events; list, show, deliveries, resume and delete work by id; no secret means exit 2;
    the secret appears in no output."""
    from tests.webhook_receiver import Receiver

    secret = "cli-webhook-secret-3c1e9f0d7a"
    receiver = Receiver(secret)
    await receiver.start()
    try:
        hook_file = tmp_path / "hook.yaml"
        hook_file.write_text(f"url: {receiver.url}\ngroup: /cli/hooks\ntypes: [run_finished]\n")
        (tmp_path / "secret").write_text(secret + "\n")
        missing = await cli("webhooks", "create", str(hook_file))
        assert missing.code == 2
        assert "secret" in missing.stderr
        outputs = [missing]
        created = await cli(
            "webhooks", "create", str(hook_file), "--secret-file", str(tmp_path / "secret"),
            "--format", "json",
        )  # fmt: skip
        assert created.code == 0, created.stderr
        hook_id = created.json()["id"]
        (tmp_path / "run.yaml").write_text("tasks:\n  - name: a\n    run: 'true'\n")
        run = await submitted(
            cli, str(tmp_path / "run.yaml"), "--group", "/cli/hooks", "--name", "h"
        )
        await receiver.wait_for(lambda r: len(r.accepted) == 1)
        assert receiver.accepted[0].signed
        assert receiver.accepted[0].body["stream"] == f"run-{run['id']}"
        for args in (
            ("list",),
            ("show", hook_id),
            ("deliveries", hook_id),
            ("resume", hook_id),
            ("list", "--format", "json"),
        ):
            outcome = await cli("webhooks", *args)
            assert outcome.code == 0, (args, outcome.stderr)
            outputs.append(outcome)
        assert "delivered" in outputs[3].stdout
        assert hook_id in outputs[1].stdout
        deleted = await cli("webhooks", "delete", hook_id)
        assert deleted.code == 0, deleted.stderr
        gone = await cli("webhooks", "show", hook_id)
        assert gone.code == 4
        assert all(secret not in o.stdout + o.stderr for o in [*outputs, created, deleted, gone])
    finally:
        await receiver.stop()


# -- secrets ---------------------------------------------------------------------------


async def test_secrets_set_list_delete_and_rotate_key_while_serving(
    cli: Cli, cli_cluster: Cluster, tmp_path: Path
) -> None:
    """`secrets set` takes the value from a file (never an argument), `list` shows
    versions and never values, `delete` removes it; `rotate-key` puts a new key first in
    the server's key file and seals everything again while the server serves, and a run
    started afterwards gets the value (the server read the new key by itself), which its
    log shows as ***."""
    value = tmp_path / "value"
    value.write_text("cli-secret-value\n")
    assert (await cli("secrets", "set", "CLI_TOKEN", "value-as-argument")).code == 2
    for _ in range(2):
        done = await cli("secrets", "set", "CLI_TOKEN", "--group", "/cli/s", "--file", str(value))
        assert done.code == 0, done.stderr
    listed = await cli("secrets", "list", "--group", "/cli/s", "--format", "json")
    assert [(s["name"], s["version"]) for s in listed.json()["secrets"]] == [("CLI_TOKEN", 2)]
    table_ = await cli("secrets", "list")
    assert "CLI_TOKEN" in table_.stdout
    assert "cli-secret-value" not in table_.stdout + listed.stdout
    key_file = cli_cluster.root / "data" / "secrets.key"
    rotated = await cli(
        "secrets", "rotate-key", "--key-file", str(key_file), "--database-url", cli_cluster.dsn
    )
    assert rotated.code == 0, rotated.stderr
    assert "secrets sealed again under key" in rotated.stdout
    assert len([k for k in key_file.read_text().splitlines() if not k.startswith("#")]) == 2
    config = tmp_path / "uses.yaml"
    config.write_text(
        "tasks:\n  - name: use\n    env: {T: '${{ secrets.CLI_TOKEN }}'}\n"
        '    run: echo "token=$T"\n'
    )
    waited = await cli("submit", str(config), "--group", "/cli/s", "--name", "s", "--wait")
    assert waited.code == 0, waited.stderr
    run_id = re.search(r"run (\w+) created", waited.stderr)[1]  # type: ignore[index]
    log = await cli("logs", run_id, "use")
    assert log.stdout == "token=***\n"
    dropped = await cli(
        "secrets", "rotate-key", "--key-file", str(key_file), "--database-url", cli_cluster.dsn,
        "--reseal-only", "--drop-old",
    )  # fmt: skip
    assert dropped.code == 0, dropped.stderr
    assert len([k for k in key_file.read_text().splitlines() if not k.startswith("#")]) == 1
    gone = await cli("secrets", "delete", "CLI_TOKEN", "--group", "/cli/s")
    assert gone.code == 0, gone.stderr
    assert (await cli("secrets", "delete", "CLI_TOKEN", "--group", "/cli/s")).code == 4
