"""The database as the whole service sees it: every layer's migrations, in layer order."""

from __future__ import annotations

from eventlog.postgres import EVENTLOG_MIGRATIONS, MigrationSet
from projections.database import PROJECTIONS_MIGRATIONS

MIGRATION_SETS: tuple[MigrationSet, ...] = (EVENTLOG_MIGRATIONS, PROJECTIONS_MIGRATIONS)
