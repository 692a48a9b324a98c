"""An attempt's outputs: what the task wrote to the file named by `$RUNSVC_OUTPUT`, in the
form GitHub Actions uses for `$GITHUB_OUTPUT`. A pure function of the file's bytes.

    version=1.2.3
    notes<<EOF
    first line
    second line
    EOF

- A line `key=value` sets `key` to the rest of the line after the first `=`; a line
  `key<<DELIMITER` sets `key` to the lines after it up to the first line that is exactly
  `DELIMITER`, joined with newlines (the newline before the delimiter line is not part of
  the value). Whichever of `=` and `<<` comes first in a line decides its form.
- Keys are a letter or `_`, then letters, digits or `_`. A key set twice keeps its last
  value, as in GitHub Actions, so a script may correct an output it wrote earlier.
- Lines end at `\\n`; a `\\r` is part of the line (a delimiter line `EOF\\r` does not close
  `EOF`). Empty lines between entries are skipped.
- The file is UTF-8 without NUL characters (the API refuses NUL in any string).

Anything else is refused with the line it is on, never guessed at: a line of neither
form, a bad key, a missing delimiter, a heredoc that is never closed. So is a file over
the limit: nothing is truncated.
"""

from __future__ import annotations

import re
from typing import Final

from runsvc.wire.executor import OUTPUT_NAME_PATTERN

OUTPUT_VARIABLE: Final = "RUNSVC_OUTPUT"
LIMIT_SETTING: Final = "RUNSVC_MAX_OUTPUT_BYTES"
_NAME = re.compile(OUTPUT_NAME_PATTERN)
_SHOWN = 40  # characters of a refused line quoted in the error: errors are stored in events


class OutputFileError(ValueError):
    """The output file is not a set of outputs; the message says where and why. `line`
    counts from 1 (None when the file as a whole is refused)."""

    def __init__(self, line: int | None, problem: str) -> None:
        where = f"${OUTPUT_VARIABLE}" + (f" line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")
        self.line = line


def parse_outputs(data: bytes, *, limit: int) -> dict[str, str]:
    """The outputs `data` (the output file's content) sets; OutputFileError when it holds
    more than `limit` bytes or is not in the form above."""
    if len(data) > limit:
        raise OutputFileError(
            None,
            f"holds more than {limit} bytes, the limit of an attempt's outputs ({LIMIT_SETTING})",
        )
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # what follows the last newline: nothing
    outputs: dict[str, str] = {}
    at = 0
    while at < len(lines):
        number = at + 1
        line = _text(lines[at], number)
        at += 1
        if not line:
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            key, value = line[:equals], line[equals + 1 :]
            _check_name(key, number)
        elif heredoc >= 0:
            key, delimiter = line[:heredoc], line[heredoc + 2 :]
            _check_name(key, number)
            if not delimiter:
                raise OutputFileError(number, f"{key}<< names no delimiter")
            body: list[str] = []
            while True:
                if at >= len(lines):
                    raise OutputFileError(
                        number,
                        f"{key}<<{_shown(delimiter)} is never closed by a line {_shown(delimiter)}",
                    )
                text = _text(lines[at], at + 1)
                at += 1
                if text == delimiter:
                    break
                body.append(text)
            value = "\n".join(body)
        else:
            raise OutputFileError(number, f"{_shown(line)} is neither key=value nor key<<DELIMITER")
        outputs[key] = value
    return outputs


def _text(raw: bytes, number: int) -> str:
    # One line at a time, so that an error names its line: no UTF-8 sequence holds a
    # newline byte, so decoding line by line accepts exactly what decoding the whole does.
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise OutputFileError(number, "is not UTF-8") from None
    if "\0" in text:
        raise OutputFileError(number, "holds a NUL character")
    return text


def _check_name(key: str, number: int) -> None:
    if not _NAME.fullmatch(key):
        raise OutputFileError(
            number,
            f"{_shown(key)} is not an output name (a letter or _, then letters, digits or _)",
        )


def _shown(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else repr(text[:_SHOWN]) + "…"
