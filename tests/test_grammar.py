"""The cfg grammar and parser: darknet's lenient formatting, precise file:line:column errors, and property
tests (formatting never changes the meaning; garbage never escapes as anything but a CfgSurgeonError)."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from conftest import CFG_DIR, HAVE_SHARED, REPO_CFG_DIR, Warnings, quiet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfgsurgeon import (
    CfgError,
    CfgSurgeonError,
    CfgSyntaxError,
    Graph,
    Location,
    cfg_text,
    load_cfg,
    loads_cfg,
)
from cfgsurgeon.parse import parse_file, parse_text

NET = "[net]\nwidth=8\nheight=8\nchannels=3\n"


def reduced(parsed) -> list[tuple[str, list[tuple[str, str]]]]:
    """Keep only what matters: section names and (key, value) pairs."""
    return [(s.name, [(o.key, o.value) for o in s.options]) for s in parsed]


def sections(text: str, warn=quiet) -> list[tuple[str, list[tuple[str, str]]]]:
    return reduced(parse_text(text, "f.cfg", warn))


def syntax_error(text: str) -> CfgSyntaxError:
    with pytest.raises(CfgSyntaxError) as caught:
        parse_text(text, "f.cfg", quiet)
    assert "\n" not in str(caught.value)
    return caught.value


# -- formatting darknet accepts ----------------------------------------------------------------------------
def test_minimal():
    parsed = parse_text("[net]\nwidth=416\n", "f.cfg", quiet)
    assert len(parsed) == 1
    assert (parsed[0].name, parsed[0].line) == ("net", 1)
    assert [(o.key, o.value, o.line) for o in parsed[0].options] == [("width", "416", 2)]


def test_comments_and_blank_lines():
    text = "# head\n; also\n\n[net]\n# c\nwidth=416 # inline\n\n;x=1\nheight=32;inline\n\n\n[yolo]\nnum=3#x\n"
    assert sections(text) == [("net", [("width", "416"), ("height", "32")]), ("yolo", [("num", "3")])]
    parsed = parse_text(text, "f.cfg", quiet)
    assert [o.line for o in parsed[0].options] == [6, 9]
    assert parsed[1].line == 12


def test_inline_comment_after_a_word_and_a_list():
    text = "[yolo]\nactivation=leaky ; hi\nmask = 0,1,2 # the first three\n"
    assert sections(text) == [("yolo", [("activation", "leaky"), ("mask", "0,1,2")])]


def test_crlf_bom_trailing_spaces_tabs():
    text = "\ufeff[net]  \r\n\twidth\t=\t416\t\r\n  height = 32   \r\n\r\n"
    parsed = parse_text(text, "f.cfg", quiet)
    assert sections(text) == [("net", [("width", "416"), ("height", "32")])]
    assert [o.line for o in parsed[0].options] == [2, 3]


def test_crlf_gives_the_same_sections_as_lf():
    text = NET + "[convolutional]\nfilters=16\nsize=3\nactivation=leaky\n"
    assert sections(text.replace("\n", "\r\n")) == sections(text)


def test_spaces_inside_section_brackets():
    assert sections("[ yolo ]\n[\tnet\t]\n[net ]\n") == [("yolo", []), ("net", []), ("net", [])]


def test_number_lists_with_spaces():
    text = "[yolo]\nmask = 0, 1 ,2\nanchors = 10,14,  23,27, 37,58\nscale=.1, -1e-3 ,+2.\n"
    assert sections(text) == [
        ("yolo", [("mask", "0,1,2"), ("anchors", "10,14,23,27,37,58"), ("scale", ".1,-1e-3,+2.")])
    ]


def test_numbers_and_words_are_kept_as_written():
    text = "[net]\nx=1.5e3\ny=.5\nz=-3\nw=a/b.c\nv=0.100\n"
    expected = [("x", "1.5e3"), ("y", ".5"), ("z", "-3"), ("w", "a/b.c"), ("v", "0.100")]
    assert sections(text) == [("net", expected)]


def test_numbers_separated_by_spaces_are_glued_with_a_warning():
    warnings = Warnings()
    assert sections("[yolo]\nanchors=10,14, 45 61,2\n", warnings) == [("yolo", [("anchors", "10,14,4561,2")])]
    assert len(warnings) == 1
    assert warnings[0].startswith("f.cfg:2:16: ")
    assert "'45 61'" in warnings[0] and "4561" in warnings[0]


def test_trailing_comma_is_dropped_with_a_warning():
    warnings = Warnings()
    assert sections("[yolo]\nmask=0,1,2,\n", warnings) == [("yolo", [("mask", "0,1,2")])]
    assert len(warnings) == 1
    assert warnings[0].startswith("f.cfg:2:11: ") and "trailing ','" in warnings[0]


def test_empty_text_has_no_sections():
    assert parse_text("", "f.cfg", quiet) == []
    assert parse_text("\n\n# only a comment\n", "f.cfg", quiet) == []


def test_no_final_newline():
    assert sections("[net]\nwidth=416") == [("net", [("width", "416")])]


# -- syntax errors name file:line:column -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "line", "column", "hint"),
    [
        pytest.param("x=1\n[net]\n", 1, 1, "must follow a [section]", id="option-before-section"),
        pytest.param("# c\n\n  width=1\n[net]\n", 3, 3, "must follow a [section]", id="indented-option"),
        pytest.param("[net]\nwidth 416\n", 2, 7, "key=value", id="missing-equals"),
        pytest.param("[net]\nwidth=\n", 2, 7, "needs a value", id="empty-value"),
        pytest.param("[net]\nwidth=  # nothing\n", 2, 18, "needs a value", id="empty-value-comment"),
        pytest.param("[net\nwidth=1\n", 1, 5, "expected ']'", id="unclosed-bracket"),
        pytest.param("[net]\nwidth=1 @\n", 2, 9, "'@'", id="garbage-after-value"),
        pytest.param("[net]\nwidth=1\n$$$\n", 3, 1, "'$'", id="garbage-line"),
        pytest.param("[net]\nwidth=1,,2\n", 2, 9, "','", id="double-comma"),
        pytest.param("[net]x=1\n", 1, 6, "end of line", id="option-on-header-line"),
        pytest.param("[]\n", 1, 2, "a name", id="empty-header"),
        pytest.param("[net]\r\nwidth=1\r\nheight 2\r\n", 3, 8, "key=value", id="crlf-line-numbers"),
        pytest.param("\ufeffx=1\n", 1, 1, "must follow a [section]", id="bom-does-not-shift-columns"),
    ],
)
def test_syntax_errors_locate_the_problem(text: str, line: int, column: int, hint: str):
    error = syntax_error(text)
    assert error.where == Location("f.cfg", line, column)
    assert str(error).startswith(f"f.cfg:{line}:{column}: ")
    assert hint in str(error)


def test_unreadable_and_non_utf8_files(tmp_path: Path):
    with pytest.raises(CfgSyntaxError, match=r"cannot read cfg"):
        parse_file(tmp_path / "missing.cfg", quiet)
    binary = tmp_path / "binary.cfg"
    binary.write_bytes(b"[net]\nwidth=1\n\xff\xfe\n")
    with pytest.raises(CfgSyntaxError, match=r"binary\.cfg:3: not a text file") as caught:
        parse_file(binary, quiet)
    assert caught.value.where.line == 3


# -- errors and warnings from the graph builder ------------------------------------------------------------
def load(text: str, warn=quiet):
    return loads_cfg(text, "f.cfg", warn=warn)


def cfg_error(text: str) -> CfgError:
    with pytest.raises(CfgError) as caught:
        load(text)
    assert "\n" not in str(caught.value)
    return caught.value


def test_unknown_layer_type():
    error = cfg_error(NET + "\n# two lines down\n[foo]\nx=1\n")
    assert re.match(r"unsupported layer \[foo\] at f\.cfg:7\b", str(error)), str(error)


@pytest.mark.parametrize("name", ["rnn", "gru", "lstm", "crnn", "conv_lstm"])
def test_recurrent_layer_types(name: str):
    error = cfg_error(NET + f"[convolutional]\nfilters=4\n[{name}]\noutput=4\n")
    assert str(error).startswith(f"unsupported layer [{name}] at f.cfg:7 ")


def test_unknown_option_warns_and_is_kept_verbatim():
    warnings = Warnings()
    text = NET + "[convolutional]\nfilters=4\nfoo_bar = abc\nbaz=1, 2 ,3\n"
    graph = load(text, warnings)
    assert [w for w in warnings if "unknown option" in w] == [
        "f.cfg:7: unknown option 'foo_bar' in [convolutional] (kept as written)",
        "f.cfg:8: unknown option 'baz' in [convolutional] (kept as written)",
    ]
    written = cfg_text(graph)
    assert "\nfoo_bar=abc\n" in written and "\nbaz=1,2,3\n" in written
    again = load(written)
    assert again.signature() == graph.signature()
    assert again[0].options == {"filters": "4", "foo_bar": "abc", "baz": "1,2,3"}


def test_repeated_option_warns_and_first_wins():
    warnings = Warnings()
    graph = load(NET + "[convolutional]\nfilters=4\nfilters=8\n", warnings)
    assert graph[0].out_shape == (4, 8, 8)
    assert list(warnings.matching(r"^f\.cfg:7: option 'filters' repeated; darknet uses the first \(line 6\)"))


def test_bad_integer_names_its_line():
    error = cfg_error(NET + "[convolutional]\nfilters=4\nsize=3\nstride=2.5\n")
    assert error.where == Location("f.cfg", 8)
    assert str(error).startswith("f.cfg:8: ") and "'stride'" in str(error) and "'2.5'" in str(error)


def test_unknown_activation_names_its_line():
    error = cfg_error(NET + "[convolutional]\nactivation=leakyy\n")
    assert error.where == Location("f.cfg", 6) and "leakyy" in str(error)


@pytest.mark.parametrize("value", ["1", "5", "-1"])
def test_route_must_point_backwards(value: str):
    text = NET + "[convolutional]\nfilters=4\n[route]\nlayers=" + value + "\n"
    if value == "-1":  # the layer before: fine
        assert load(text)[1].out_shape == (4, 8, 8)
        return
    error = cfg_error(text)
    assert error.where == Location("f.cfg", 8)
    assert f"'layers={value}'" in str(error) and "not an earlier layer" in str(error)


def test_route_to_itself_is_refused():
    error = cfg_error(NET + "[convolutional]\n[route]\nlayers=-1,0,1\n")
    assert "points at layer 1" in str(error)


@pytest.mark.parametrize(
    "text", [pytest.param("", id="empty"), pytest.param("[convolutional]\nfilters=4\n", id="conv-first")]
)
def test_net_section_is_required(text: str):
    error = cfg_error(text)
    assert "the first section must be [net]" in str(error)
    assert str(error).startswith("f.cfg")


def test_network_is_an_alias_of_net():
    graph = load("[network]\nwidth=4\nheight=4\nchannels=1\n[maxpool]\nsize=2\nstride=2\n")
    assert graph[0].out_shape == (1, 2, 2)


def test_net_needs_a_positive_input_size():
    assert "positive width, height and channels" in str(cfg_error("[net]\nwidth=8\nheight=8\n"))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("[convolutional]\nstride=0\n", id="conv-stride-0"),
        pytest.param("[convolutional]\nstride_x=2\nstride=0\n", id="conv-stride_y-falls-back-to-0"),
        pytest.param("[maxpool]\nstride=0\n", id="maxpool-stride-0"),
        pytest.param("[maxpool]\nsize=2\nstride_x=0\n", id="maxpool-stride_x-0"),
        pytest.param("[local_avgpool]\nstride_y=0\n", id="local_avgpool-stride_y-0"),
    ],
)
def test_zero_stride_is_a_cfg_error(body: str):
    """Regression: these raised ZeroDivisionError (a traceback) instead of a CfgError naming the layer."""
    error = cfg_error(NET + body)
    assert str(error).startswith("f.cfg:5: layer 0 [") and "stride" in str(error)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("[convolutional]\nfilters=-4\n", id="conv-filters"),
        pytest.param("[connected]\noutput=-3\n", id="connected-output"),
        pytest.param("[crop]\ncrop_height=-2\n", id="crop-height"),
        pytest.param("[implicit]\natoms=-1\n", id="implicit-atoms"),
    ],
)
def test_negative_output_size_is_a_cfg_error(body: str):
    cfg_error(NET + body)


# -- property tests ----------------------------------------------------------------------------------------
_SPACES = ["", "", "", " ", "  ", "\t", " \t "]
_COMMENT_TEXT = ["", " comment", " x = 1, 2", " [yolo]", "#;#", " ünïcödé ✓", "=", "\t[net]\t", " a=1,2"]
_HEADER_LINE = re.compile(r"^\s*\[\s*([A-Za-z_]\w*)\s*\]\s*$")
_OPTION_LINE = re.compile(r"^\s*([A-Za-z_]\w*)\s*=([^#;]*)([#;].*)?$")


def reformat(
    text: str, rnd: random.Random, newline: str, bom: bool, final_newline: bool, insert: float = 0.15
) -> str:
    """The same cfg written differently, in every way darknet (which deletes spaces, tabs and CRs from each
    line, and skips blank lines and lines starting with # or ;) reads identically."""

    def ws() -> str:
        return rnd.choice(_SPACES)

    def comment() -> str:
        return rnd.choice("#;") + rnd.choice(_COMMENT_TEXT)

    lines = []
    for raw in text.splitlines():
        while rnd.random() < insert:  # inserted blank or comment lines
            lines.append(ws() + (comment() if rnd.random() < 0.6 else ""))
        header, option = _HEADER_LINE.match(raw), _OPTION_LINE.match(raw)
        if header:
            lines.append(f"{ws()}[{ws()}{header.group(1)}{ws()}]{ws()}")
        elif option:
            key, value, old_comment = option.groups()
            pieces = [piece.strip() for piece in value.split(",")]
            line = f"{ws()}{key}{ws()}={ws()}" + f"{ws()},{ws()}".join(pieces) + ws()
            if old_comment:
                line += old_comment
            elif rnd.random() < 0.2:
                line += ws() + comment()
            lines.append(line)
        else:  # comments and blank lines of the original stay as they are
            lines.append(raw)
    if newline == "mixed":
        out = "".join(line + rnd.choice(["\n", "\r\n"]) for line in lines)
    else:
        out = newline.join(lines) + newline
    if not final_newline:
        out = out.rstrip("\r\n")
    return ("\ufeff" if bom else "") + out


def _property_cfgs() -> list[Path]:
    cfgs = sorted(REPO_CFG_DIR.glob("*.cfg"))
    if HAVE_SHARED:
        names = ["yolov3-tiny", "yolov4-tiny", "yolov7-tiny", "efficientnet_b0"]
        cfgs += [CFG_DIR / f"{name}.cfg" for name in names]
    return cfgs


PROPERTY_CFGS = _property_cfgs()
_ORIGINALS: dict[Path, tuple] = {}


def _original(path: Path) -> tuple:
    if path not in _ORIGINALS:
        text = path.read_text()
        _ORIGINALS[path] = (text, sections(text), load_cfg(path, warn=quiet).signature())
    return _ORIGINALS[path]


def test_reformat_changes_the_text():
    """The variations are real (guards against a reformatter that returns its input)."""
    text = (REPO_CFG_DIR / "yolo-nano.cfg").read_text()
    variant = reformat(text, random.Random(1), "\r\n", True, True)
    assert variant != text and variant.startswith("\ufeff") and "\r\n" in variant
    assert re.search(r"^[ \t]*[#;]", variant, re.M)
    assert sections(variant) == sections(text)


# A seed drives the per-line choices (a cfg has hundreds of lines: drawing each choice from hypothesis would
# exceed its data budget); hypothesis picks the cfg, the seed and the file-wide choices.
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    index=st.integers(0, len(PROPERTY_CFGS) - 1),
    seed=st.integers(0, 2**32 - 1),
    newline=st.sampled_from(["\n", "\r\n", "mixed"]),
    bom=st.booleans(),
    final_newline=st.booleans(),
    insert=st.sampled_from([0.0, 0.15, 0.5]),
)
def test_formatting_does_not_change_the_graph(index, seed, newline, bom, final_newline, insert):
    path = PROPERTY_CFGS[index]
    text, parsed, signature = _original(path)
    variant = reformat(text, random.Random(seed), newline, bom, final_newline, insert)
    parsed_variant = parse_text(variant, path.name, quiet)
    assert reduced(parsed_variant) == parsed
    assert Graph.from_sections(parsed_variant, path.name, quiet).signature() == signature


def _assert_clean_failure_or_success(text: str) -> None:
    try:
        graph = loads_cfg(text, "g.cfg", warn=quiet)
    except CfgSurgeonError as exc:  # anything else (ZeroDivisionError, lark internals, ...) fails the test
        message = str(exc)
        assert message and "\n" not in message, repr(message)
    else:
        assert graph.signature() == loads_cfg(cfg_text(graph), "g2.cfg", warn=quiet).signature()


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=300))
def test_unicode_garbage_fails_cleanly(text: str):
    _assert_clean_failure_or_success(text)


_FRAGMENTS = [
    "[", "]", "=", ",", "\n", "\n", "\n", "\r\n", " ", "\t", "#", ";", "-", ".", "e", "\ufeff",
    "0", "1", "2", "3", "8", "-1", "-2", "16", "0.5",
    "conv", "net", "yolo", "route", "maxpool", "shortcut", "upsample", "avgpool", "connected", "reorg",
    "filters", "size", "stride", "stride_x", "pad", "groups", "layers", "from", "mask", "num", "classes",
    "activation", "leaky", "linear", "batch_normalize", "share_index", "weights_type", "per_channel",
    "[convolutional]\n", "[maxpool]\n", "[route]\n", "[shortcut]\n", "[yolo]\n", "[upsample]\n",
    "[reorg3d]\n", "[connected]\n", "[scale_channels]\n", "[sam]\n", "[avgpool]\n", "[implicit]\n",
    "filters=", "size=", "stride=", "layers=", "from=", "groups=", "\nfilters=4\n", "\nsize=3\npad=1\n",
]  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(
    prefix=st.sampled_from(["", NET, "[net]\nwidth=416\nheight=416\nchannels=3\n"]),
    pieces=st.lists(st.sampled_from(_FRAGMENTS), max_size=60),
)
def test_cfg_like_garbage_fails_cleanly(prefix: str, pieces: list[str]):
    _assert_clean_failure_or_success(prefix + "".join(pieces))


_LAYER_TYPES = [
    "convolutional", "connected", "maxpool", "local_avgpool", "avgpool", "route", "shortcut",
    "scale_channels", "sam", "upsample", "reorg3d", "reorg", "yolo", "Gaussian_yolo", "region", "detection",
    "softmax", "dropout", "batchnorm", "activation", "crop", "cost", "contrastive", "empty", "implicit",
    "normalization",
]  # fmt: skip
_KEYS = [
    "filters", "size", "stride", "stride_x", "stride_y", "pad", "padding", "groups", "layers", "from", "mask",
    "num", "classes", "activation", "batch_normalize", "share_index", "weights_type", "output", "dilation",
    "antialiasing", "reverse", "scale_wh", "maxpool_depth", "out_channels", "crop_height", "crop_width",
    "atoms", "yolo_layer", "group_id", "coords", "xnor", "anchors",
]  # fmt: skip
# Small values only: a huge `num` in [yolo] makes darknet (and us) build a mask list that long.
_VALUES = ["0", "1", "2", "3", "4", "-1", "-2", "-3", "8", "16", "0.5", "leaky", "linear", "per_channel",
           "per_feature", "1,2", "-1,-2", "0,1,2", "-1,0"]  # fmt: skip
_OPTION = st.tuples(st.sampled_from(_KEYS), st.sampled_from(_VALUES)).map(lambda kv: f"{kv[0]}={kv[1]}\n")
_SECTION = st.tuples(st.sampled_from(_LAYER_TYPES), st.lists(_OPTION, max_size=5)).map(
    lambda section: f"[{section[0]}]\n" + "".join(section[1])
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_SECTION, max_size=8))
def test_well_formed_nonsense_fails_cleanly(layers: list[str]):
    """Well-formed cfgs with random layers and options exercise the shape rules, not only the parser."""
    _assert_clean_failure_or_success(NET + "".join(layers))
