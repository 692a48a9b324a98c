"""Run files as `runsvc submit` and `runsvc simulate` read them: a whole run document
(group, name, environment, ..., config: the shape of docs/api.md's create request) or a bare
config (the tasks and run-wide settings alone), in YAML or JSON.

Every complaint names the file and line: the client's own checks through `Document`, and
the server's validation details, whose paths (`config.tasks[1].depends`) are looked up in
the file they came from.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import msgspec

from runsvc.cli.connection import UsageError
from runsvc.cli.documents import Document, DocumentError
from runsvc.client import ApiError, BadRequestError
from runsvc.domain.config import RunConfig
from runsvc.domain.requests import CreateRunRequest, Outcome, SimulationRequest
from runsvc.wire.api import Problem

OUTCOMES: tuple[str, ...] = typing.get_args(Outcome)


def pairs(values: list[str], what: str) -> dict[str, str]:
    """`K=V` arguments as a mapping; a UsageError for one without `=`."""
    found = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} {value!r} is not KEY=VALUE")
        found[key] = rest
    return found


def task_outputs(values: list[str]) -> dict[str, dict[str, str]]:
    """`TASK.KEY=VALUE` arguments (`--output`) by task and key. An output key has no
    dot, so a task named `v1.2` is `v1.2.key=…`."""
    found: dict[str, dict[str, str]] = {}
    for value in values:
        target, sep, rest = value.partition("=")
        task, dot, key = target.rpartition(".")
        if not sep or not dot or not task or not key:
            raise UsageError(f"--output {value!r} is not TASK.KEY=VALUE")
        found.setdefault(task, {})[key] = rest
    return found


class RunFile:
    """A parsed run file: a whole run document, or a bare config (no `config` key)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.document = Document.read(path)
        data = self.document.data
        if not isinstance(data, dict):
            raise DocumentError(self.document.where(""), "expected a mapping at the top")
        self.data: dict[str, Any] = data
        self.bare = "config" not in data
        # Request paths whose values came from the command line, and the flag each came
        # from: a refusal of one names the flag, not a line of the file.
        self.from_flags: dict[str, str] = {}

    def create_request(
        self,
        *,
        group: str | None = None,
        name: str | None = None,
        environment: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> CreateRunRequest:
        """The create request: the file's fields, overridden by the command line's."""
        fields: dict[str, Any] = {} if self.bare else {**self.data}
        if group is not None:
            fields["group"] = group
        if name is not None:
            fields["name"] = name
        if environment:
            fields["environment"] = {**fields.get("environment", {}), **environment}
            self.from_flags.update({f"environment.{key}": "--env" for key in environment})
        self.from_flags.update(
            {f: f"--{f.replace('_', '-')}" for f, v in (("group", group), ("name", name)) if v}
        )
        if idempotency_key is not None:
            fields["idempotency_key"] = idempotency_key
        for field in ("group", "name"):
            if field not in fields:
                raise UsageError(f"{self.path}: no {field} in the file; give --{field}")
        if self.bare:
            # Decoded alone so that errors point into the file; the rest came from flags.
            return CreateRunRequest(config=self.document.decode(RunConfig), **fields)
        self.document.data = fields
        return self.document.decode(CreateRunRequest)

    def simulation_request(
        self,
        *,
        environment: dict[str, str],
        outcomes: dict[str, str],
        outputs: dict[str, dict[str, str]] | None = None,
    ) -> SimulationRequest:
        for task, outcome in outcomes.items():
            if outcome not in OUTCOMES:
                raise UsageError(f"--outcome {task}={outcome}: one of {', '.join(OUTCOMES)}")
        outputs = outputs or {}
        self.from_flags.update({f"outcomes.{task}": "--outcome" for task in outcomes})
        self.from_flags.update({f"outcomes.{task}": "--output" for task in outputs})
        self.from_flags.update({f"environment.{key}": "--env" for key in environment})
        given: dict[str, Any] = {**outcomes}
        for task, written in outputs.items():
            given[task] = {"status": outcomes.get(task, "success"), "outputs": written}
        if self.bare:
            return msgspec.convert(
                {
                    "config": self.document.decode(RunConfig),
                    "environment": environment,
                    "outcomes": given,
                },
                SimulationRequest,
            )
        self.document.data = {
            "config": self.data["config"],
            "environment": {**self.data.get("environment", {}), **environment},
            "static_environment": self.data.get("static_environment", {}),
            "outcomes": given,
            "group": self.data.get("group", "/"),
        }
        return self.document.decode(SimulationRequest)

    def located(self, error: ApiError) -> ApiError:
        """The server's refusal with each detail's path prefixed by its place in the file
        (`ci.yaml:14: config.tasks[1].depends`)."""
        if not isinstance(error, BadRequestError) or not error.details:
            return error
        details = []
        for detail in error.details:
            path = detail.path
            if self.bare and (path == "config" or path.startswith("config.")):
                path = path.removeprefix("config").removeprefix(".")
            where = self.from_flags.get(detail.path) or self.document.where(path)
            details.append(Problem(path=f"{where}: {detail.path}", message=detail.message))
        return BadRequestError(error.status, error.code, error.message, details)
