"""`runsvc executor` running: the token taken safely, the tasks' user chosen, the agent
served until a signal stops it."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
from pathlib import Path

import structlog

from runsvc.cli.connection import DEFAULT_SERVER, EXIT_NOT_ALLOWED, EXIT_OK, EXIT_USAGE
from runsvc.client import ApiClient, ExecutorClient
from runsvc.executor import Agent, AgentConfig, AgentError
from runsvc.executor.credential import (
    TokenError,
    reexecute_without_token,
    resolve_token,
    take_handed_over,
)
from runsvc.executor.hardening import make_undumpable
from runsvc.executor.taskuser import TaskUser, TaskUserError, choose_task_user, open_work_root
from runsvc.infra.logs import configure_logging

log = structlog.get_logger("runsvc.executor")


def run_executor(args: argparse.Namespace) -> int:
    server = args.server or os.environ.get("RUNSVC_SERVER") or DEFAULT_SERVER
    try:
        task_user = choose_task_user(_setting(args.task_user, "RUNSVC_TASK_USER"))
        token = _token(args, task_user)
        labels = parse_labels(args.labels)
        api = ApiClient(server, token, user_agent="runsvc-executor")
    except (TokenError, TaskUserError, ValueError) as exc:
        return _usage(str(exc))
    work_root = args.work_dir.resolve()
    try:
        work_root.mkdir(parents=True, exist_ok=True)
        if task_user is not None:
            open_work_root(task_user, work_root)
    except OSError as exc:
        return _usage(f"cannot use {work_root} as work directory: {exc}")
    except TaskUserError as exc:
        return _usage(str(exc))
    configure_logging("auto", "info")
    config = AgentConfig(
        name=args.name or socket.gethostname(),
        work_root=work_root,
        labels=labels,
        concurrency=args.concurrency,
        shutdown_grace_s=args.shutdown_grace,
        inherited_env=dict(os.environ),
        task_user=task_user,
    )
    return asyncio.run(_serve(api, config))


def _token(args: argparse.Namespace, task_user: TaskUser | None) -> str:
    """The token, once it is out of the process's environment and command line: an
    executor that finds it there executes itself again (this does not return) and gets
    it handed over. TokenError when there is no token or it cannot be had, TaskUserError
    when it is in a file the tasks' user could read."""
    handed = take_handed_over(os.environ)
    if handed is None:
        found = resolve_token(
            argument=args.token, file=args.token_file, environ=os.environ, stdin=sys.stdin
        )
        if found.file is not None and task_user is not None:
            _check_token_file(Path(found.file), task_user)
        if found.exposed:
            try:
                reexecute_without_token(found.value)
            except OSError as exc:
                raise TokenError(
                    f"cannot execute itself again without the token in its environment "
                    f"({exc.strerror}); give the token with --token-file"
                ) from None
        handed = found.value
    make_undumpable()
    return handed


def _check_token_file(path: Path, task_user: TaskUser) -> None:
    """Refuse a token file the tasks' user could read: the executor's credential must be
    out of its tasks' reach."""
    with contextlib.suppress(OSError):  # it was read: only a race could get here
        if path.is_file() and task_user.can_read(path):
            raise TaskUserError(
                f"tasks run as {task_user.name}, who can read the token file {path}; "
                "make it readable by the executor alone (chmod 600)"
            )


def _setting(flag: str | None, variable: str) -> str | None:
    """The flag, else the environment variable (which may be set to empty), else None."""
    return flag if flag is not None else os.environ.get(variable)


def _usage(message: str) -> int:
    print(f"runsvc executor: {message}", file=sys.stderr)
    return EXIT_USAGE


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """`key=value` arguments as a dict; ValueError naming the first malformed one."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"a label is KEY=VALUE, got {pair!r}")
        labels[key.strip()] = value.strip()
    return labels


async def _serve(api: ApiClient, config: AgentConfig) -> int:
    loop = asyncio.get_running_loop()
    async with api:
        agent = Agent(ExecutorClient(api), config)

        def on_signal(sig: signal.Signals) -> None:
            log.info("signal received; shutting down", signal=sig.name)
            agent.shutdown()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        try:
            await agent.run()
        except AgentError as exc:
            print(f"runsvc executor: {exc}", file=sys.stderr)
            return EXIT_NOT_ALLOWED
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return EXIT_OK
