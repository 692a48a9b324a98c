"""The output file's parser (`runsvc.executor.outputs`): the GitHub Actions form, every
refusal with its line, and properties over generated files."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runsvc.executor.outputs import OutputFileError, parse_outputs
from runsvc.wire.executor import OUTPUT_NAME_PATTERN

LIMIT = 64 * 1024


def parse(text: str | bytes, limit: int = LIMIT) -> dict[str, str]:
    return parse_outputs(text.encode() if isinstance(text, str) else text, limit=limit)


@pytest.mark.parametrize(
    ("text", "outputs"),
    [
        ("", {}),
        ("version=1.2.3\n", {"version": "1.2.3"}),
        ("a=1\nb=2", {"a": "1", "b": "2"}),  # no newline after the last line
        ("\n\na=1\n\n\nb=2\n\n", {"a": "1", "b": "2"}),  # empty lines are skipped
        ("url=https://x.test/?a=b&c=d\n", {"url": "https://x.test/?a=b&c=d"}),  # first = splits
        ("empty=\n", {"empty": ""}),
        ("spaced= a b \n", {"spaced": " a b "}),  # the value as it is
        ("shift=1<<2\n", {"shift": "1<<2"}),  # = before <<: a plain line
        ("notes<<EOF\none\ntwo\nEOF\n", {"notes": "one\ntwo"}),
        ("notes<<EOF\none\n\nEOF\n", {"notes": "one\n"}),  # a last empty line is kept
        ("notes<<EOF\nEOF\n", {"notes": ""}),
        ("notes<<EOF\n\nEOF\n", {"notes": ""}),
        ("notes<<EOF\nEOF", {"notes": ""}),  # the delimiter line may end the file
        ("n<<A=B\nx=1\nA=B\n", {"n": "x=1"}),  # << before =: the delimiter is A=B
        ("n<<EOF\nEOF \nEOF\n", {"n": "EOF "}),  # only an exact line closes it
        ("n<< END\nEND\n END\n", {"n": "END"}),  # the delimiter is all that follows <<
        ("a=1\na=2\n", {"a": "2"}),  # set twice: the last one counts
        ("a<<E\nx\nE\na=y\n", {"a": "y"}),
        ("a=b\r\n", {"a": "b\r"}),  # lines end at \n only
        ("_=x\nA_9=y\n", {"_": "x", "A_9": "y"}),
        ("grüße=𝄞 ✓\n", None),  # only ASCII names ...
        ("greeting=grüße 𝄞\n", {"greeting": "grüße 𝄞"}),  # ... but any text as values
    ],
)
def test_the_github_actions_form(text: str, outputs: dict[str, str] | None) -> None:
    """`key=value` lines and `key<<DELIMITER` blocks, as GitHub Actions reads them."""
    if outputs is None:
        with pytest.raises(OutputFileError):
            parse(text)
    else:
        assert parse(text) == outputs


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "a=1\njust words\n",
            "$RUNSVC_OUTPUT line 2: 'just words' is neither key=value nor key<<DELIMITER",
        ),
        ("a=1\n \n", "$RUNSVC_OUTPUT line 2: ' ' is neither key=value nor key<<DELIMITER"),
        (
            "\n\n9lives=1\n",
            "$RUNSVC_OUTPUT line 3: '9lives' is not an output name (a letter "
            "or _, then letters, digits or _)",
        ),
        ("=1\n", "$RUNSVC_OUTPUT line 1: '' is not an output name"),
        ("a b=1\n", "$RUNSVC_OUTPUT line 1: 'a b' is not an output name"),
        ("my-key=1\n", "$RUNSVC_OUTPUT line 1: 'my-key' is not an output name"),
        ("<<EOF\nx\nEOF\n", "$RUNSVC_OUTPUT line 1: '' is not an output name"),
        ("a=1\nnotes<<\nx\n", "$RUNSVC_OUTPUT line 2: notes<< names no delimiter"),
        (
            "a=1\nb=2\nnotes<<EOF\none\ntwo\n",
            "$RUNSVC_OUTPUT line 3: notes<<'EOF' is never closed by a line 'EOF'",
        ),
        ("notes<<EOF\nx\nEOF\r\n", "$RUNSVC_OUTPUT line 1: notes<<'EOF' is never closed"),
        ("a=1\nb=\xff\n".encode("latin-1"), "$RUNSVC_OUTPUT line 2: is not UTF-8"),
        ("a<<E\nok\nbad \xff\nE\n".encode("latin-1"), "$RUNSVC_OUTPUT line 3: is not UTF-8"),
        ("a=1\nb=x\0y\n", "$RUNSVC_OUTPUT line 2: holds a NUL character"),
        ("a<<E\n\0\nE\n", "$RUNSVC_OUTPUT line 2: holds a NUL character"),
        ("a" * 100 + "\n", "$RUNSVC_OUTPUT line 1: '" + "a" * 40 + "'… is neither"),
    ],
)
def test_a_malformed_file_is_refused_with_its_line(text: str | bytes, message: str) -> None:
    """Each refusal names the line (from 1) and says what is wrong with it; a long line
    is quoted only in part, since the error is stored in the attempt's events."""
    with pytest.raises(OutputFileError) as refused:
        parse(text)
    assert str(refused.value).startswith(message)
    assert refused.value.line == int(message.split("line ", 1)[1].split(":", 1)[0])


def test_a_file_over_the_limit_is_refused_whole() -> None:
    """A file of `limit` bytes is read; one byte more is refused, naming the limit and its
    setting, whatever it holds: nothing is truncated."""
    line = b"big=" + b"x" * 95 + b"\n"
    assert parse(line, limit=100) == {"big": "x" * 95}
    with pytest.raises(OutputFileError) as refused:
        parse(line + b"\n", limit=100)
    assert str(refused.value) == (
        "$RUNSVC_OUTPUT: holds more than 100 bytes, the limit of an attempt's outputs "
        "(RUNSVC_MAX_OUTPUT_BYTES)"
    )
    assert refused.value.line is None


names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"))
outputs = st.dictionaries(names, values, max_size=8)


def heredoc_form(written: dict[str, str]) -> bytes:
    """`written` as a script would write it: each value in a block, under a delimiter that
    is not a line of the value."""
    parts = []
    for key, value in written.items():
        delimiter = "EOF"
        while delimiter in value.split("\n"):
            delimiter += "_"
        parts.append(f"{key}<<{delimiter}\n{value}\n{delimiter}\n")
    return "".join(parts).encode()


@settings(max_examples=300)
@given(outputs)
def test_outputs_written_in_the_heredoc_form_parse_back(written: dict[str, str]) -> None:
    """Any outputs (any text as values: newlines, `=`, `<<`, carriage returns, empty)
    written in the heredoc form parse back to the same map."""
    assert parse(heredoc_form(written)) == written


@settings(max_examples=300)
@given(st.dictionaries(names, values.filter(lambda v: "\n" not in v), max_size=8))
def test_single_line_outputs_written_as_key_value_parse_back(written: dict[str, str]) -> None:
    """Values without a newline written as `key=value` lines parse back."""
    text = "".join(f"{key}={value}\n" for key, value in written.items())
    assert parse(text) == written


@settings(max_examples=300)
@given(outputs, outputs)
def test_a_key_written_again_keeps_its_last_value(
    first: dict[str, str], then: dict[str, str]
) -> None:
    """Writing more outputs after others is a merge in which the later win."""
    assert parse(heredoc_form(first) + heredoc_form(then)) == {**first, **then}


# Bytes built mostly from what the form is made of, so that the generated files reach
# deep into it (nested-looking heredocs, stray delimiters, bad names) and not only fail at
# their first line.
structural = st.lists(
    st.sampled_from([b"a", b"E", b"=", b"<<", b"<", b"\n", b"\r", b" ", b"-", b"\0", b"\xff"]),
    max_size=60,
).map(b"".join)


@settings(max_examples=1000)
@given(st.one_of(st.binary(max_size=200), structural), st.integers(0, 100))
def test_no_file_crashes_the_parser(data: bytes, limit: int) -> None:
    """Whatever the file holds, the parser returns outputs (with valid names, NUL-free
    values, no larger than the file) or refuses it with OutputFileError; never anything
    else."""
    refusal: OutputFileError | None = None
    try:
        parsed = parse(data, limit=limit)
    except OutputFileError as refused:
        refusal = refused
    if refusal is not None:
        assert refusal.line is None or 1 <= refusal.line <= data.count(b"\n") + 1
        return
    assert len(data) <= limit
    for key, value in parsed.items():
        assert re.fullmatch(OUTPUT_NAME_PATTERN, key)
        assert "\0" not in value
    assert sum(len(k.encode()) + len(v.encode()) for k, v in parsed.items()) <= len(data)
