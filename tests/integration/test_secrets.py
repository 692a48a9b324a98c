"""Secrets against the real service: the admin-only API, sealing at rest, what a claim
hands the executor (and nothing else shows), the most specific group, a missing secret,
a process given the wrong keys, and a key rotation while runs claim their secrets."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import msgspec
import pytest
from aiohttp.test_utils import TestServer

from runsvc.app import create_app
from runsvc.domain.events import TaskStatusChanged, stream_of
from runsvc.http.keys import DATABASE, SECRETS, STORE
from runsvc.infra.sealing import (
    KeyRing,
    KeyRingError,
    key_id,
    load_ring,
    new_key,
    parse_keys,
    write_key_file,
)
from runsvc.infra.settings import Settings
from runsvc.service.secrets import reseal
from tests.fixtures.service import Service, start_service
from tests.integration.test_runs_api import caught_up, create

VALUE = "hunter2-Zq9/+=&x"


async def put(
    service: Service, name: str, value: str, group: str = "/", role: str = "admin"
) -> int:
    response = await service.client.put(
        f"/api/v1/secrets/{name}", json={"value": value, "group": group}, headers=service.auth(role)
    )
    await response.read()
    return response.status


async def listed(service: Service, group: str | None = None) -> list[dict[str, Any]]:
    params = {"group": group} if group else {}
    response = await service.client.get(
        "/api/v1/secrets", params=params, headers=service.auth("admin")
    )
    assert response.status == 200, await response.text()
    return list((await response.json())["secrets"])


async def claim(service: Service) -> dict[str, Any] | None:
    answer = await service.client.post(
        "/api/v1/executor/claim",
        json={"executor": "e", "wait": "0s"},
        headers=service.auth("executor"),
    )
    assert answer.status in (200, 204), await answer.text()
    return None if answer.status == 204 else dict(await answer.json())


async def complete(service: Service, lease: str) -> None:
    done = await service.client.post(
        f"/api/v1/executor/leases/{lease}/complete",
        json={"status": "success", "exit_code": 0},
        headers=service.auth("executor"),
    )
    assert done.status == 204, await done.text()


def deploy(env: dict[str, str], *others: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": [{"name": "deploy", "run": "deploy", "env": env}, *others]}


async def test_admin_sets_lists_and_deletes_and_values_are_sealed(service: Service) -> None:
    """A set is a new version, listed with who and when but never the value; the row
    holds ciphertext under a key id, a nonce of its own; a delete forgets the value and a
    set again goes on counting versions."""
    assert await put(service, "DEPLOY_TOKEN", VALUE) == 204
    assert await put(service, "DEPLOY_TOKEN", VALUE + "2") == 204
    assert await put(service, "DEPLOY_TOKEN", "other", group="/acme") == 204
    found = await listed(service)
    assert [(s["name"], s["group"], s["version"]) for s in found] == [
        ("DEPLOY_TOKEN", "/", 2),
        ("DEPLOY_TOKEN", "/acme", 1),
    ]
    assert found[0]["updated_by"] == "admin-token"
    assert VALUE not in str(found)
    assert [s["group"] for s in await listed(service, "/acme")] == ["/acme"]
    rows = await service.app[DATABASE].pool.fetch("SELECT * FROM secrets")
    assert len({bytes(r["nonce"]) for r in rows}) == 2
    assert all(VALUE.encode() not in bytes(r["ciphertext"]) for r in rows)
    assert {r["key_id"] for r in rows} == {load_ring_of(service).newest}

    gone = await service.client.delete(
        "/api/v1/secrets/DEPLOY_TOKEN", params={"group": "/acme"}, headers=service.auth()
    )
    assert gone.status == 204
    again = await service.client.delete(
        "/api/v1/secrets/DEPLOY_TOKEN", params={"group": "/acme"}, headers=service.auth()
    )
    assert again.status == 404
    assert await put(service, "DEPLOY_TOKEN", "back", group="/acme") == 204
    assert [(s["group"], s["version"]) for s in await listed(service, "/acme")] == [("/acme", 2)]


def load_ring_of(service: Service) -> KeyRing:
    return service.app[SECRETS].ring


async def test_only_admins_touch_secrets(service: Service) -> None:
    """A reader or executor token cannot list or set them; a submitter cannot set,
    list or delete them: 403 with the error body on each."""
    assert await put(service, "X", "v") == 204
    for role in ("reader", "submitter", "executor"):
        assert await put(service, "X", "v", role=role) == 403
        for method, path in (("GET", "/api/v1/secrets"), ("DELETE", "/api/v1/secrets/X")):
            async with service.client.request(method, path, headers=service.auth(role)) as r:
                assert r.status == 403
                assert (await r.json())["code"] == "forbidden"


async def test_bad_input_is_a_400_with_a_path_and_a_big_value_a_413(service: Service) -> None:
    """Names like a variable of the environment, absolute groups, a value that is not
    empty and at most 64 KiB; unknown fields are refused."""
    bad = await service.client.put(
        "/api/v1/secrets/1-bad", json={"value": "", "group": "rel"}, headers=service.auth()
    )
    assert bad.status == 400
    paths = {d["path"] for d in (await bad.json())["details"]}
    assert paths == {"name", "group", "value"}
    unknown = await service.client.put(
        "/api/v1/secrets/OK", json={"value": "v", "colour": 1}, headers=service.auth()
    )
    assert unknown.status == 400
    big = await service.client.put(
        "/api/v1/secrets/OK", json={"value": "x" * (64 * 1024 + 1)}, headers=service.auth()
    )
    assert big.status == 413
    assert await put(service, "OK", "x" * (64 * 1024)) == 204


async def test_a_claim_alone_carries_the_value(service: Service) -> None:
    """The claim's answer has the value in env, names the secret env entries and what
    to mask; the start records the name and version and `***`; the run view, its
    events and its history hold no value."""
    await put(service, "DEPLOY_TOKEN", VALUE)
    await put(service, "DEPLOY_TOKEN", VALUE + "-v2")
    run = await create(
        service,
        config=deploy(
            {"TOKEN": "${{ secrets.DEPLOY_TOKEN }}", "AUTH": "Bearer ${{ secrets.DEPLOY_TOKEN }}"}
        ),
    )
    await caught_up(service)
    claimed = await claim(service)
    assert claimed is not None
    item = claimed["task"]
    assert item["env"] == {"TOKEN": VALUE + "-v2", "AUTH": f"Bearer {VALUE}-v2"}
    assert item["secret_env"] == ["AUTH", "TOKEN"]
    assert item["masks"] == [VALUE + "-v2"]
    events = await service.app[STORE].read_stream(stream_of(run["id"]))
    started = next(
        e.event
        for e in events
        if isinstance(e.event, TaskStatusChanged) and e.event.status == "running"
    )
    assert started.secrets == {"DEPLOY_TOKEN": 2}
    assert started.resolved is not None
    assert started.resolved.env == {"TOKEN": "***", "AUTH": "Bearer ***"}
    await complete(service, claimed["lease"])
    await caught_up(service)
    for path in ("", "/events", "/state?at_version=3", "/verify"):
        response = await service.client.get(
            f"/api/v1/runs/{run['id']}{path}", headers=service.auth("reader")
        )
        text = await response.text()
        assert response.status == 200, text
        assert VALUE not in text
        assert '"secrets":{"DEPLOY_TOKEN":2}' in text or path != "/events"


async def test_the_most_specific_group_wins(service: Service) -> None:
    """A run in /acme/shop/main sees /acme's value over /'s, and its own group's over
    both; a run in /other sees only /'s."""
    await put(service, "T", "root")
    await put(service, "T", "acme", group="/acme")
    await put(service, "T", "main", group="/acme/shop/main")
    await put(service, "T", "elsewhere", group="/acme/shop/mainline")
    config = deploy({"T": "${{ secrets.T }}"})
    given = {}
    for group in ("/acme/shop/main", "/acme/shop", "/acme/shop/main/x", "/other"):
        await create(service, group=group, config=config)
        await caught_up(service)
        claimed = await claim(service)
        assert claimed is not None
        given[group] = claimed["task"]["env"]["T"]
        await complete(service, claimed["lease"])
    assert given == {
        "/acme/shop/main": "main",
        "/acme/shop": "acme",
        "/acme/shop/main/x": "main",
        "/other": "root",
    }


async def test_a_missing_secret_fails_the_attempt_naming_it(service: Service) -> None:
    """Nothing is handed out for it; the error names the secret and the group; what
    depends on it is skipped and an independent task still runs."""
    run = await create(
        service,
        config=deploy(
            {"T": "${{ secrets.NOT_SET }}"},
            {"name": "after", "run": "x", "depends": ["deploy"]},
            {"name": "other", "run": "x"},
        ),
    )
    await caught_up(service)
    claimed = await claim(service)
    assert claimed is not None
    assert claimed["task"]["task"] == "other"
    await complete(service, claimed["lease"])
    await caught_up(service)
    assert await claim(service) is None
    view = await (
        await service.client.get(f"/api/v1/runs/{run['id']}", headers=service.auth("reader"))
    ).json()
    tasks = view["tasks"]
    assert tasks["deploy"]["status"] == "failed"
    assert "secret NOT_SET is not set for group /acme/shop/main" in tasks["deploy"]["error"]
    assert tasks["after"]["status"] == "skipped"
    assert tasks["other"]["status"] == "success"
    assert view["result"] == "failed"


async def test_a_reference_outside_env_is_a_400_with_its_path(service: Service) -> None:
    """`run` cannot name a secret: the problem is at config.tasks[1].run."""
    response = await service.client.post(
        "/api/v1/runs",
        json={
            "group": "/g",
            "name": "r",
            "config": {
                "tasks": [
                    {"name": "a", "run": "x"},
                    {"name": "b", "run": "echo ${{ secrets.T }}"},
                ]
            },
        },
        headers=service.auth("submitter"),
    )
    assert response.status == 400
    details = (await response.json())["details"]
    assert [d["path"] for d in details] == ["config.tasks[1].run"]


async def test_a_simulation_says_which_secrets_a_run_needs(service: Service) -> None:
    """Names and whether the group has them; never a value."""
    await put(service, "HAVE", VALUE, group="/acme")
    response = await service.client.post(
        "/api/v1/simulations",
        json={
            "group": "/acme/x",
            "config": deploy({"A": "${{ secrets.HAVE }}", "B": "${{ secrets.MISSING }}"}),
        },
        headers=service.auth("reader"),
    )
    text = await response.text()
    assert response.status == 200, text
    assert VALUE not in text
    assert (await response.json())["secrets"] == [
        {"name": "HAVE", "exists": True},
        {"name": "MISSING", "exists": False},
    ]


async def refusal(settings: Settings) -> str:
    """Why a service with these settings does not start (what it opened is closed)."""
    app = create_app(settings)
    server = TestServer(app)
    with pytest.raises(KeyRingError) as refused:
        await server.start_server()
    await app.cleanup()
    await server.close()
    return str(refused.value)


async def test_the_wrong_key_refuses_to_start(service_config: Settings, tmp_path: Path) -> None:
    """The first start seals the canary; a process given another key (in the variable
    or in a file) does not start, and says which setting and why."""
    async for _ in start_service(service_config):
        pass
    other = base64.b64encode(new_key()).decode()
    for settings in (
        msgspec.structs.replace(service_config, secrets_key=other),
        msgspec.structs.replace(service_config, data_dir=tmp_path / "elsewhere"),
    ):
        message = await refusal(settings)
        assert "values sealed under another key cannot be read" in message
        assert "RUNSVC_SECRETS_KEY" in message


async def claimer(service: Service, got: dict[str, str]) -> None:
    while (claimed := await claim(service)) is not None:
        got[claimed["task"]["task"]] = claimed["task"]["env"]["V"]
        await complete(service, claimed["lease"])


async def rotate(service: Service, key_file: Path, old: bytes) -> int:
    """What `runsvc secrets rotate-key` does: a new key first in the file, then every
    row sealed again under it."""
    write_key_file(key_file, [new_key(), old])
    ring = load_ring(key=None, key_file=key_file, data_dir=key_file.parent)
    return await reseal(service.app[DATABASE].pool, ring)


async def test_rotation_while_runs_claim_their_secrets(
    service_config: Settings, tmp_path: Path
) -> None:
    """Runs are claimed before, during and after `reseal` under a new key prepended to
    the key file (what `runsvc secrets rotate-key` does): every claim gets the value of
    the version its start recorded, and afterwards no row is under the old key."""
    key_file = tmp_path / "keys"
    old = new_key()
    write_key_file(key_file, [old])
    settings = msgspec.structs.replace(service_config, secrets_key_file=key_file)
    async for service in start_service(settings):
        values = {f"S{i}": f"value-{i}-{'x' * i}" for i in range(20)}
        for name, value in values.items():
            assert await put(service, name, value, group="/acme") == 204
        config = {
            "tasks": [
                {"name": f"t{i}", "run": "x", "env": {"V": f"${{{{ secrets.S{i % 20} }}}}"}}
                for i in range(60)
            ]
        }
        run = await create(service, config=config)
        await caught_up(service)
        got: dict[str, str] = {}

        before = await claim(service)
        assert before is not None
        got[before["task"]["task"]] = before["task"]["env"]["V"]
        await complete(service, before["lease"])

        _, _, resealed = await asyncio.gather(
            claimer(service, got), claimer(service, got), rotate(service, key_file, old)
        )
        assert resealed == 20
        assert len(got) == 60
        assert all(got[f"t{i}"] == values[f"S{i % 20}"] for i in range(60))
        pool = service.app[DATABASE].pool
        assert (
            await pool.fetchval("SELECT count(*) FROM secrets WHERE key_id = $1", key_id(old)) == 0
        )
        assert await pool.fetchval("SELECT key_id FROM secrets_canary") != key_id(old)
        # After: the service's ring reads the new key from the file when it meets it.
        assert await put(service, "S0", "after-rotation", group="/acme") == 204
        await create(service, config={"tasks": [config["tasks"][0]]})
        await caught_up(service)
        after = await claim(service)
        assert after is not None
        assert after["task"]["env"]["V"] == "after-rotation"
        events = await service.app[STORE].read_stream(stream_of(run["id"]))
        assert all(VALUE not in str(e.event) for e in events)
    # A restart with only the new key works; the old key alone is refused.
    newest = parse_keys(key_file.read_text(), source="test")[0]
    write_key_file(key_file, [newest])
    async for _ in start_service(settings):
        pass
    write_key_file(key_file, [old])
    assert "cannot be read" in await refusal(settings)
