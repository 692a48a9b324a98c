"""The errors a client can cause, one class per row of docs/api.md's error table.

Handlers and the command side raise these; one HTTP middleware maps them to status codes
and the JSON error body. Anything that is not a `ServiceError` is a bug and becomes a 500
whose cause is logged, never sent.
"""

from __future__ import annotations

import msgspec


class Problem(msgspec.Struct, frozen=True):
    """One validation problem, located by a path such as `config.tasks[3].depends[0]`."""

    path: str
    message: str


class ServiceError(Exception):
    """The request cannot be served as asked."""

    status = 500
    code = "internal"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class BadRequest(ServiceError):
    """The request is malformed or invalid."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str | None = None, details: list[Problem] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class Unauthorized(ServiceError):
    """A valid bearer token is required."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """This token's role may not do this."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    """No such resource."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The action does not fit the current state."""

    status = 409
    code = "conflict"


class TooLarge(ServiceError):
    """The request body is over the configured limit."""

    status = 413
    code = "too_large"


class Unavailable(ServiceError):
    """A store the service needs is down or not answering; try again later."""

    status = 503
    code = "unavailable"


class SecretsNeeded(Conflict):
    """The attempt's start needs its task's secrets: the command side looks up their
    versions in the run's group and starts it again with them. Never reaches a client."""

    def __init__(self, group: str, names: list[str]) -> None:
        super().__init__(f"the attempt needs secrets {', '.join(names)}")
        self.group = group
        self.names = names
