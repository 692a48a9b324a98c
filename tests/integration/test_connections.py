"""Connections past what the process can hold: the oldest idle one makes room, a
newcomer among busy ones gets a 503, idle ones are closed after the keep-alive timeout,
and `/healthz` keeps answering throughout (issue: 21,000 idle connections exhausted the
descriptors and `/healthz` stopped answering)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from runsvc.app import create_app
from runsvc.http.keys import DATABASE
from runsvc.http.serving import ConnectionCap, listening
from runsvc.infra.objectstore import ObjectStoreConfig
from runsvc.service.auth import create_token
from tests.fixtures.processes import free_port
from tests.fixtures.service import service_settings

LIMIT = 8


class Listening:
    def __init__(self, url: str, cap: ConnectionCap, token: str) -> None:
        self.url, self.cap, self.token = url, cap, token


@pytest.fixture
async def listening_service(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> AsyncIterator[Listening]:
    port = free_port()
    settings = service_settings(
        database_dsn,
        tmp_path,
        object_store_config,
        port=port,
        max_connections=LIMIT,
        keepalive_timeout_s=1.0,
    )
    app = create_app(settings)
    async with listening(app, settings) as cap:
        issued = await create_token(app[DATABASE].pool, role="reader", name="viewer")
        yield Listening(f"http://127.0.0.1:{port}", cap, issued.token)


async def idle_connections(count: int, port: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writers.append(writer)
    return writers


async def accepted(cap: ConnectionCap, count: int) -> None:
    """Until the server has taken `count` connections (its accepts run on this loop)."""
    for _ in range(1000):  # 10 s at most
        if cap.open_connections >= count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server took {cap.open_connections} of {count} connections")


def port_of(service: Listening) -> int:
    return int(service.url.rsplit(":", 1)[1])


async def test_at_the_cap_the_oldest_idle_connection_makes_room(
    listening_service: Listening,
) -> None:
    idle = await idle_connections(LIMIT, port_of(listening_service))
    try:
        await accepted(listening_service.cap, LIMIT)
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{listening_service.url}/healthz") as response,
        ):
            assert response.status == 200
        assert listening_service.cap.evicted >= 1
        assert listening_service.cap.refused == 0
    finally:
        for writer in idle:
            writer.close()


async def test_a_newcomer_among_busy_connections_gets_a_503(listening_service: Listening) -> None:
    headers = {"Authorization": f"Bearer {listening_service.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        # Each subscription is a request in progress for as long as it lasts.
        sockets = [
            await session.ws_connect(f"{listening_service.url}/api/v1/events/ws")
            for _ in range(LIMIT)
        ]
        try:
            async with (
                aiohttp.ClientSession() as other,
                other.get(f"{listening_service.url}/healthz") as response,
            ):
                assert response.status == 503
                assert int(response.headers["Retry-After"]) > 0
                assert (await response.json())["code"] == "unavailable"
            assert listening_service.cap.refused == 1
        finally:
            for ws in sockets:
                await ws.close()


async def test_an_idle_connection_is_closed_after_the_keepalive_timeout(
    listening_service: Listening,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(listening_service))
    try:
        async with asyncio.timeout(20):  # catches a connection left open; 1 s expected
            assert await reader.read() == b""
    finally:
        writer.close()
