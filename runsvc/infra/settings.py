"""One settings struct for the whole service, read from the environment; command-line
flags override individual fields. Nothing else reads environment variables."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every knob of `runsvc serve`. Defaults give the embedded single-machine setup."""

    data_dir: Path = Path(".runsvc")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    log_format: str = "auto"  # auto | json | console
    log_level: str = "info"
    db_pool_size: int = 20
    max_event_bytes: int = 1024 * 1024
    max_body_bytes: int = 4 * 1024 * 1024
    max_page_size: int = 1000
    max_subscribers: int = 2000
    # Events held for one websocket subscriber before it is served from storage instead.
    subscriber_buffer: int = 1000
    max_tasks: int = 10_000
    s3_endpoint: str | None = None
    s3_bucket: str = "runsvc"
    s3_region: str = "us-east-1"
    s3_access_key: str = "runsvc"
    s3_secret_key: str = "runsvc"
    snapshot_interval_s: float = 600.0
    snapshot_keep: int = 5
    readiness_max_lag: int = 10_000
    bootstrap_admin_token: bool = True
    lease_ttl_s: float = 30.0
    heartbeat_interval_s: float = 10.0
    max_claim_wait_s: float = 60.0
    # How often a process looks for due timers (timeouts) and runs its housekeeping.
    timer_interval_s: float = 1.0
    # What one attempt may store: its log (output past it is refused with 413) and each
    # artifact file.
    max_log_bytes: int = 64 * 1024 * 1024
    max_artifact_bytes: int = 1024 * 1024 * 1024
    shutdown_grace_s: float = 10.0
    # How long a request may take before it is answered 503 (a hung database or object
    # store must not hang its clients); long polls, websockets and streamed bodies are
    # bounded by their own limits instead.
    request_timeout_s: float = 30.0
    # Unknown (well-formed) tokens one client address may present per 10 s before its
    # unknown tokens get 429s until the 10 s are over (0: no limit).
    auth_failure_limit: int = 100
    # How long a verified token is trusted without asking the database again. Revocations
    # reach every process at once regardless (they are announced); this bounds how stale
    # anything else about a token can be.
    token_cache_s: float = 10.0
    # Open connections per process (fewer if the descriptor limit cannot hold them): at
    # the cap the oldest idle connection is closed, or the newcomer gets a 503.
    max_connections: int = 10_000
    # How long an idle connection (keep-alive, or one that never sent a request) stays.
    keepalive_timeout_s: float = 15.0
    # PostgreSQL's statement_timeout on the service's connections: no runaway query holds
    # a connection for longer (0 turns it off). Bulk work (restoring a dump) lifts it.
    statement_timeout_s: float = 60.0

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
    "max_log_bytes": "RUNSVC_MAX_LOG_BYTES",
    "max_artifact_bytes": "RUNSVC_MAX_ARTIFACT_BYTES",
    "request_timeout_s": "RUNSVC_REQUEST_TIMEOUT_S",
    "auth_failure_limit": "RUNSVC_AUTH_FAILURE_LIMIT",
    "token_cache_s": "RUNSVC_TOKEN_CACHE_S",
    "max_connections": "RUNSVC_MAX_CONNECTIONS",
    "keepalive_timeout_s": "RUNSVC_KEEPALIVE_TIMEOUT_S",
    "statement_timeout_s": "RUNSVC_STATEMENT_TIMEOUT_S",
}


def environment_variables() -> dict[str, str]:
    """Field name -> environment variable, for `--help` and the README."""
    return dict(_ENV)


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
