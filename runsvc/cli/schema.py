"""`runsvc schema`: the JSON Schema of run files, for editors and linters (docs/run-file.md
says how to hook it up)."""

from __future__ import annotations

import argparse
from typing import Any

EXAMPLE = """\
example:
  runsvc schema > runsvc.schema.json

then, as the first line of a run file, for editors with the YAML language server:
  # yaml-language-server: $schema=runsvc.schema.json
"""


def register(commands: Any) -> None:
    parser = commands.add_parser(
        "schema",
        help="print the JSON Schema of run files",
        description="Print the JSON Schema of run files, made from the types the server "
        "reads them into.",
        epilog=EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Loaded when the command runs: every other command starts without building a schema.
    import json

    from runsvc.domain.run_file_schema import run_file_schema

    print(json.dumps(run_file_schema(), indent=2, ensure_ascii=False))
    return 0
