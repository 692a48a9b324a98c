"""Guessing tokens is braked per client address: past the limit of failed
authentications in a window, unknown tokens from the address get 429 with Retry-After
(they are not checked any more), while a token verified before goes on working."""

from __future__ import annotations

from pathlib import Path

from runsvc.http.guessing import FailedAuthLimiter
from runsvc.http.keys import AUTH_LIMITER
from runsvc.infra.objectstore import ObjectStoreConfig
from tests.fixtures.service import service_settings, start_service


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_guessing_is_braked_and_known_tokens_keep_working(
    database_dsn: str, tmp_path: Path, object_store_config: ObjectStoreConfig
) -> None:
    settings = service_settings(database_dsn, tmp_path, object_store_config, auth_failure_limit=5)
    async for service in start_service(settings):
        limiter: FailedAuthLimiter = service.app[AUTH_LIMITER]
        clock = Clock()
        limiter.clock = clock
        runs = "/api/v1/runs"
        assert (await service.client.get(runs, headers=service.auth("reader"))).status == 200

        statuses = []
        for n in range(8):
            guess = {"Authorization": f"Bearer rsv_guess{n}_000000000000000000"}
            response = await service.client.get(runs, headers=guess)
            statuses.append(response.status)
            body = await response.json()
        assert statuses == [401] * 5 + [429] * 3
        # Missing and malformed tokens are refused without a lookup and not counted, but an
        # address over the limit gets 429 for them too.
        assert body["code"] == "too_many_requests"
        assert 0 < int(response.headers["Retry-After"]) <= 10

        # The reader's token was verified before the guessing: it is still served.
        assert (await service.client.get(runs, headers=service.auth("reader"))).status == 200
        # A token never seen from here waits like the guesses do.
        fresh = await service.client.get(runs, headers=service.auth("submitter"))
        assert fresh.status == 429

        assert (await service.client.get(runs)).status == 429

        clock.now += 10.0  # the window is over
        for _ in range(10):  # missing or malformed tokens are no guesses: never braked
            assert (await service.client.get(runs)).status == 401
            malformed = {"Authorization": "Bearer not-a-token"}
            assert (await service.client.get(runs, headers=malformed)).status == 401
        assert (await service.client.get(runs, headers=service.auth("submitter"))).status == 200
        wrong = {"Authorization": "Bearer rsv_guess_after_000000000000000000"}
        assert (await service.client.get(runs, headers=wrong)).status == 401
