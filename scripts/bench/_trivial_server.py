"""The API benchmark's baseline: one aiohttp handler that answers `GET /api/v1/runs/{id}`
with fixed bytes (a real run's JSON, read from a file), served as `runsvc serve` serves
the service (`web.run_app`, access log off) but with no middleware, auth or database.

    .venv/bin/python scripts/bench/_trivial_server.py --port 8081 --body run.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aiohttp import web


def create_app(body: bytes) -> web.Application:
    async def get_run(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(body=b'{"ok": true}', content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/runs/{id}", get_run)
    app.router.add_get("/healthz", healthz)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True, help="file whose bytes are served")
    arguments = parser.parse_args()
    web.run_app(
        create_app(arguments.body.read_bytes()),
        host=arguments.host,
        port=arguments.port,
        print=None,
        access_log=None,
    )
