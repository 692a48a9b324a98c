"""A projection runner in its own process, for crash tests: catches up the named
projection on the given database, printing one line per batch applied."""

from __future__ import annotations

import asyncio
import sys

from eventlog.postgres import create_pool
from eventlog.store import EventStore
from projections.registry import projection_named
from projections.runner import ProjectionRunner


async def main(dsn: str, name: str, batch_size: int) -> None:
    pool = await create_pool(dsn, max_size=4)
    store = EventStore(pool, dsn=dsn)
    await store.start()
    runner = ProjectionRunner(
        store,
        projection_named(name),
        batch_size=batch_size,
        on_batch=lambda n: print(f"batch {n}", flush=True),
    )
    await runner.start()
    await runner.catch_up()
    print("caught up", flush=True)
    await store.close()
    await pool.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
