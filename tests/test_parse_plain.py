"""The line-by-line path of ``cfgsurgeon.parse`` (plain headers, options and comments) against the lark
parser of the grammar, which stays the authority: whenever the plain path accepts a text, lark reads the
same sections and line numbers from it without a warning; anything else (what lark refuses or warns about)
is left to lark. Checked on the whole cfg collection and on generated text."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CFG_DIR, REPO_CFG_DIR, SHARED_MARK
from hypothesis import given, settings
from hypothesis import strategies as st

from cfgsurgeon import parse
from cfgsurgeon.errors import CfgSyntaxError
from cfgsurgeon.parse import Section, _parser, _plain_sections, parse_text


def lark_sections(text: str) -> tuple[list[Section], list[str]]:
    """The grammar's parser on ``text``, and the warnings it gave."""
    warnings: list[str] = []
    token = parse._PARSING.set(("t.cfg", warnings))
    try:
        return _parser().parse(text), warnings
    finally:
        parse._PARSING.reset(token)


def as_read(path: Path) -> str:
    text = path.read_text(encoding="utf-8").removeprefix("\ufeff")
    return text if text.endswith("\n") else text + "\n"


@SHARED_MARK
def test_the_collection_reads_the_same_on_both_paths():
    paths = sorted(CFG_DIR.glob("*.cfg")) + sorted(REPO_CFG_DIR.glob("*.cfg"))
    plain_paths = 0
    for path in paths:
        text = as_read(path)
        plain = _plain_sections(text)
        sections, warnings = lark_sections(text)
        if plain is None:
            assert warnings, f"{path.name}: left to lark but lark finds nothing to say"
            continue
        plain_paths += 1
        assert plain == sections and warnings == [], path.name
    assert plain_paths >= len(paths) - 2


PIECES = [
    "[", "]", "net", "yolo", "conv_2", "=", ",", " ", "\t", "\r", "\f", "#", ";", "# c", "1", "-2", "+3",
    ".5", "1.", "1e3", "2E-2", "e", ".", "./a", "/x.cfg", "leaky", "a.b", "a-b", "_k", "\u00a0", "9x", "\v",
]  # fmt: skip
LINES = st.lists(st.sampled_from(PIECES), max_size=5).map("".join)
TEMPLATES = st.sampled_from(["{0}", "[{0}]", "{0}={1}", "{0} = {1}, {2}", "{0}={1}{2}"])
STRUCTURED = st.builds(lambda t, a, b, c: t.format(a, b, c), TEMPLATES, LINES, LINES, LINES)
# lines close to the plain ones: legal names, numbers and words, odd spacing and comments
BLANK = st.sampled_from(["", " ", "\t", "  ", "\r", " \f", "\u00a0"])
NAME = st.sampled_from(["net", "yolo", "k_2", "_x", "9x", "a-b"])
NUMBERS = st.lists(st.sampled_from(["1", "-2", "+3", ".5", "1.", "1e3", "2E-2", "1e", "4 5", ""]), min_size=1)
WORD = st.sampled_from(["leaky", "a.b", "./a", "/x.cfg", "_k", "a-b", "x9", "a=b", ".5x", "a b"])
COMMENT = st.sampled_from(["", "#", "; c", "# [x]=1"])
NEAR_PLAIN = st.one_of(
    st.builds("{0}[{0}{1}{0}]{0}{2}".format, BLANK, NAME, COMMENT),
    st.builds(
        "{0}{1}{0}={0}{2}{0}{3}".format,
        BLANK,
        NAME,
        st.one_of(WORD, st.builds(lambda b, n: f"{b},{b}".join(n), BLANK, NUMBERS)),
        COMMENT,
    ),
)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(LINES, STRUCTURED, NEAR_PLAIN, NEAR_PLAIN), min_size=1, max_size=4))
def test_generated_text_reads_the_same_on_both_paths(lines: list[str]):
    text = "[net]\n" + "\n".join(lines) + "\n"
    plain = _plain_sections(text)
    if plain is None:
        return
    sections, warnings = lark_sections(text)
    assert plain == sections and warnings == []


@pytest.mark.parametrize(
    "text",
    ["[net]\nwidth=1,\n", "[net]\nanchors=1 2\n", "width=3\n[net]\n", "[net]\nkey=\n", "[net] x\n"],
)
def test_what_lark_refuses_or_warns_about_is_left_to_lark(text: str):
    assert _plain_sections(text) is None
    warnings: list[str] = []
    try:
        parse_text(text, "t.cfg", warn=warnings.append)
    except CfgSyntaxError:
        return
    assert warnings
