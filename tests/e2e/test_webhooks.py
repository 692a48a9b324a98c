"""Webhooks delivered by real `runsvc serve` processes: across a restart with the receiver
down, and by two processes on one database (one delivers, the other takes over)."""

from __future__ import annotations

import asyncio
import itertools
import signal
from typing import Any

import aiohttp

from tests.fixtures.processes import Cluster, api, free_port
from tests.webhook_receiver import Receiver

SECRET = "whsec-e2e-7d41c0a9b2f8e356-never-logged"
RUN = {"group": "/acme/hooks", "name": "ci", "config": {"tasks": [{"name": "a", "run": "true"}]}}


async def some_events(cluster: Cluster, server: str | None = None) -> None:
    """A run created and stopped: a handful of events (no executor needed)."""
    base = server or cluster.url
    status, run = await api_at(cluster, base, "POST", "/api/v1/runs", json=RUN)
    assert status == 201, run
    status, _ = await api_at(cluster, base, "POST", f"/api/v1/runs/{run['id']}/stop")
    assert status == 204


async def api_at(cluster: Cluster, base: str, method: str, path: str, **kwargs: Any) -> Any:
    async with (
        aiohttp.ClientSession(headers=cluster.headers()) as session,
        session.request(method, base + path, **kwargs) as response,
    ):
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.read()


async def log_after(cluster: Cluster, after: int) -> list[dict[str, Any]]:
    status, page = await api(cluster, "GET", f"/api/v1/events?after={after}&limit=1000")
    assert status == 200
    return list(page["events"])


async def create(cluster: Cluster, url: str) -> dict[str, Any]:
    status, hook = await api(
        cluster, "POST", "/api/v1/webhooks", json={"url": url, "secret": SECRET, "types": ["all"]}
    )
    assert status == 201, hook
    return dict(hook)


async def until_attempted(cluster: Cluster, hook_id: str) -> None:
    """Until the webhook has recorded a failed attempt (the state is in the database)."""
    async with asyncio.timeout(60):
        while True:
            _, shown = await api(cluster, "GET", f"/api/v1/webhooks/{hook_id}")
            if shown["attempts"] >= 1:
                return
            await asyncio.sleep(0.05)


async def checkpointed(cluster: Cluster, hook_id: str, position: int) -> dict[str, Any]:
    """The webhook once its checkpoint reached `position` (it commits a moment after the
    receiver's 2xx)."""
    async with asyncio.timeout(60):
        while True:
            _, shown = await api(cluster, "GET", f"/api/v1/webhooks/{hook_id}")
            if shown["position"] >= position:
                return dict(shown)
            await asyncio.sleep(0.05)


def each_once_in_order(receiver: Receiver, log: list[dict[str, Any]]) -> None:
    assert all(a.signed for a in receiver.arrivals)
    accepted = receiver.accepted
    assert [a.position for a in accepted] == [e["position"] for e in log]
    assert [a.body for a in accepted] == log
    assert all(a < b for a, b in itertools.pairwise(a.position for a in accepted))


async def test_delivery_resumes_after_a_restart_with_the_receiver_down(cluster: Cluster) -> None:
    """Events delivered; the receiver goes down; more events; the service is stopped and
    started again; more events; the receiver comes back on its port: it gets every event
    after the webhook's start exactly once, in order. The secret is in no log line."""
    receiver = Receiver(SECRET, port=free_port())
    await receiver.start()
    hook = await create(cluster, receiver.url)
    await some_events(cluster)
    delivered = await log_after(cluster, hook["position"])
    await receiver.wait_for(lambda r: len(r.accepted) == len(delivered))
    await receiver.stop()
    await some_events(cluster)
    await until_attempted(cluster, hook["id"])
    process, url = cluster.servers[0]
    port = int(url.rsplit(":", 1)[1])
    process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(process.wait, 30)
    await cluster.start_server(port)
    await some_events(cluster)
    log = await log_after(cluster, hook["position"])
    await receiver.start()
    await receiver.wait_for(lambda r: len(r.accepted) == len(log))
    each_once_in_order(receiver, log)
    await receiver.stop()
    shown = await checkpointed(cluster, hook["id"], log[-1]["position"])
    assert shown["state"] == "active"
    logs = b"".join(p.read_bytes() for p in cluster.root.glob("server-*.log"))
    assert b"webhooks: delivering" in logs
    assert SECRET.encode() not in logs


async def test_two_processes_deliver_each_event_once_and_hand_over(cluster: Cluster) -> None:
    """Two servers on one database: one holds the webhook's lease and delivers every event,
    whichever server they were written through, once and in order; when it stops, it hands
    the lease over and the other delivers the rest, again once and in order."""
    second = await cluster.start_server()
    first = cluster.url
    receiver = Receiver(SECRET)
    await receiver.start()
    try:
        hook = await create(cluster, receiver.url)
        for server in (first, second, first, second):
            await some_events(cluster, server)
        log = await log_after(cluster, hook["position"])
        await receiver.wait_for(lambda r: len(r.accepted) == len(log))
        each_once_in_order(receiver, log)
        _, shown = await api(cluster, "GET", f"/api/v1/webhooks/{hook['id']}")
        owner = shown["lease"]["owner"]
        pids = {str(p.pid): (p, u) for p, u in cluster.servers}
        owner_pid = owner.split(":")[-2]
        assert owner_pid in pids
        holder, holder_url = pids[owner_pid]
        [(_, other_url)] = [(p, u) for p, u in cluster.servers if p is not holder]
        holder.send_signal(signal.SIGTERM)
        await asyncio.to_thread(holder.wait, 30)
        cluster.servers = [(p, u) for p, u in cluster.servers if p is not holder]
        for _ in range(2):
            await some_events(cluster, other_url)
        log = await log_after(cluster, hook["position"])
        await receiver.wait_for(lambda r: len(r.accepted) == len(log))
        each_once_in_order(receiver, log)
        _, shown = await api(cluster, "GET", f"/api/v1/webhooks/{hook['id']}")
        assert shown["lease"]["owner"] != owner
        assert shown["lease"]["owner"].split(":")[-2] == str(cluster.servers[0][0].pid)
        assert holder_url != other_url
    finally:
        await receiver.stop()
