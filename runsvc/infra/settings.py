"""One settings struct for the whole service, read from the environment; command-line
flags override individual fields. Nothing else reads environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, NamedTuple

import msgspec
from msgspec import Meta


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob of `runsvc serve`. Defaults give the embedded single-machine setup; each
    description is what `runsvc serve --help` says of the field's variable."""

    data_dir: Annotated[
        Path,
        Meta(
            description="where the embedded servers keep their data and the first admin "
            "token is written"
        ),
    ] = Path(".runsvc")
    database_url: Annotated[
        str | None,
        Meta(
            description="PostgreSQL DSN, e.g. postgresql://runsvc:secret@db.internal/runsvc; "
            "unset: an embedded server in the data directory"
        ),
    ] = None
    host: Annotated[
        str,
        Meta(description="address to listen on; 0.0.0.0 for every interface"),
    ] = "127.0.0.1"
    port: Annotated[int, Meta(description="port to listen on")] = 8080
    log_format: Annotated[
        str,
        Meta(
            description="json, console, or auto: console when stderr is a terminal, JSON otherwise"
        ),
    ] = "auto"
    log_level: Annotated[str, Meta(description="debug, info, warning or error")] = "info"
    db_pool_size: Annotated[
        int,
        Meta(
            description="pooled database connections per process (each process also keeps "
            "3 listening connections)"
        ),
    ] = 20
    max_event_bytes: Annotated[
        int,
        Meta(
            description="largest single event the log accepts (1 MiB); a run's whole "
            "config is one event, so this bounds a config (413 beyond it)"
        ),
    ] = 1024 * 1024
    max_body_bytes: Annotated[
        int,
        Meta(
            description="largest request body (4 MiB; 413 beyond it); artifact uploads are "
            "streamed and exempt"
        ),
    ] = 4 * 1024 * 1024
    max_page_size: Annotated[
        int,
        Meta(description="largest `limit` for listing runs and reading the event log"),
    ] = 1000
    max_subscribers: Annotated[
        int,
        Meta(description="websocket subscribers per process; more are refused with 503"),
    ] = 2000
    subscriber_buffer: Annotated[
        int,
        Meta(
            description="events held for one websocket subscriber; one that falls further "
            "behind is served from the database until it catches up"
        ),
    ] = 1000
    max_tasks: Annotated[int, Meta(description="tasks per run, foreach items included")] = 10_000
    max_foreach_items: Annotated[
        int,
        Meta(
            description="items a foreach expression may give when it expands; more fail "
            "the task (a foreach list in the run file counts towards max_tasks instead)"
        ),
    ] = 1000
    s3_endpoint: Annotated[
        str | None,
        Meta(
            description="S3 endpoint URL, e.g. https://s3.eu-west-1.amazonaws.com; unset: an "
            "embedded SeaweedFS in the data directory"
        ),
    ] = None
    s3_bucket: Annotated[
        str, Meta(description="bucket for logs, artifacts and index dumps; created if missing")
    ] = "runsvc"
    s3_region: Annotated[str, Meta(description="region of the S3 endpoint")] = "us-east-1"
    s3_access_key: Annotated[
        str,
        Meta(
            description="access key for RUNSVC_S3_ENDPOINT; the embedded SeaweedFS uses the "
            "keys it made instead"
        ),
    ] = "runsvc"
    s3_secret_key: Annotated[
        str, Meta(description="secret key for RUNSVC_S3_ENDPOINT, likewise")
    ] = "runsvc"
    snapshot_interval_s: Annotated[
        float, Meta(description="seconds between dumps of the run index to object storage")
    ] = 600.0
    snapshot_keep: Annotated[int, Meta(description="index dumps kept; older ones are deleted")] = 5
    readiness_max_lag: Annotated[
        int,
        Meta(description="log positions a projection may trail before /readyz reports not ready"),
    ] = 10_000
    bootstrap_admin_token: Annotated[
        bool,
        Meta(
            description="on a start that finds no token, create an admin token and write it "
            "to the data directory; false never does"
        ),
    ] = True
    lease_ttl_s: Annotated[
        float,
        Meta(
            description="seconds an executor's lease lasts without a heartbeat; then its "
            "attempt is lost"
        ),
    ] = 30.0
    heartbeat_interval_s: Annotated[
        float,
        Meta(
            description="seconds between the heartbeats executors are asked for; keep it "
            "well under the lease TTL"
        ),
    ] = 10.0
    max_claim_wait_s: Annotated[
        float,
        Meta(description="longest an executor's claim may wait for a ready task, in seconds"),
    ] = 60.0
    timer_interval_s: Annotated[
        float,
        Meta(
            description="seconds between a process's looks for due timeouts and its "
            "housekeeping (expired leases, stale claims, log archiving)"
        ),
    ] = 1.0
    schedule_grace_s: Annotated[
        float,
        Meta(
            description="seconds after its fire time a schedule's firing still counts as on "
            "time; later ones (after downtime) follow the schedule's catchup policy"
        ),
    ] = 60.0
    max_log_bytes: Annotated[
        int,
        Meta(
            description="what one attempt's log may hold (64 MiB); what fits is kept, the "
            "rest is refused with 413 and the executor stops sending"
        ),
    ] = 64 * 1024 * 1024
    max_artifact_bytes: Annotated[
        int,
        Meta(description="largest artifact file (1 GiB); a bigger upload is a 413"),
    ] = 1024 * 1024 * 1024
    # Executors get it with each claim, so that they refuse what the server would.
    max_output_bytes: Annotated[
        int,
        Meta(
            description="what one attempt's output file ($RUNSVC_OUTPUT) may hold (64 KiB); "
            "past it the attempt fails, and a completion whose outputs exceed it is a 413. "
            "They are stored in one event: keep it well under RUNSVC_MAX_EVENT_BYTES"
        ),
    ] = 64 * 1024
    shutdown_grace_s: Annotated[
        float,
        Meta(description="on SIGTERM, seconds open requests get to finish"),
    ] = 10.0
    # A hung database or object store must not hang its clients; long polls, websockets
    # and streamed bodies are bounded by their own limits instead.
    request_timeout_s: Annotated[
        float,
        Meta(description="seconds a request may take; past it the answer is 503 with Retry-After"),
    ] = 30.0
    auth_failure_limit: Annotated[
        int,
        Meta(
            description="unknown tokens one client address may present per 10 s before it "
            "gets 429s until the 10 s are over (0: no limit); raise it behind a proxy"
        ),
    ] = 100
    # Revocations reach every process at once regardless (they are announced); this
    # bounds how stale anything else about a token can be.
    token_cache_s: Annotated[
        float,
        Meta(
            description="seconds a process trusts a verified token before asking the database again"
        ),
    ] = 10.0
    max_connections: Annotated[
        int,
        Meta(
            description="open connections per process (fewer if the descriptor limit cannot "
            "hold them); at the cap the oldest idle one is closed, or the newcomer gets a 503"
        ),
    ] = 10_000
    keepalive_timeout_s: Annotated[
        float,
        Meta(
            description="seconds an idle connection, or one that has not sent a request "
            "yet, stays open"
        ),
    ] = 15.0
    # No runaway query holds a connection for longer; bulk work (restoring a dump) lifts it.
    statement_timeout_s: Annotated[
        float,
        Meta(
            description="PostgreSQL statement_timeout on the service's connections, in "
            "seconds (0: off)"
        ),
    ] = 60.0
    webhook_timeout_s: Annotated[
        float,
        Meta(description="seconds a webhook's receiver has to answer one delivery"),
    ] = 10.0
    webhook_retry_for_s: Annotated[
        float,
        Meta(
            description="seconds a webhook retries an undelivered event (backoff from 1 s "
            "doubling to 5 min) before it is marked failing and stops until resumed"
        ),
    ] = 86400.0
    webhook_lease_s: Annotated[
        float,
        Meta(
            description="seconds a process's lease on delivering a webhook lasts without "
            "renewal; another process takes the webhook over after it"
        ),
    ] = 30.0
    secrets_key_file: Annotated[
        Path | None,
        Meta(
            description="file of the keys that seal secrets (base64, one a line, newest "
            "first; every process needs the same); unset: secrets.key in the data directory, "
            "made on first start"
        ),
    ] = None
    secrets_key: Annotated[
        str | None,
        Meta(
            description="the keys that seal secrets, base64, comma-separated, newest first; "
            "overrides RUNSVC_SECRETS_KEY_FILE"
        ),
    ] = None

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_object_store(self) -> bool:
        return self.s3_endpoint is None


_ENV: dict[str, str] = {
    "data_dir": "RUNSVC_DATA_DIR",
    "database_url": "RUNSVC_DATABASE_URL",
    "host": "RUNSVC_HOST",
    "port": "RUNSVC_PORT",
    "log_format": "RUNSVC_LOG_FORMAT",
    "log_level": "RUNSVC_LOG_LEVEL",
    "db_pool_size": "RUNSVC_DB_POOL_SIZE",
    "max_event_bytes": "RUNSVC_MAX_EVENT_BYTES",
    "max_body_bytes": "RUNSVC_MAX_BODY_BYTES",
    "max_page_size": "RUNSVC_MAX_PAGE_SIZE",
    "max_subscribers": "RUNSVC_MAX_SUBSCRIBERS",
    "subscriber_buffer": "RUNSVC_SUBSCRIBER_BUFFER",
    "max_tasks": "RUNSVC_MAX_TASKS",
    "max_foreach_items": "RUNSVC_MAX_FOREACH_ITEMS",
    "s3_endpoint": "RUNSVC_S3_ENDPOINT",
    "s3_bucket": "RUNSVC_S3_BUCKET",
    "s3_region": "RUNSVC_S3_REGION",
    "s3_access_key": "RUNSVC_S3_ACCESS_KEY",
    "s3_secret_key": "RUNSVC_S3_SECRET_KEY",
    "snapshot_interval_s": "RUNSVC_SNAPSHOT_INTERVAL_S",
    "snapshot_keep": "RUNSVC_SNAPSHOT_KEEP",
    "readiness_max_lag": "RUNSVC_READINESS_MAX_LAG",
    "shutdown_grace_s": "RUNSVC_SHUTDOWN_GRACE_S",
    "bootstrap_admin_token": "RUNSVC_BOOTSTRAP_ADMIN_TOKEN",
    "lease_ttl_s": "RUNSVC_LEASE_TTL_S",
    "heartbeat_interval_s": "RUNSVC_HEARTBEAT_INTERVAL_S",
    "max_claim_wait_s": "RUNSVC_MAX_CLAIM_WAIT_S",
    "timer_interval_s": "RUNSVC_TIMER_INTERVAL_S",
    "schedule_grace_s": "RUNSVC_SCHEDULE_GRACE_S",
    "max_log_bytes": "RUNSVC_MAX_LOG_BYTES",
    "max_artifact_bytes": "RUNSVC_MAX_ARTIFACT_BYTES",
    "max_output_bytes": "RUNSVC_MAX_OUTPUT_BYTES",
    "request_timeout_s": "RUNSVC_REQUEST_TIMEOUT_S",
    "auth_failure_limit": "RUNSVC_AUTH_FAILURE_LIMIT",
    "token_cache_s": "RUNSVC_TOKEN_CACHE_S",
    "max_connections": "RUNSVC_MAX_CONNECTIONS",
    "keepalive_timeout_s": "RUNSVC_KEEPALIVE_TIMEOUT_S",
    "statement_timeout_s": "RUNSVC_STATEMENT_TIMEOUT_S",
    "webhook_timeout_s": "RUNSVC_WEBHOOK_TIMEOUT_S",
    "webhook_retry_for_s": "RUNSVC_WEBHOOK_RETRY_FOR_S",
    "webhook_lease_s": "RUNSVC_WEBHOOK_LEASE_S",
    "secrets_key_file": "RUNSVC_SECRETS_KEY_FILE",
    "secrets_key": "RUNSVC_SECRETS_KEY",
}


class Variable(NamedTuple):
    """An environment variable of `runsvc serve`, as its `--help` lists it."""

    name: str
    default: str
    meaning: str


def variables() -> list[Variable]:
    """Every variable with its default and meaning, in the order of the Settings fields,
    whose defaults and descriptions are the only place they are written."""
    found = []
    for field in msgspec.structs.fields(Settings):
        meta = next(m for m in field.type.__metadata__ if isinstance(m, Meta))
        assert meta.description, f"Settings.{field.name} needs a description"
        found.append(Variable(_ENV[field.name], _shown(field.default), meta.description))
    return found


def _shown(default: object) -> str:
    """A default as one would set it in the environment."""
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)


def load_settings(environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
    """Settings from the environment, then `overrides` (flags given on the command line;
    None means "not given"). Raises ValueError naming the variable on a bad value."""
    environ = os.environ if environ is None else environ
    raw: dict[str, object] = {}
    for field, variable in _ENV.items():
        value = environ.get(variable)
        if value not in (None, ""):
            raw[field] = value
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return msgspec.convert(raw, Settings, strict=False, dec_hook=_decode_path)
    except msgspec.ValidationError as exc:
        field = str(exc).rsplit("$.", 1)[-1] if "$." in str(exc) else ""
        variable = _ENV.get(field, field)
        raise ValueError(f"invalid setting {variable}: {exc}") from exc


def _decode_path(type_: type, value: object) -> object:
    if type_ is Path and isinstance(value, str | Path):
        return Path(value)
    raise NotImplementedError
