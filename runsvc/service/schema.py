"""The database as the whole service sees it: every layer's migrations, in layer order."""

from __future__ import annotations

from pathlib import Path

from eventlog.postgres import EVENTLOG_MIGRATIONS, MigrationSet
from projections.database import PROJECTIONS_MIGRATIONS

RUNSVC_MIGRATIONS = MigrationSet("runsvc", Path(__file__).parent / "migrations")

MIGRATION_SETS: tuple[MigrationSet, ...] = (
    EVENTLOG_MIGRATIONS,
    PROJECTIONS_MIGRATIONS,
    RUNSVC_MIGRATIONS,
)
