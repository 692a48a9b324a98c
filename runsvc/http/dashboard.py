"""The web dashboard: static files shipped inside the package (`runsvc/http/static/`),
served at `/ui/`, with `/` sending browsers there.

No token is needed to load the page: it holds no data. The page asks for a token and
sends it with every API call; the files are loaded once, at start, into memory (they are
small), each with its gzip form and an ETag. A strict Content-Security-Policy allows
only this origin's scripts, styles and connections, so nothing injected into a page
(a run's name, a log line) can run as script.
"""

from __future__ import annotations

import gzip
import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from runsvc.domain.errors import NotFound
from runsvc.http.routing import Endpoint
from runsvc.service.auth import Permission

ROOT = Path(__file__).parent / "static"
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on each load (cheap: an ETag), so an upgrade shows at once.
    "Cache-Control": "no-cache",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes
    content_type: str
    etag: str


def load_assets(root: Path = ROOT) -> dict[str, Asset]:
    """Every file under `root` by its path relative to it (`pages/runs.js`)."""
    assets = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in TYPES:
            continue
        body = path.read_bytes()
        assets[path.relative_to(root).as_posix()] = Asset(
            body=body,
            gzipped=gzip.compress(body, compresslevel=9, mtime=0),
            content_type=TYPES[path.suffix],
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        )
    return assets


ASSETS = load_assets()
"""Read once, when the server's modules load: a few small files."""


async def to_dashboard(_request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


async def serve_asset(request: web.Request) -> web.Response:
    # Only names found under the directory at start exist: no path reaches the disk.
    name = request.match_info.get("path") or "index.html"
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"no file {name!r} in the dashboard")
    headers = {**HEADERS, "ETag": asset.etag, "Vary": "Accept-Encoding"}
    if request.headers.get("If-None-Match") == asset.etag:
        return web.Response(status=304, headers=headers)
    body = asset.body
    if "gzip" in request.headers.get("Accept-Encoding", ""):
        body = asset.gzipped
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers={**headers, "Content-Type": asset.content_type})


ENDPOINTS = [
    Endpoint(
        "GET", "/", to_dashboard, Permission.OPEN, "The dashboard", "ui", responses={302: None}
    ),
    Endpoint(
        "GET",
        "/ui/",
        serve_asset,
        Permission.OPEN,
        "The dashboard's page",
        "ui",
        responses={200: None},
        response_content_type="text/html",
    ),
    Endpoint(
        "GET",
        "/ui/{path:.+}",
        serve_asset,
        Permission.OPEN,
        "A file of the dashboard",
        "ui",
        responses={200: None},
        response_content_type="text/javascript",
    ),
]
