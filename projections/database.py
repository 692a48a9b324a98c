"""The projections layer's own migrations (the checkpoint table). Read tables are created
by the projections themselves (see projections.projection)."""

from __future__ import annotations

from pathlib import Path

from eventlog.postgres import MigrationSet

PROJECTIONS_MIGRATIONS = MigrationSet("projections", Path(__file__).parent / "migrations")
