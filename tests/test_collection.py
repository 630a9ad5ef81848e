"""The darknet cfg collection (../shared/zoo): what loads, what is refused and how, agreement with darknet's
own per-layer figures, and lossless cfg round trips. Parametrized per file so a failure names the cfg."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import (
    CFG_DIR,
    DARKNET_REFUSES,
    REPORT,
    SHARED_MARK,
    cached_graph,
    collection_cfgs,
    first_recurrent_header,
    loadable_cfgs,
    params_by_name,
    quiet,
    recurrent_cfgs,
    reference_tsv,
    refused_cfgs,
    section_headers,
)

from cfgsurgeon import CfgError, cfg_text, load_cfg, loads_cfg

pytestmark = SHARED_MARK

RECURRENT_MESSAGE = re.compile(r"unsupported layer \[(rnn|gru|lstm|crnn|conv_lstm)\] at .+\.cfg:\d+")

# Where darknet's table leaves a shape at 0 it did not compute one (batch-1 CPU build, see
# shared/zoo/darknet_reference/README.md): out_c/h/w stay 0 for these layer types ...
DARKNET_LEAVES_OUTPUT_UNSET = frozenset({"softmax", "cost", "contrastive", "detection"})
# ... and in_c/h/w stay 0 for these (dropout aliases its input buffer; cost only sets `inputs`).
DARKNET_LEAVES_INPUT_UNSET = frozenset({"dropout", "cost"})
# Darknet fills in_c/h/w with something that is not "the input shape" for these, so we do not compare them:
#   route: in_c is its own out_c and in_h/in_w are the first input layer's *input* size (parse_route);
#   detection: in_h/in_w are `side` (the grid), in_c stays 0.
DARKNET_INPUT_NOT_COMPARABLE = frozenset({"route", "detection"})
# [connected] flattens its input: darknet reports in = (inputs, 1, 1); we keep the C×H×W of the layer before.
DARKNET_FLATTENS_INPUT = frozenset({"connected"})


# -- the reference tables ----------------------------------------------------------------------------------
class Reference:
    """One darknet table: header totals and per-layer rows."""

    HEADER = re.compile(r"total BFLOPs ([0-9.]+), floats in a full \.weights file \(after the header\) (\d+)")

    def __init__(self, tsv: Path):
        lines = tsv.read_text().splitlines()
        match = self.HEADER.search(lines[0])
        assert match, f"unexpected header line in {tsv}: {lines[0]!r}"
        self.total_bflops = float(match.group(1))
        self.floats = int(match.group(2))
        columns = lines[1].split("\t")
        self.rows = [dict(zip(columns, line.split("\t"), strict=True)) for line in lines[2:] if line]

    @staticmethod
    def shape(row: dict[str, str], prefix: str) -> tuple[int, int, int]:
        return (int(row[f"{prefix}_c"]), int(row[f"{prefix}_h"]), int(row[f"{prefix}_w"]))


def _with_reference() -> list[Path]:
    return [path for path in loadable_cfgs() if reference_tsv(path) is not None]


# -- what loads and what is refused ------------------------------------------------------------------------
def test_collection_is_complete(shared: Path):
    """The counts the issue is written against: 87 cfgs, of which 6 recurrent and 4 refused resnets."""
    cfgs = collection_cfgs()
    assert cfgs == sorted((shared / "cfg").glob("*.cfg"))
    assert len(cfgs) == 87
    assert len(recurrent_cfgs()) == 6
    assert {path.stem for path in refused_cfgs()} == DARKNET_REFUSES
    assert len(loadable_cfgs()) == 77


def test_every_loadable_cfg_has_a_reference(shared: Path):
    """Darknet's tables exist for exactly the cfgs it loads; of those we refuse only the recurrent one(s)."""
    references = {tsv.stem for tsv in (shared / "darknet_reference").glob("*.tsv")}
    assert {path.stem for path in loadable_cfgs()} <= references
    extra = references - {path.stem for path in loadable_cfgs()}
    assert extra == {path.stem for path in recurrent_cfgs() if reference_tsv(path) is not None}
    assert extra, "expected the recurrent yolov3-tiny_occlusion_track to have a darknet table"


@pytest.mark.parametrize("cfg", params_by_name(loadable_cfgs()))
def test_loads(cfg: Path):
    graph = cached_graph(cfg)
    headers = section_headers(cfg)
    assert headers[0][1] in ("net", "network")
    assert [layer.header for layer in graph] == [name for _, name in headers[1:]]
    assert [layer.line for layer in graph] == [line for line, _ in headers[1:]]
    assert all(min(layer.out_shape) > 0 for layer in graph)


@pytest.mark.parametrize("cfg", params_by_name(recurrent_cfgs()))
def test_recurrent_is_refused(cfg: Path):
    with pytest.raises(CfgError) as caught:
        load_cfg(cfg, warn=quiet)
    message = str(caught.value)
    assert RECURRENT_MESSAGE.search(message), message
    assert "\n" not in message
    line, name = first_recurrent_header(cfg)
    assert f"[{name}] at {cfg}:{line}" in message


@pytest.mark.parametrize("cfg", params_by_name(refused_cfgs()))
def test_refused_resnet_names_the_shortcut(cfg: Path):
    with pytest.raises(CfgError) as caught:
        load_cfg(cfg, warn=quiet)
    message = str(caught.value)
    assert "\n" not in message
    assert "shortcut" in message
    match = re.search(r"\.cfg:(\d+): layer (\d+) \[shortcut\]", message)
    assert match, message
    line, index = int(match.group(1)), int(match.group(2))
    # the named index and line are those of a [shortcut] section of the file (index counts after [net])
    assert section_headers(cfg)[index + 1] == (line, "shortcut")
    shapes = re.findall(r"\b\d+x\d+x\d+\b", message)
    assert len(shapes) == 2 and shapes[0] != shapes[1], message
    # the two shapes differ in width x height (channels alone may differ in a darknet shortcut)
    assert shapes[0].rsplit("x", 1)[0] != shapes[1].rsplit("x", 1)[0]


# -- agreement with darknet's own figures ------------------------------------------------------------------
def _bflops_close(ours: float, darknet: float) -> bool:
    """Darknet prints BFLOPs rounded to 6 decimals."""
    return abs(ours - darknet) <= 1e-6 + 1e-5 * abs(darknet)


def _layer_mismatches(graph, reference: Reference) -> list[str]:
    found = []
    for layer, row in zip(graph, reference.rows, strict=True):
        kind = row["type"]
        where = f"layer {row['index']} [{kind}]"
        if int(row["index"]) != layer.index:
            found.append(f"{where}: index {layer.index}")
        if kind != layer.kind:
            found.append(f"{where}: type {layer.kind}")
        darknet_out = Reference.shape(row, "out")
        if darknet_out == (0, 0, 0):
            if kind not in DARKNET_LEAVES_OUTPUT_UNSET:
                found.append(f"{where}: darknet left the output unset, not expected for this type")
        elif darknet_out != layer.out_shape:
            found.append(f"{where}: output {layer.out_shape}, darknet {darknet_out}")
        darknet_in = Reference.shape(row, "in")
        if darknet_in == (0, 0, 0):
            if kind not in DARKNET_LEAVES_INPUT_UNSET:
                found.append(f"{where}: darknet left the input unset, not expected for this type")
        elif kind in DARKNET_FLATTENS_INPUT:
            c, h, w = layer.in_shape
            if darknet_in != (c * h * w, 1, 1):
                found.append(f"{where}: flattened input {c * h * w}, darknet {darknet_in}")
        elif kind not in DARKNET_INPUT_NOT_COMPARABLE and darknet_in != layer.in_shape:
            found.append(f"{where}: input {layer.in_shape}, darknet {darknet_in}")
        darknet_bflops = float(row["bflops"])
        if not _bflops_close(layer.bflops(), darknet_bflops):
            found.append(f"{where}: {layer.bflops():.9f} BFLOPs, darknet {darknet_bflops}")
    return found


_TOTAL_ERRORS: dict[str, float] = {}


@pytest.mark.parametrize("cfg", params_by_name(_with_reference()))
def test_matches_darknet(cfg: Path):
    graph = cached_graph(cfg)
    reference = Reference(reference_tsv(cfg))
    assert len(graph) == len(reference.rows)
    mismatches = _layer_mismatches(graph, reference)
    assert not mismatches, f"{len(mismatches)} mismatches, first: " + "; ".join(mismatches[:5])
    assert graph.params == reference.floats
    relative = abs(graph.bflops - reference.total_bflops) / reference.total_bflops
    _TOTAL_ERRORS[cfg.name] = relative
    worst = max(_TOTAL_ERRORS.items(), key=lambda item: item[1])
    REPORT["total BFLOPs vs darknet, max relative error"] = (
        f"{worst[1]:.3g} ({worst[0]}, over {len(_TOTAL_ERRORS)} cfgs)"
    )
    assert relative <= 1e-3, f"total {graph.bflops} BFLOPs, darknet {reference.total_bflops}"


def test_reference_comparison_is_not_vacuous():
    """The exemptions above cover only the layers darknet leaves unset: most layers are compared in full."""
    exempt_types = DARKNET_LEAVES_OUTPUT_UNSET | DARKNET_INPUT_NOT_COMPARABLE | DARKNET_LEAVES_INPUT_UNSET
    compared = exempt = 0
    for cfg in _with_reference():
        for row in Reference(reference_tsv(cfg)).rows:
            if row["type"] in exempt_types:
                exempt += 1
            else:
                compared += 1
    assert compared > 6000 and exempt < compared / 5


def test_a_wrong_shape_is_reported():
    """The comparison itself catches a difference (guards against a comparison that always passes)."""
    cfg = CFG_DIR / "yolov3-tiny.cfg"
    reference = Reference(reference_tsv(cfg))
    reference.rows[3] = dict(reference.rows[3], out_h="103", bflops="0.5")
    found = _layer_mismatches(cached_graph(cfg), reference)
    assert len(found) == 2 and all(item.startswith("layer 3 [maxpool]") for item in found)


# -- round trips -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", params_by_name(loadable_cfgs()))
def test_round_trip(cfg: Path):
    graph = cached_graph(cfg)
    text = cfg_text(graph)
    again = loads_cfg(text, f"{cfg.name} (written)", warn=quiet)
    assert again.signature() == graph.signature()
    assert cfg_text(again) == text
    assert again.params == graph.params


def _raw_option_values(path: Path, section: str, key: str) -> list[str]:
    """Values of ``key`` in every ``[section]`` of a file, read by hand: everything after the first '=' with
    whitespace deleted (as darknet does) and an inline comment dropped."""
    values, current = [], None
    for raw in path.read_text().splitlines():
        line = re.sub(r"[ \t\r]", "", raw)
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line.split("=", 1)[0] == key:
            values.append(re.split(r"[#;]", line.split("=", 1)[1])[0])
    return values


@pytest.mark.parametrize(
    ("name", "section", "count"), [("yolov4.cfg", "yolo", 3), ("yolov2-voc.cfg", "region", 1)]
)
def test_anchors_survive_character_for_character(name: str, section: str, count: int):
    cfg = CFG_DIR / name
    original = _raw_option_values(cfg, section, "anchors")
    assert len(original) == count
    written = cfg_text(cached_graph(cfg))
    anchors = [line.split("=", 1)[1] for line in written.splitlines() if line.startswith("anchors=")]
    assert anchors == original
    if section == "yolo":
        assert anchors[0] == "12,16,19,36,40,28,36,75,76,55,72,146,142,110,192,243,459,401"
    else:  # fractional anchors are not reformatted (no float round trip)
        assert anchors[0] == "1.3221,1.73145,3.19275,4.00944,5.05587,8.09892,9.47112,4.84053,11.2364,10.0071"
