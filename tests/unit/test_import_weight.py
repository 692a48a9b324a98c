"""The client side starts without the server's drivers: `import runsvc.client`, the wire
types and the CLI's client commands load neither asyncpg nor the S3 client (botocore,
aiobotocore), nor the event log or projections. Short commands load nothing they do not
use either (structlog, PyYAML, the executor agent): each costs a client call's start time
(scripts/bench/cli_start.py measures it). Checked in a fresh interpreter, from
`sys.modules`, so an import added anywhere on the path shows up here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_ONLY = ("asyncpg", "botocore", "aiobotocore", "eventlog", "projections")
# What a command that only talks HTTP and prints a table needs not load.
NOT_FOR_SHORT_COMMANDS = ("structlog", "yaml", "runsvc.executor", "runsvc.infra.logs")


def loaded_by(code: str, watched: tuple[str, ...] = SERVER_ONLY) -> list[str]:
    """Modules among `watched` (packages, or modules with their submodules) that running
    `code` leaves in sys.modules."""
    report = f"{{w for w in {watched!r} for m in sys.modules if m == w or m.startswith(w + '.')}}"
    probe = f"import sys, json\n{code}\nprint(json.dumps(sorted({report})))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    loaded: list[str] = json.loads(result.stdout.strip().splitlines()[-1])
    return loaded


@pytest.mark.parametrize(
    "module", ["runsvc.client", "runsvc.wire.api", "runsvc.wire.executor", "runsvc.executor"]
)
def test_client_modules_load_no_server_driver(module: str) -> None:
    """Importing a client-side module loads nothing only the server needs."""
    assert loaded_by(f"import {module}") == []


@pytest.mark.parametrize(
    "argv",
    [
        ["runs", "list", "--server", "http://127.0.0.1:9", "--token", "rsv_x"],
        ["events", "--server", "http://127.0.0.1:9", "--token", "rsv_x"],
        ["submit", "--help"],
        ["schema"],
    ],
)
def test_client_commands_load_no_server_driver(argv: list[str]) -> None:
    """A client command, run to its end (here: no server answers), loads nothing only the
    server needs; `serve` and the local commands load it when they run."""
    code = f"from runsvc.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert loaded_by(code) == []


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["runs", "list", "--server", "http://127.0.0.1:9", "--token", "rsv_x"],
        ["runs", "show", "x", "--server", "http://127.0.0.1:9", "--token", "rsv_x"],
    ],
)
def test_short_commands_load_only_what_they_use(argv: list[str]) -> None:
    code = f"from runsvc.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass"
    assert loaded_by(code, NOT_FOR_SHORT_COMMANDS) == []


def test_the_probe_sees_a_lazy_import() -> None:
    """The check above can fail: reading a run file loads PyYAML, the executor loads its
    agent and logging."""
    code = "from runsvc.cli.documents import Document\nDocument('a: 1', 'a.yaml')"
    assert loaded_by(code, NOT_FOR_SHORT_COMMANDS) == ["yaml"]
    assert set(loaded_by("import runsvc.cli.executing", NOT_FOR_SHORT_COMMANDS)) >= {
        "structlog",
        "runsvc.executor",
    }


def test_the_probe_sees_a_server_import() -> None:
    """The check above can fail: the composition root does load the drivers."""
    assert set(loaded_by("import runsvc.app")) >= {"asyncpg", "botocore", "eventlog"}
