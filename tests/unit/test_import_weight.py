"""The client side starts without the server's drivers: `import runsvc.client`, the wire
types and the CLI's client commands load neither asyncpg nor the S3 client (botocore,
aiobotocore), nor the event log or projections. Checked in a fresh interpreter, from
`sys.modules`, so an import added anywhere on the path shows up here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SERVER_ONLY = ("asyncpg", "botocore", "aiobotocore", "eventlog", "projections")


def loaded_by(code: str) -> list[str]:
    """Top-level packages among SERVER_ONLY that running `code` leaves in sys.modules."""
    report = f"{{m.split('.')[0] for m in sys.modules}} & {set(SERVER_ONLY)!r}"
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


def test_the_probe_sees_a_server_import() -> None:
    """The check above can fail: the composition root does load the drivers."""
    assert set(loaded_by("import runsvc.app")) >= {"asyncpg", "botocore", "eventlog"}
