"""`/openapi.json`, generated from the endpoint declarations and their msgspec types, so
the document cannot drift from the code."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import msgspec
from aiohttp import web

from runsvc.http.routing import Endpoint, json_response
from runsvc.service.auth import Permission
from runsvc.wire.api import ErrorBody

_PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
_REF = "#/components/schemas/{name}"
_ERRORS = {
    400: "Bad request: malformed JSON, wrong types, invalid values, unknown fields",
    401: "Missing or unknown token",
    403: "The token's role may not do this",
    404: "No such resource",
    409: "The action does not fit the current state",
    413: "Body over the configured limit",
    500: "Internal server error (the cause is logged, never sent)",
}


def build_document(endpoints: Sequence[Endpoint], *, version: str) -> dict[str, Any]:
    types: list[Any] = [ErrorBody]
    for endpoint in endpoints:
        types += [t for t in (endpoint.body, endpoint.query) if t is not None]
        types += [t for t in endpoint.responses.values() if t is not None]
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))

    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        path = _PARAM.sub(lambda m: "{" + m.group(1) + "}", endpoint.path)
        operation: dict[str, Any] = {
            "summary": endpoint.summary,
            "operationId": endpoint.handler.__name__,
            "tags": [endpoint.tag],
            "parameters": [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in _PARAM.findall(endpoint.path)
            ],
            "responses": {},
        }
        if endpoint.query is not None:
            operation["parameters"] += _query_parameters(by_type[endpoint.query], components)
        if endpoint.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {endpoint.body_content_type: {"schema": by_type[endpoint.body]}},
            }
        for status, response_type in endpoint.responses.items():
            response: dict[str, Any] = {"description": _describe(status)}
            if response_type is not None:
                response["content"] = {
                    endpoint.response_content_type: {"schema": by_type[response_type]}
                }
            operation["responses"][str(status)] = response
        for status, description in _ERRORS.items():
            if status in (401, 403) and endpoint.permission is Permission.OPEN:
                continue
            operation["responses"].setdefault(
                str(status),
                {
                    "description": description,
                    "content": {"application/json": {"schema": by_type[ErrorBody]}},
                },
            )
        if endpoint.permission is not Permission.OPEN:
            operation["security"] = [{"bearer": []}]
        paths.setdefault(path, {})[endpoint.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": "runsvc", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _describe(status: int) -> str:
    return {200: "OK", 201: "Created", 204: "No content", 101: "Switching protocols"}.get(
        status, "Response"
    )


def _query_parameters(schema: dict[str, Any], components: dict[str, Any]) -> list[dict[str, Any]]:
    ref = schema.get("$ref", "")
    component = components[ref.rsplit("/", 1)[-1]] if ref else schema
    required = set(component.get("required", []))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _absent(prop)}
        for name, prop in component.get("properties", {}).items()
    ]


def _absent(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter cannot be null, only absent: `T | None = None` is documented as
    an optional T (fuzzers otherwise take any text for a valid spelling of null)."""
    alternatives = schema.get("anyOf", [])
    present = [a for a in alternatives if a != {"type": "null"}]
    if len(present) != 1 or len(present) == len(alternatives):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf" and not (k == "default" and v is None)}
    return {**present[0], **rest}


OPENAPI = web.AppKey("openapi", dict)


async def openapi_handler(request: web.Request) -> web.Response:
    return json_response(request.app[OPENAPI])
