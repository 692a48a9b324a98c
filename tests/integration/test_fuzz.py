"""Property-based fuzzing of the whole HTTP API from its own `/openapi.json`, with
schemathesis against a real `runsvc serve` process: no request, valid or not, gets a 5xx,
every 4xx carries docs/api.md's error body with the code its status stands for, and responses
match the document. Inputs the fuzzer found mishandled are kept as regression cases
below."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi import checks

from runsvc.infra.objectstore import ObjectStoreConfig
from tests.fixtures.processes import Cluster
from tests.fixtures.service import Service

# docs/api.md's error table, status -> code; 405 is aiohttp's wrong-method answer, mapped to
# the same body by the error middleware.
ERROR_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
}

# The websocket subscription is an upgrade, not a request/response exchange: there is
# nothing for an HTTP fuzzer to send it (test_subscriptions and test_roles cover it).
EXCLUDED_PATHS = frozenset({"/api/v1/events/ws"})

EXAMPLES_PER_OPERATION = 25

# Beyond the status and the error body: the document itself must hold. Responses have a
# documented status, content type and schema, and inputs the document calls invalid are
# refused. (Not `positive_data_acceptance`: the document gives shapes, not every rule,
# so a schema-valid body may still be an invalid run, e.g. a dependency cycle.)
DOCUMENT_CHECKS = [
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


class FuzzedCluster(Cluster):
    """The server with a short cap on a claim's long poll: a generated `wait` such as
    "5m" would otherwise hold each such request open for the default 60 s."""

    def environment(self, **extra: str) -> dict[str, str]:
        return super().environment(RUNSVC_MAX_CLAIM_WAIT_S="0.1", **extra)


@pytest.fixture
async def server(
    database_dsn: str, object_store_config: ObjectStoreConfig, tmp_path: Path
) -> AsyncIterator[FuzzedCluster]:
    """One `runsvc serve` process with an admin token."""
    running = FuzzedCluster(database_dsn, object_store_config, tmp_path)
    try:
        await running.start_server()
        yield running
    finally:
        await asyncio.to_thread(running.stop_all)


# aiohttp's HTTP parser answers a request line or header over its limits itself, in
# plain text, before the application (and its error middleware) sees the request. The
# fuzzer reaches that limit with long query strings now and then; it is not the API's
# answer, so it is told apart here by its exact wording.
PARSER_REFUSAL = "Got more than 8190 bytes"


def judge(status: int, body: Any, content_type: str) -> str | None:
    """What is wrong with a response, or None."""
    if status >= 500:
        return f"{status} {body!r}"
    if status < 400:
        return None
    if content_type != "application/json" or not isinstance(body, dict):
        return f"{status} without a JSON error body: {content_type} {body!r}"
    if body.get("code") != ERROR_CODES.get(status) or not body.get("message"):
        return f"{status} with {body!r}; expected code {ERROR_CODES.get(status)!r}"
    return None


def fuzz_operation(
    operation: schemathesis.APIOperation,
    mode: GenerationMode,
    *,
    url: str,
    headers: dict[str, str],
    failures: dict[str, str],
    statuses: Counter[int],
) -> None:
    """Feed one operation generated inputs; count the statuses and record a curl command
    per distinct failure."""

    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        derandomize=True,
        database=None,
        deadline=None,
        # Failures are collected rather than raised, so there is nothing to shrink.
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    # The token as a fixed header: schemathesis then neither drops nor mangles it in its
    # invalid cases, and knows the request carried it.
    @given(case=operation.as_strategy(generation_mode=mode, headers=headers))
    def check(case: schemathesis.Case) -> None:
        response = case.call(base_url=url, timeout=30)
        statuses[response.status_code] += 1
        content_type = response.headers.get("content-type", [""])[0].split(";")[0]
        if response.status_code == 400 and response.text.startswith(PARSER_REFUSAL):
            return
        try:
            body = response.json()
        except ValueError:
            body = response.text
        problems = [judge(response.status_code, body, content_type)]
        try:
            case.validate_response(response, checks=DOCUMENT_CHECKS)
        except FailureGroup as group:
            problems += [f"{failure.title}: {failure.message}" for failure in group.exceptions]
        for problem in problems:
            if problem is not None:
                key = f"{operation.label} ({mode}): {problem}"
                failures.setdefault(key, case.as_curl_command())

    try:
        check()
    except Unsatisfiable:
        # An operation without parameters or body has no invalid input to generate.
        if mode is GenerationMode.POSITIVE:
            raise


def fuzz(url: str, headers: dict[str, str]) -> tuple[Counter[int], list[str]]:
    """Every operation of the document, fed valid and invalid inputs: how often each
    status came back, and a line per distinct failure."""
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=schemathesis.Config())
    failures: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path not in EXCLUDED_PATHS:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                fuzz_operation(
                    operation,
                    mode,
                    url=url,
                    headers=headers,
                    failures=failures,
                    statuses=statuses,
                )
    return statuses, [f"{problem}\n    {curl}" for problem, curl in failures.items()]


def server_errors(root: Path) -> list[str]:
    """Lines of the server's log that report an unexpected error."""
    return [
        line
        for log in root.glob("server-*.log")
        for line in log.read_text(errors="replace").splitlines()
        if "unexpected error" in line
    ]


async def test_fuzzed_requests_get_no_5xx_and_proper_error_bodies(
    server: FuzzedCluster, tmp_path: Path
) -> None:
    """schemathesis generates valid and invalid requests for every operation of
    `/openapi.json` (the websocket aside), with an admin token, derandomized so a failure
    reproduces: none is answered with a 5xx, every 4xx has a JSON body whose `code` is the
    one docs/api.md gives its status and a message, and the server logs no unexpected error."""
    statuses, failures = await asyncio.to_thread(fuzz, server.url, server.headers("admin"))
    assert not failures, "\n".join(failures)
    assert not server_errors(tmp_path)
    # The token was sent with every request (an admin is never refused), and many inputs
    # got past validation to the handlers' work.
    assert statuses[401] == statuses[403] == 0
    assert sum(n for status, n in statuses.items() if status != 400) > 100
    assert statuses[200] > 0
    assert statuses[204] > 0


UPGRADE = {
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}
RUN = {"group": "/g", "name": "n", "config": {"tasks": [{"name": "a", "run": "true"}]}}

# What the fuzzer found answered with a 500 (driver errors on out-of-range numbers and on
# NUL, which PostgreSQL text cannot hold), a 503 (a task id that is no object key taken for
# the object store being down), or a silently dropped repeat of a parameter: (method,
# path, JSON body, role, status, the problem's path or None).
FOUND: list[tuple[str, str, Any, str, int, str | None]] = [
    ("GET", "/api/v1/tasks/t/logs?attempt=-32123052743", None, "reader", 400, "query.attempt"),
    ("GET", "/api/v1/tasks/t/logs?attempt=2147483648", None, "reader", 400, "query.attempt"),
    ("GET", "/api/v1/events?after=14386382351610138624", None, "reader", 400, "query.after"),
    ("GET", "/api/v1/events/ws?after=9223372036854775808", None, "reader", 400, "query.after"),
    ("GET", "/api/v1/tasks/%16x/artifacts", None, "reader", 404, None),
    ("GET", "/api/v1/tasks/%16x/artifacts/a.txt", None, "reader", 404, None),
    ("GET", "/api/v1/runs/%00", None, "reader", 400, None),
    ("POST", "/api/v1/runs/%00/stop", None, "submitter", 400, None),
    ("POST", "/api/v1/executor/leases/%00/heartbeat", None, "executor", 400, None),
    ("GET", "/api/v1/runs?phase=%00", None, "reader", 400, "query.phase"),
    (
        "POST",
        "/api/v1/executor/leases/no-such-lease/complete",
        {"status": "success", "exit_code": 4575875668233412665956859117568},
        "executor",
        400,
        "exit_code",
    ),
    # A misspelt phase or result is refused, not answered with an empty page.
    ("GET", "/api/v1/runs?phase=runing", None, "reader", 400, "query.phase"),
    ("GET", "/api/v1/runs?result=sucess", None, "reader", 400, "query.result"),
    ("GET", "/api/v1/events?run=r%00", None, "reader", 400, "query.run"),
    # The token as a websocket may pass it: refused before it reaches the tokens table.
    ("GET", "/api/v1/events/ws?token=rsv_%00_x", None, "", 400, "query.token"),
    (
        "POST",
        "/api/v1/executor/claim",
        {"executor": "e", "labels": {"os": "linux\u0000"}, "wait": "0s"},
        "executor",
        400,
        "labels.os",
    ),
    (
        "POST",
        "/api/v1/runs",
        {**RUN, "annotations": {"a": "\u0000"}},
        "admin",
        400,
        "annotations.a",
    ),
    ("POST", "/api/v1/runs", {**RUN, "idempotency_key": "\u0000"}, "admin", 400, "idempotency_key"),
    ("GET", "/api/v1/events?types=a&types=b", None, "reader", 400, "query.types"),
]


async def test_inputs_the_fuzzer_found(service: Service) -> None:
    """Each input the fuzzer once saw mishandled is answered with a 4xx and the error
    body naming what is wrong; a NUL escaped in JSON (`\\u0000` spelled out) is text like
    any other."""
    for method, path, body, role, status, problem_path in FOUND:
        headers = service.auth(role) if role else {}
        if "/ws" in path:
            headers.update(UPGRADE)
        response = await service.client.request(method, path, json=body, headers=headers)
        assert response.status == status, (method, path, await response.text())
        error = await response.json()
        assert error["code"] == ERROR_CODES[status], (method, path, error)
        if problem_path is not None:
            assert [d["path"] for d in error["details"]] == [problem_path], (path, error)
    escaped = {**RUN, "annotations": {"a": "\\u0000"}}
    response = await service.client.post("/api/v1/runs", json=escaped, headers=service.auth())
    assert response.status == 201, await response.text()
    assert (await response.json())["annotations"] == {"a": "\\u0000"}
