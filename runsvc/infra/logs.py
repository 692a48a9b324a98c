"""structlog setup: JSON lines in production, readable console output on a terminal.
Context (request id, run id, task id) is bound with contextvars and merged first.

Library code that runs in the command line too (the HTTP client) logs through the
standard `logging` module instead: structlog takes a sixth of a short command's start, and
a command that never configures logging shows only warnings. A process that configures
logging here renders those records like its own lines, their `extra` fields included."""

from __future__ import annotations

import logging
import sys
import time

import structlog


def configure_logging(fmt: str = "auto", level: str = "info") -> None:
    use_console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: structlog.types.Processor
    if use_console:
        renderer = structlog.dev.ConsoleRenderer()
    else:
        renderer = structlog.processors.JSONRenderer()
    threshold = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.ExtraAdder()],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    # Other libraries' records below a warning (aiohttp's access and client chatter,
    # asyncpg's notices) are theirs to debug, not the service's log.
    root.setLevel(logging.WARNING)
    logging.getLogger("runsvc").setLevel(threshold)


class Throttled:
    """A logger for a failure that repeats on every request while it lasts (a database
    outage, file descriptors exhausted): one line per `interval_s` at most, carrying how
    many were held back, so an outage cannot fill the disk with the same line."""

    def __init__(self, name: str, *, interval_s: float = 5.0) -> None:
        self._log = structlog.get_logger(name)
        self._interval_s = interval_s
        self._next_at = 0.0
        self._held_back = 0

    def warning(self, event: str, **fields: object) -> None:
        now = time.monotonic()
        if now < self._next_at:
            self._held_back += 1
            return
        self._log.warning(event, held_back=self._held_back, **fields)
        self._held_back = 0
        self._next_at = now + self._interval_s
