"""Where the executor's token comes from, and how it leaves the process's environment.

The kernel shows a process's environment, as it was when the process was executed, in
/proc/<pid>/environ, to every process of the same user; changing `os.environ` later
changes nothing there. A token taken from RUNSVC_TOKEN would so stay readable by the
executor's tasks for as long as it runs. So an executor that finds its token in its
environment (or on its command line, which /proc/<pid>/cmdline shows to everyone)
executes itself once more without it, and hands the token over through a pipe whose read
end is all the new image inherits (`reexecute_without_token`, then `take_handed_over`).

Errors name where a token was looked for, never what was read.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import NoReturn, TextIO

TOKEN_VARIABLE = "RUNSVC_TOKEN"
TOKEN_FILE_VARIABLE = "RUNSVC_TOKEN_FILE"
# Internal: the descriptor of the pipe that holds the token across the re-execution.
HANDOVER_VARIABLE = "RUNSVC_EXECUTOR_TOKEN_FD"
STDIN = "-"


class TokenError(Exception):
    """No usable token; the message says where it was looked for."""


@dataclass(frozen=True)
class Token:
    """The token; the file it was read from, if any; and whether the process must execute
    itself again to shed it: it is in the environment or on the command line, where tasks
    of the same user can read it."""

    value: str
    exposed: bool
    file: str | None = None


def resolve_token(
    *,
    argument: str | None,
    file: str | None,
    environ: Mapping[str, str],
    stdin: TextIO,
) -> Token:
    """The token from, in order: `--token`, `--token-file`, RUNSVC_TOKEN,
    RUNSVC_TOKEN_FILE. TokenError when there is none or it cannot be read."""
    if argument and file:
        raise TokenError("give --token or --token-file, not both")
    if argument:
        return Token(argument, exposed=True)
    in_environment = bool(environ.get(TOKEN_VARIABLE))
    if file:
        return Token(read_token_file(file, stdin), in_environment, _path(file))
    if in_environment:
        return Token(environ[TOKEN_VARIABLE], exposed=True)
    if environ.get(TOKEN_FILE_VARIABLE):
        file = environ[TOKEN_FILE_VARIABLE]
        return Token(read_token_file(file, stdin), exposed=False, file=_path(file))
    raise TokenError(f"no token: give --token-file (or {TOKEN_FILE_VARIABLE}), or {TOKEN_VARIABLE}")


def read_token_file(path: str, stdin: TextIO) -> str:
    """The token in the file at `path`, or on the first line of `stdin` for `-`."""
    where = "standard input" if path == STDIN else f"token file {path}"
    try:
        if path == STDIN:
            text = stdin.readline()
        else:
            with open(path, encoding="utf-8") as file:
                text = file.read()
    except OSError as exc:
        raise TokenError(f"cannot read the {where}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise TokenError(f"the {where} is not text") from None
    return _one_token(text, where)


def _path(file: str) -> str | None:
    return None if file == STDIN else file


def _one_token(text: str, where: str) -> str:
    token = text.strip()
    if not token or len(token.split()) != 1:
        raise TokenError(f"the {where} must hold one token and nothing else")
    return token


def take_handed_over(environ: MutableMapping[str, str]) -> str | None:
    """The token a previous image of this process handed over (`reexecute_without_token`),
    or None when it did not. The variable naming the pipe is removed from `environ`."""
    descriptor = environ.pop(HANDOVER_VARIABLE, None)
    if descriptor is None:
        return None
    where = "token handed over to the re-executed executor"
    try:
        with os.fdopen(int(descriptor), "rb") as pipe:
            data = pipe.read()
    except (ValueError, OSError):
        raise TokenError(f"cannot read the {where}") from None
    try:
        return _one_token(data.decode(), where)
    except UnicodeDecodeError:
        raise TokenError(f"the {where} is not text") from None


def reexecute_without_token(token: str) -> NoReturn:
    """Execute this command line again (the same interpreter, arguments and environment)
    without RUNSVC_TOKEN and with the token cut out of every argument; the new image
    reads the token from an inherited pipe (`take_handed_over`). Only for the process's own
    command line: it replaces the process. OSError when the exec fails."""
    read_end, write_end = os.pipe()
    try:
        # A token is far smaller than a pipe's buffer: the write cannot block.
        os.write(write_end, token.encode())
    finally:
        os.close(write_end)
    os.set_inheritable(read_end, True)
    environment = {name: value for name, value in os.environ.items() if name != TOKEN_VARIABLE}
    environment[HANDOVER_VARIABLE] = str(read_end)
    # `--token X` becomes `--token ''` (and `--token=X` `--token=`), which counts as absent.
    argv = [argument.replace(token, "") for argument in sys.orig_argv]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, argv, environment)
    except OSError:
        os.close(read_end)
        raise
