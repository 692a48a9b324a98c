"""Attacks on what a local user or a task can reach (see docs/security.md once written)."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import aiohttp

from runsvc.infra.objectstore import ObjectStoreConfig
from tests.fixtures.processes import Cluster


async def test_the_first_admin_token_is_never_in_the_log(
    database_dsn: str, object_store_config: ObjectStoreConfig, tmp_path: Path
) -> None:
    """`runsvc serve` with its output going to a file (not a terminal), on a database
    without tokens: the admin token it creates is in the data directory's 0600 file and
    works, and appears nowhere in what the process wrote."""
    cluster = Cluster(database_dsn, object_store_config, tmp_path)
    cluster.overrides["RUNSVC_BOOTSTRAP_ADMIN_TOKEN"] = "true"
    try:
        url = await cluster.start_server()
        token, mode = await asyncio.to_thread(token_file, tmp_path / "data" / "admin.token")
        assert mode == 0o600
        headers = {"Authorization": f"Bearer {token}"}
        async with (
            aiohttp.ClientSession(headers=headers) as session,
            session.get(f"{url}/api/v1/runs") as response,
        ):
            assert response.status == 200
    finally:
        await asyncio.to_thread(cluster.stop_all)
    output = await asyncio.to_thread(server_output, tmp_path)
    assert b"admin token created" in output
    assert token.encode() not in output
    secret = token.rsplit("_", 1)[1].encode()
    assert secret not in output


def token_file(path: Path) -> tuple[str, int]:
    return path.read_text().strip(), stat.S_IMODE(path.stat().st_mode)


def server_output(root: Path) -> bytes:
    return b"".join(log.read_bytes() for log in root.glob("server-*.log"))
