"""Where `runsvc executor` takes its token from, in which order, and that no error says
what it read."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runsvc.executor.credential import Token, TokenError, resolve_token

SECRET = "rsv_abc_FromSomewhere"


def resolve(
    argument: str | None = None,
    file: str | None = None,
    stdin: str = "",
    **environ: str,
) -> Token:
    return resolve_token(argument=argument, file=file, environ=environ, stdin=io.StringIO(stdin))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text("rsv_file_token\n")
    return path


def test_flags_win_over_the_environment(token_file: Path) -> None:
    """--token, then --token-file, then RUNSVC_TOKEN, then RUNSVC_TOKEN_FILE."""
    env = {"RUNSVC_TOKEN": "rsv_env", "RUNSVC_TOKEN_FILE": str(token_file)}
    assert resolve("rsv_arg", **env) == Token("rsv_arg", exposed=True)
    assert resolve(file=str(token_file), **env) == Token(
        "rsv_file_token", exposed=True, file=str(token_file)
    )
    assert resolve(**env) == Token("rsv_env", exposed=True)
    assert resolve(RUNSVC_TOKEN_FILE=str(token_file)) == Token(
        "rsv_file_token", exposed=False, file=str(token_file)
    )


def test_a_file_alone_exposes_nothing(token_file: Path) -> None:
    """A token read from a file needs no re-execution unless RUNSVC_TOKEN is set too (the
    executor then sheds that variable, whatever it holds)."""
    assert not resolve(file=str(token_file)).exposed
    assert not resolve(file=str(token_file), RUNSVC_TOKEN="").exposed
    assert resolve(file=str(token_file), RUNSVC_TOKEN="rsv_other").exposed


def test_standard_input_gives_its_first_line() -> None:
    """`--token-file -` reads one line, so a person can type the token and press Enter."""
    found = resolve(file="-", stdin=f"{SECRET}\nmore input\n")
    assert found == Token(SECRET, exposed=False, file=None)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [("", "must hold one token"), (f"{SECRET} {SECRET}\n", "must hold one token")],
)
def test_a_file_must_hold_one_token(tmp_path: Path, content: str, complaint: str) -> None:
    """An empty file or one with more than a token is refused, without quoting it."""
    path = tmp_path / "token"
    path.write_text(content)
    with pytest.raises(TokenError, match=complaint) as refused:
        resolve(file=str(path))
    assert SECRET not in str(refused.value)


def test_errors_name_the_place_not_the_content(tmp_path: Path) -> None:
    """A missing file and a file that is not text: the message names the file."""
    with pytest.raises(TokenError, match=f"cannot read the token file {tmp_path}/absent"):
        resolve(file=str(tmp_path / "absent"))
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(TokenError, match="is not text") as refused:
        resolve(file=str(binary))
    assert "FromSomewhere" not in str(refused.value)


def test_no_token_or_two_kinds_of_flag_are_refused(token_file: Path) -> None:
    with pytest.raises(TokenError, match="no token"):
        resolve()
    with pytest.raises(TokenError, match="not both"):
        resolve("rsv_arg", str(token_file))
