"""A brake on guessing tokens: past a number of failed authentications from one client
address within a window, that address's unknown tokens are not checked any more until the
window ends (429 with Retry-After). Tokens verified recently are still checked and served,
so a valid client sharing an address with a guesser keeps working. Tokens are hashed and
compared in constant time either way; this only takes away the volume."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from runsvc.domain.errors import ServiceError

FAILURES_PER_WINDOW = 100
WINDOW_S = 10.0
# Addresses remembered at most; past it the oldest windows are forgotten first.
MAX_ADDRESSES = 100_000


class TooManyRequests(ServiceError):
    """Too many failed authentications from this address; try again later."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class FailedAuthLimiter:
    def __init__(
        self,
        *,
        limit: int = FAILURES_PER_WINDOW,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.limit = limit
        self.window_s = window_s
        self.clock = clock
        # address -> (failures in the window, the window's start)
        self._failures: dict[str, tuple[int, float]] = {}

    def check(self, address: str) -> None:
        """Raise TooManyRequests while `address` is over the limit (a limit of 0: never)."""
        if self.limit <= 0:
            return
        entry = self._failures.get(address)
        if entry is None:
            return
        count, started = entry
        left = started + self.window_s - self.clock()
        if left <= 0:
            del self._failures[address]
            return
        if count >= self.limit:
            raise TooManyRequests(
                f"too many failed authentications from this address; "
                f"try again in {math.ceil(left)} s",
                retry_after=math.ceil(left),
            )

    def failed(self, address: str) -> None:
        now = self.clock()
        count, started = self._failures.get(address, (0, now))
        if started + self.window_s <= now:
            count, started = 0, now
        if address not in self._failures and len(self._failures) >= MAX_ADDRESSES:
            self._failures.pop(next(iter(self._failures)))
        self._failures[address] = (count + 1, started)
