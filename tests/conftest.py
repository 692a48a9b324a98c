"""Shared fixtures: one embedded PostgreSQL and one SeaweedFS per session (started only
when a test asks for them), a fresh database per test."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.s3",
    "tests.fixtures.service",
    "tests.fixtures.processes",
]


def _dump_asyncio_tasks(_signum: int, _frame: object) -> None:
    """`kill -USR1 <pytest pid>` prints every asyncio task's stack to stderr: what a hung
    test (often its teardown) waits for, which thread dumps cannot show."""
    import asyncio
    import sys

    loop = asyncio._get_running_loop()
    if loop is None:
        print("no running event loop", file=sys.stderr)
        return
    for task in asyncio.all_tasks(loop):
        print(f"--- {task!r}", file=sys.stderr)
        task.print_stack(file=sys.stderr)


def pytest_configure() -> None:
    import signal

    signal.signal(signal.SIGUSR1, _dump_asyncio_tasks)
