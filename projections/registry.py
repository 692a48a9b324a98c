"""Every projection the service runs, by name."""

from __future__ import annotations

from projections.index import IndexProjection
from projections.projection import Projection
from projections.run_state import RunStateProjection
from projections.schedules import SchedulesProjection


def all_projections() -> list[Projection]:
    return [IndexProjection(), RunStateProjection(), SchedulesProjection()]


def projection_named(name: str) -> Projection:
    for projection in all_projections():
        if projection.name == name:
            return projection
    names = ", ".join(p.name for p in all_projections())
    raise KeyError(f"no projection named {name!r} (known: {names})")
