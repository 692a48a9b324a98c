"""Reading the run index: filtered, newest first, keyset-paginated (never OFFSET)."""

from __future__ import annotations

import base64
from datetime import datetime

import asyncpg

from projections.index import IndexRow
from runsvc.domain.events import Phase, Result
from runsvc.wire.api import GroupCount, IndexEntry, IndexPage


class InvalidCursor(ValueError):
    """The pagination cursor is not one this service handed out."""


def encode_cursor(created_position: int) -> str:
    return base64.urlsafe_b64encode(f"p{created_position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p"):
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("invalid cursor") from exc


def group_bounds(group: str) -> tuple[str, str, str]:
    """(exact, lower, upper): the group itself, and the byte range of everything below it."""
    base = group.rstrip("/")
    return base or "/", base + "/", base + "0"


# Whether a run has a task waiting for an approval is run_state's to know (the index reads
# no task events). The filter is one of these fixed clauses, not a parameter, so that it
# stays a plain (anti) semi-join the planner can start from run_state's partial index:
# behind `$n IS NULL OR ...` it would be checked run by run down the whole index.
_WAITING_APPROVAL = {
    None: "",
    True: "AND EXISTS (SELECT 1 FROM run_state s "
    "WHERE s.run_id = r.run_id AND s.waiting_approval > 0)",
    False: "AND NOT EXISTS (SELECT 1 FROM run_state s "
    "WHERE s.run_id = r.run_id AND s.waiting_approval > 0)",
}


async def list_runs(
    connection: asyncpg.Connection | asyncpg.Pool,
    *,
    group: str | None = None,
    name: str | None = None,
    phase: Phase | None = None,
    result: Result | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    waiting_approval: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> IndexPage:
    """Runs matching every given filter, newest first. `group` matches the path and
    everything below it; `waiting_approval` keeps the runs that have (True) or have not
    (False) a task waiting for an approval, as far as the run_state projection has
    folded. Rows created while paging never disturb later pages: the cursor is a
    creation position and new runs only get higher ones."""
    before = decode_cursor(cursor) if cursor else None
    exact, lower, upper = group_bounds(group) if group else (None, None, None)
    rows = await connection.fetch(
        f"""
        SELECT run_id, group_path, name, counter, phase, result, created_at, started_at,
               finished_at, created_position
        FROM runs_index r
        WHERE ($1::text IS NULL OR group_path = $1 OR (group_path >= $2 AND group_path < $3))
          AND ($4::text IS NULL OR phase = $4)
          AND ($5::text IS NULL OR result = $5)
          AND ($6::timestamptz IS NULL OR created_at >= $6)
          AND ($7::timestamptz IS NULL OR created_at < $7)
          AND ($8::bigint IS NULL OR created_position < $8)
          AND ($10::text IS NULL OR name = $10)
          {_WAITING_APPROVAL[waiting_approval]}
        ORDER BY created_position DESC
        LIMIT $9
        """,
        exact,
        lower,
        upper,
        phase,
        result,
        created_after,
        created_before,
        before,
        limit + 1,
        name,
    )
    entries = [
        IndexEntry(
            id=r[0],
            group=r[1],
            name=r[2],
            counter=r[3],
            phase=r[4],
            result=r[5],
            created_at=r[6],
            started_at=r[7],
            finished_at=r[8],
        )
        for r in rows[:limit]
    ]
    next_cursor = encode_cursor(rows[limit - 1][9]) if len(rows) > limit else None
    return IndexPage(runs=entries, next_cursor=next_cursor)


async def child_groups(
    connection: asyncpg.Connection | asyncpg.Pool, *, under: str, limit: int
) -> tuple[list[str], bool]:
    """The groups one level below `under` that hold runs (directly or deeper), in
    order, at most `limit`, and whether there are more. Each is found by a seek or two
    on the group index, skipping everything below the one found before: the cost is
    the number of groups returned, not of runs."""
    _, lower, upper = group_bounds(under)
    found: list[str] = []
    # The ranges still to search, in order: after a child, what sorts between it and
    # its own subgroups (`/a/b-x` and `/a/b.x` come before `/a/b/…`: '-' and '.' sort
    # below '/'), then what comes after them ('0' is the byte after '/').
    ranges: list[tuple[str, bool, str]] = [(lower, False, upper)]  # (low, strict, high)
    while ranges and len(found) <= limit:
        low, strict, high = ranges.pop(0)
        path = await connection.fetchval(
            f"""
            SELECT group_path FROM runs_index
            WHERE group_path {">" if strict else ">="} $1 AND group_path < $2
            ORDER BY group_path LIMIT 1
            """,
            low,
            high,
        )
        if path is None:
            continue
        child = lower + path[len(lower) :].split("/", 1)[0]
        found.append(child)
        ranges[:0] = [(child, True, child + "/"), (child + "0", False, high)]
    return found[:limit], len(found) > limit


async def count_runs(
    connection: asyncpg.Connection | asyncpg.Pool, *, group: str
) -> list[GroupCount]:
    """How many runs the group and everything below it has, by phase and result."""
    exact, lower, upper = group_bounds(group)
    rows = await connection.fetch(
        """
        SELECT phase, result, count(*) FROM runs_index
        WHERE group_path = $1 OR (group_path >= $2 AND group_path < $3)
        GROUP BY phase, result ORDER BY phase, result
        """,
        exact,
        lower,
        upper,
    )
    return [GroupCount(phase=r[0], result=r[1], runs=r[2]) for r in rows]


_ENDED = ["finished", "cancelled", "setuperror"]


async def ended_before(pool: asyncpg.Pool, cutoff: datetime) -> list[str]:
    """Runs that ended before `cutoff`, oldest end first."""
    rows = await pool.fetch(
        "SELECT run_id FROM runs_index WHERE phase = ANY($1::text[]) AND finished_at < $2 "
        "ORDER BY finished_at",
        _ENDED,
        cutoff,
    )
    return [row["run_id"] for row in rows]


async def carried_into_younger_runs(
    pool: asyncpg.Pool, task_ids: list[str], run_id: str, cutoff: datetime
) -> set[str]:
    """Which of `run_id`'s tasks a recreation carried into another run that has not ended
    before `cutoff` (their output is that run's too)."""
    rows = await pool.fetch(
        """
        SELECT c.task_id FROM carried_tasks c JOIN runs_index r ON r.run_id = c.run_id
        WHERE c.task_id = ANY($1::text[]) AND c.run_id <> $2
          AND NOT (r.phase = ANY($3::text[]) AND r.finished_at < $4)
        """,
        task_ids,
        run_id,
        _ENDED,
        cutoff,
    )
    return {row["task_id"] for row in rows}


__all__ = ["IndexEntry", "IndexPage", "IndexRow", "count_runs", "list_runs"]
