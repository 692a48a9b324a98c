"""A webhook receiver for tests: an aiohttp app on 127.0.0.1 that checks each delivery's
signature and records what arrived, answering as the test tells it (a status, or hanging
until released)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Arrival:
    position: int
    event_type: str
    body: dict[str, Any]
    raw: bytes
    signed: bool
    status: int


class Receiver:
    """Records every request; `answer(n)` gives the status of the n-th request (from 0),
    or None to hang until `release()`."""

    def __init__(self, secret: str, port: int = 0) -> None:
        self.secret = secret
        self.port = port
        self.arrivals: list[Arrival] = []
        self.answer: Callable[[int], int | None] = lambda _n: 200
        self._changed = asyncio.Condition()
        self._released = asyncio.Event()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    @property
    def accepted(self) -> list[Arrival]:
        return [a for a in self.arrivals if 200 <= a.status < 300]

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        server = site._server
        assert server is not None
        assert server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def release(self) -> None:
        self._released.set()

    async def wait_for(self, condition: Callable[[Receiver], bool]) -> None:
        """Until `condition(self)` holds after a request arrived (at most a minute)."""
        async with asyncio.timeout(60), self._changed:
            await self._changed.wait_for(lambda: condition(self))

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        expected = "sha256=" + hmac.new(self.secret.encode(), raw, hashlib.sha256).hexdigest()
        signed = hmac.compare_digest(expected, request.headers.get("X-Runsvc-Signature", ""))
        status = self.answer(len(self.arrivals))
        body = json.loads(raw)
        arrival = Arrival(
            position=int(request.headers["X-Runsvc-Delivery"]),
            event_type=request.headers["X-Runsvc-Event"],
            body=body,
            raw=raw,
            signed=signed and request.headers.get("Content-Type") == "application/json",
            status=status or 0,
        )
        async with self._changed:
            self.arrivals.append(arrival)
            self._changed.notify_all()
        if status is None:
            await self._released.wait()
            status = 200
        # A redirect names a place: a sender that followed it would be seen asking there.
        headers = {"Location": "/moved"} if 300 <= status < 400 else None
        return web.Response(status=status, text="ok", headers=headers)
