"""The JSON Schema of a run file (`runsvc schema`, docs/run-file.schema.json), for editors
and linters.

Its shape and descriptions come from the Structs a run file is decoded into
(`CreateRunRequest`, `RunConfig` and what they hold), so the schema cannot drift from them.
On top of the shape it states the rules of `runsvc.domain.validation` that a schema can
express, from the constants that validation itself checks: fixed words, name and duration
syntax, numeric ranges, non-empty lists. The rest (dependencies that exist, no cycles, one
of `run` and `command`, ...) only the server checks. The schema must not refuse a file the
server accepts; tests/unit/test_run_file_schema.py compares their verdicts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from runsvc.domain.config import DURATION_PATTERN, Dependency, RunConfig
from runsvc.domain.requests import CreateRunRequest
from runsvc.domain.validation import (
    CONDITIONS,
    ENV_NAME,
    FOREACH_STRATEGIES,
    MAX_ATTEMPTS,
    MAX_ENVIRONMENT,
    MAX_FACTOR,
    MAX_KEY,
    MAX_LOST,
    NAME,
    ON_LOST,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
Schema = dict[str, Any]


def run_file_schema() -> Schema:
    """A whole run document or a bare config, as `runsvc submit` reads either."""
    (document, bare), definitions = msgspec.json.schema_components(
        [CreateRunRequest, RunConfig], ref_template="#/$defs/{name}"
    )
    _add_validation_rules(definitions)
    # `runsvc submit --group G --name N` gives what the file leaves out.
    definitions["CreateRunRequest"]["required"] = ["config"]
    return {
        "$schema": DIALECT,
        "title": "runsvc run file",
        "description": "A run for `runsvc submit`: a whole run document (group, name, "
        "environment, ..., config) or a bare config (tasks and run-wide settings). "
        "See docs/run-file.md.",
        "anyOf": [document, bare],
        "$defs": definitions,
    }


def _add_validation_rules(definitions: Schema) -> None:
    def field(struct: str, name: str) -> Schema:
        found: Schema = definitions[struct]["properties"][name]
        return found

    duration = {"pattern": DURATION_PATTERN}
    positive = {"minimum": 1}
    for struct, name in (
        ("RunConfig", "timeout"),
        ("TaskConfig", "timeout"),
        ("TaskConfig", "progress_timeout"),
        ("Retry", "backoff"),
        ("Retry", "max_backoff"),
    ):
        _narrow(field(struct, name), "string", duration)
    for struct in ("RunConfig", "TaskConfig"):
        _narrow(field(struct, "max_parallel"), "integer", positive)
    _narrow(field("RunConfig", "tasks"), "array", {"minItems": 1})

    _narrow(field("TaskConfig", "name"), "string", {"pattern": NAME.pattern})
    _narrow(field("TaskConfig", "on_lost"), "string", {"enum": list(ON_LOST)})
    _narrow(field("TaskConfig", "max_lost"), "integer", {**positive, "maximum": MAX_LOST})
    _narrow(field("TaskConfig", "foreach"), "array", {"minItems": 1})
    _narrow(field("TaskConfig", "foreach_strategy"), "string", {"enum": list(FOREACH_STRATEGIES)})
    _narrow(field("TaskConfig", "command"), "array", {"minItems": 1})
    _narrow(field("TaskConfig", "env"), "object", _environment())

    on = field("Dependency", "on")
    on["items"] = {"enum": sorted(CONDITIONS)}
    on["minItems"] = 1
    # A default_factory is invisible to msgspec's schema; an editor should still show it.
    on["default"] = Dependency(task="").on

    _narrow(field("Retry", "max_attempts"), "integer", {**positive, "maximum": MAX_ATTEMPTS})
    _narrow(field("Retry", "factor"), "number", {"minimum": 1, "maximum": MAX_FACTOR})

    _narrow(field("CreateRunRequest", "name"), "string", {"pattern": NAME.pattern})
    for name in ("idempotency_key", "concurrency_key"):
        _narrow(field("CreateRunRequest", name), "string", {"minLength": 1, "maxLength": MAX_KEY})
    for name in ("static_environment", "environment"):
        _narrow(field("CreateRunRequest", name), "object", _environment())
    _narrow(
        field("CreateRunRequest", "annotations"),
        "object",
        {
            "maxProperties": MAX_ENVIRONMENT,
            "propertyNames": {"minLength": 1, "maxLength": MAX_KEY},
        },
    )


def _environment() -> Schema:
    return {"maxProperties": MAX_ENVIRONMENT, "propertyNames": {"pattern": ENV_NAME.pattern}}


def _narrow(schema: Schema, type_: str, rules: Schema) -> None:
    """Add `rules` where `schema` (or, in an `anyOf` such as `T | None`, its branch)
    has the JSON type `type_`."""
    branches = schema.get("anyOf", [schema])
    matching = [b for b in branches if b.get("type") == type_]
    if not matching:
        raise ValueError(f"no {type_} in {schema}: the Struct's type has changed")
    for branch in matching:
        branch.update(rules)
