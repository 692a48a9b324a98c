"""The executor's masker: a secret's value, and its base64 and URL-encoded forms, never
pass into the shipped log, wherever the output is cut; outputs holding one are told."""

from __future__ import annotations

import base64
import itertools
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runsvc.executor.agent import refuse_secrets
from runsvc.executor.masking import MASK, Masker, forms
from runsvc.executor.outputs import OutputFileError
from runsvc.executor.shipping import LogSpool

# `*` would let the mask itself spell a secret made of stars.
_TEXT = st.text(st.characters(blacklist_characters="*", blacklist_categories=("Cs",)))
_VALUES = st.text(
    st.characters(blacklist_characters="*", blacklist_categories=("Cs",)), min_size=1, max_size=40
)


def streamed(masker: Masker, pieces: list[str]) -> str:
    return "".join(masker.feed(piece) for piece in pieces) + masker.flush()


def cut(text: str, points: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@given(
    secrets=st.lists(_VALUES, min_size=1, max_size=3),
    before=_TEXT,
    after=_TEXT,
    points=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
    form=st.integers(min_value=0, max_value=2),
)
def test_any_value_at_any_split_point_is_masked(
    secrets: list[str], before: str, after: str, points: list[int], form: int
) -> None:
    """The stream, cut anywhere, masks as the whole text does, and holds no form of any
    secret afterwards."""
    value = secrets[0]
    shown = [value, base64.b64encode(value.encode()).decode(), quote(value, safe="")][form]
    text = before + shown + after
    masker = Masker(secrets)
    out = streamed(masker, cut(text, points))
    assert out == Masker(secrets).mask(text)
    for secret in secrets:
        for each in forms(secret):
            assert each not in out


def test_a_value_cut_in_every_place_of_a_line() -> None:
    """Byte by byte and at every split of two pieces."""
    value = "tok-3n/with+chars="
    encoded = base64.b64encode(value.encode()).decode()
    line = f"token is {value}; b64 {encoded}; url {quote(value, safe='')}\n"
    for split in range(len(line) + 1):
        out = streamed(Masker([value]), [line[:split], line[split:]])
        assert out == f"token is {MASK}; b64 {MASK}; url {MASK}\n"
    assert streamed(Masker([value]), list(line)) == f"token is {MASK}; b64 {MASK}; url {MASK}\n"


def test_no_secrets_passes_text_through_at_once() -> None:
    masker = Masker([])
    assert not masker
    assert masker.feed("abc") == "abc"
    assert masker.flush() == ""


def test_the_spool_masks_output_and_notes(tmp_path: Path) -> None:
    """What reaches the spool (and so the server and the disk) is masked, a value cut
    between two reads included, and a note holding one too."""
    spool = LogSpool(tmp_path / "log", masks=["s3cr3t"])
    spool.write(b"a s3c")
    spool.write(b"r3t b\n")
    spool.note("the task said s3cr3t")
    spool.write(b"s3cr")
    spool.finish_output()
    text = spool.read(0, 10_000).decode()
    spool.close()
    assert text == "a *** b\n[runsvc] the task said ***\ns3cr"
    assert "s3cr3t" not in (tmp_path / "log").read_text()


def test_an_output_holding_a_secret_is_refused_by_its_key() -> None:
    """The error names the output, not the value; an encoded form counts too."""
    value = "s3cr3t-v4lue"
    refuse_secrets({"ok": "fine"}, [value])
    with pytest.raises(OutputFileError) as refused:
        refuse_secrets(
            {"ok": "fine", "leak": f"x{base64.b64encode(value.encode()).decode()}"}, [value]
        )
    assert "output leak holds a secret's value" in str(refused.value)
    assert value not in str(refused.value)
