"""Text → sections of options, each knowing its line (the grammar lives in ``grammars/darknet_cfg.lark``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from lark import Lark, Token, Transformer, UnexpectedInput, UnexpectedToken

from .errors import CfgSyntaxError, Location

Warn = Callable[[str], None]

GRAMMAR = Path(__file__).resolve().parent.parent / "grammars" / "darknet_cfg.lark"

_TERMINAL_NAMES = {
    "_NL": "end of line",
    "NAME": "a name",
    "NUMBER": "a number",
    "WORD": "a word",
    "EQUAL": "'='",
    "COMMA": "','",
    "LSQB": "'['",
    "RSQB": "']'",
    "$END": "end of file",
}


@dataclass
class Option:
    """One ``key=value`` line. ``value`` is the text darknet would see (whitespace removed)."""

    key: str
    value: str
    line: int = 0


@dataclass
class Section:
    """One ``[name]`` block with its options in file order."""

    name: str
    line: int = 0
    options: list[Option] = field(default_factory=list)


# the file name and the warnings of the parse under way: the transformer runs inside the one cached parser
_PARSING: ContextVar[tuple[str, list[str]]] = ContextVar("parsing")


class _ToSections(Transformer):
    @property
    def filename(self) -> str:
        return _PARSING.get()[0]

    def warn(self, message: str) -> None:
        _PARSING.get()[1].append(message)  # told once the whole file parses, as before a syntax error

    def start(self, sections: list[Section]) -> list[Section]:
        return sections

    def section(self, items: list) -> Section:
        name: Token = items[0]
        return Section(str(name), name.line, list(items[1:]))

    def option(self, items: list) -> Option:
        key: Token = items[0]
        return Option(str(key), items[1], key.line)

    def numbers(self, pieces: list) -> str:
        if isinstance(pieces[-1], Token):  # the trailing comma
            where = Location(self.filename, pieces[-1].line, pieces[-1].column)
            self.warn(f"{where}: trailing ',' ignored (darknet would read an extra value 0 here)")
            pieces = pieces[:-1]
        return ",".join(pieces)

    def trailing_comma(self, tokens: list[Token]) -> Token:
        return tokens[0]

    def glued(self, tokens: list[Token]) -> str:
        if len(tokens) > 1:
            where = Location(self.filename, tokens[0].line, tokens[0].column)
            spaced = " ".join(tokens)
            self.warn(
                f"{where}: '{spaced}' has no comma; darknet deletes the spaces and reads {''.join(tokens)}"
            )
        return "".join(tokens)

    def word(self, tokens: list[Token]) -> str:
        return str(tokens[0])


# The common case, line by line: blank and comment lines, "[name]" headers and "key=value" options whose value
# is one word or a comma list of plain numbers, each line as the grammar's tokens would read it. A text with
# any other line (anything the grammar refuses or warns about included) goes to the lark parser, so errors
# and warnings come from one place; tests check both give the same sections on the cfg collection and on
# generated text.
_BLANK = r"[ \t\f\r\v]*"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_WORD = r"(?:[A-Za-z_/]|\.(?!\d))[^\s#;=,\[\]]*"
_LINE = re.compile(
    rf"{_BLANK}(?:\[{_BLANK}(?P<section>{_NAME}){_BLANK}\]"
    rf"|(?P<key>{_NAME}){_BLANK}={_BLANK}(?P<value>{_WORD}|{_NUMBER}(?:{_BLANK},{_BLANK}{_NUMBER})*))?"
    rf"{_BLANK}(?:[#;][^\n]*)?"
)
_SPACES = re.compile(_BLANK)


def _plain_sections(text: str) -> list[Section] | None:
    """The sections of a text made only of plain lines (see above), else None."""
    sections: list[Section] = []
    for number, line in enumerate(text.split("\n"), start=1):
        found = _LINE.fullmatch(line)
        if found is None:
            return None
        name, key = found["section"], found["key"]
        if name is not None:
            sections.append(Section(name, number, []))
        elif key is not None:
            if not sections:
                return None
            sections[-1].options.append(Option(key, _SPACES.sub("", found["value"]), number))
    return sections


@cache
def _parser() -> Lark:
    return Lark(  # the transformer inline: sections as rules reduce, no parse tree built then walked
        GRAMMAR.read_text(),
        parser="lalr",
        propagate_positions=False,
        maybe_placeholders=False,
        transformer=_ToSections(),
    )


def parse_text(text: str, filename: str = "<string>", warn: Warn = print) -> list[Section]:
    """Parse cfg text into sections. Raises :class:`CfgSyntaxError` naming ``file:line:column``.

    ``warn`` receives one line per suspicious but legal construct (darknet accepts them silently).
    """
    text = text.removeprefix("\ufeff")
    if not text.endswith("\n"):
        text += "\n"
    plain = _plain_sections(text)
    if plain is not None:
        return plain
    warnings: list[str] = []
    parsing = _PARSING.set((filename, warnings))
    try:
        sections = _parser().parse(text)
    except UnexpectedInput as exc:
        raise CfgSyntaxError(_describe(exc, text), Location(filename, exc.line, exc.column)) from None
    finally:
        _PARSING.reset(parsing)
    for message in warnings:
        warn(message)
    return sections


def parse_file(path: str | Path, warn: Warn = print) -> list[Section]:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CfgSyntaxError(f"cannot read cfg: {exc.strerror}", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise CfgSyntaxError("not a text file (invalid UTF-8)", Location(str(path), line)) from None
    return parse_text(text, str(path), warn)


def _describe(exc: UnexpectedInput, text: str) -> str:
    if isinstance(exc, UnexpectedToken):
        token_type = exc.token.type
        found = _TERMINAL_NAMES[token_type] if token_type in ("_NL", "$END") else repr(str(exc.token))
        expected_names = exc.expected
    else:
        token_type = ""
        found = repr(text[exc.pos_in_stream]) if exc.pos_in_stream < len(text) else "end of file"
        expected_names = getattr(exc, "allowed", None) or ()
    expected = sorted({_TERMINAL_NAMES.get(name, name) for name in expected_names})
    message = f"expected {' or '.join(expected) or 'something else'}, found {found}"
    if "'='" in expected:
        message += " (options are written key=value)"
    elif token_type in ("NAME", "WORD") and "'['" in expected:
        message += " (options must follow a [section] header)"
    elif "a number" in expected and "a word" in expected:
        message += " (an option needs a value)"
    return message
