"""`retarget`: heads resized to N classes, every other tensor kept, inherited classes bit-identical — checked
with OpenCV's darknet importer (an independent reader of the written cfg/weights), not with our forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import MODELS_DIR, SHARED_MARK, need_shared

from cfgsurgeon import layers as L
from cfgsurgeon.cli import main
from cfgsurgeon.ir import load_cfg, loads_cfg
from cfgsurgeon.surgery.retarget import match_classes, retarget
from cfgsurgeon.weights import read_weights, write_weights

cv2 = pytest.importorskip("cv2")
REPO = Path(__file__).resolve().parents[1]
NANO = REPO / "cfg" / "yolo-nano.cfg"


def _nano_with_weights(tmp_path: Path) -> tuple[Path, Path]:
    result = CliRunner().invoke(main, ["init", "--cfg", str(NANO), "-o", str(tmp_path / "nano.weights")])
    assert result.exit_code == 0, result.output
    return NANO, tmp_path / "nano.weights"


def _conv_outputs(cfg: Path, weights: Path, size: int, head_convs: list[int]) -> list[np.ndarray]:
    """OpenCV's outputs of the darknet convolutions ``head_convs`` on a fixed random image."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.enableFusion(False)
    image = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
    net.setInput(image)
    names = {int(n.rsplit("_", 1)[1]): n for n in net.getLayerNames() if n.startswith("conv_")}
    return [np.asarray(out) for out in net.forward([names[i] for i in head_convs])]


def _head_convs(cfg: Path) -> list[int]:
    graph = load_cfg(cfg, warn=lambda m: None)
    return [layer.inputs[0].index for layer in graph.layers if isinstance(layer, L.ANCHOR_HEADS)]


def _class_rows(anchors: int, entries: int, classes: int, picks: list[int]) -> list[int]:
    """Rows of a head conv, per anchor: the box entries and objectness, then the picked classes."""
    per = entries + classes
    return [a * per + r for a in range(anchors) for r in [*range(entries), *(entries + c for c in picks)]]


def _check_against_opencv(
    cfg: Path, weights: Path, names_old: list[str], new: list[str], tmp: Path, size: int
):
    graph = load_cfg(cfg, warn=lambda m: None)
    read_weights(graph, weights)
    sources = match_classes(new, names_old)
    out = retarget(graph, len(new), sources)
    new_cfg, new_weights = tmp / "retargeted.cfg", tmp / "retargeted.weights"
    from cfgsurgeon.emit.cfg import write_cfg

    write_cfg(out, new_cfg)
    write_weights(out, new_weights)
    convs = _head_convs(cfg)
    before = _conv_outputs(cfg, weights, size, convs)
    after = _conv_outputs(new_cfg, new_weights, size, convs)
    heads = [layer for layer in graph.layers if isinstance(layer, L.ANCHOR_HEADS)]
    for head, old_out, new_out in zip(heads, before, after, strict=True):
        anchors = len(head.mask)
        assert new_out.shape[1] == anchors * (5 + len(new))
        kept = [k for k, s in enumerate(sources) if s is not None]
        rows_old = _class_rows(anchors, 5, head.classes, [sources[k] for k in kept])
        rows_new = _class_rows(anchors, 5, len(new), kept)
        np.testing.assert_array_equal(new_out[:, rows_new], old_out[:, rows_old])
    return out


@SHARED_MARK
def test_retargeted_yolov3_tiny_keeps_the_inherited_classes_in_opencv(tmp_path):
    """The zoo's COCO yolov3-tiny → bus/car/motorbike/truck: OpenCV loads the written model, and its head
    convolutions' box, objectness and inherited class channels are bit-identical to the original's."""
    need_shared(MODELS_DIR)
    coco = (MODELS_DIR / "coco.names").read_text().split("\n")
    new = ["bus", "car", "motorbike", "truck"]
    out = _check_against_opencv(
        MODELS_DIR / "yolov3-tiny.cfg", MODELS_DIR / "yolov3-tiny.weights", coco, new, tmp_path, 416
    )
    assert [layer.classes for layer in out.layers if isinstance(layer, L.Yolo)] == [4, 4]
    # 76 class rows fewer per anchor, 3 anchors, in the 1×1 head convs reading 512 and 256 channels (+ bias)
    assert out.params == 8_858_734 - 3 * 76 * ((512 + 1) + (256 + 1))


def test_retarget_with_fresh_and_inherited_classes_in_opencv(tmp_path):
    cfg, weights = _nano_with_weights(tmp_path)
    out = _check_against_opencv(cfg, weights, ["a", "b", "c"], ["c", "new", "a"], tmp_path, 128)
    other = load_cfg(cfg, warn=lambda m: None)
    read_weights(other, weights)
    head_convs = set(_head_convs(cfg))
    for layer, old in zip(out.layers, other.layers, strict=True):
        for name, value in (layer.weights or {}).items():
            if layer.index not in head_convs:
                np.testing.assert_array_equal(value, old.weights[name])


def test_retarget_leaves_its_input_alone_and_is_seeded():
    graph = loads_cfg(NANO.read_text(), warn=lambda m: None)
    from cfgsurgeon.randinit import random_weights

    random_weights(graph, seed=0)
    before = {layer.index: {k: v.copy() for k, v in (layer.weights or {}).items()} for layer in graph.layers}
    a, b = retarget(graph, 5, seed=3), retarget(graph, 5, seed=3)
    for layer in graph.layers:
        for name, value in (layer.weights or {}).items():
            np.testing.assert_array_equal(value, before[layer.index][name])
    for x, y in zip(a.layers, b.layers, strict=True):
        for name, value in (x.weights or {}).items():
            np.testing.assert_array_equal(value, y.weights[name])


def test_match_classes_by_name():
    assert match_classes(["Car", " bus", "zebra"], ["person", "bus", "car"]) == [2, 1, None]


def test_retarget_refuses_a_head_fed_by_batchnorm(tmp_path):
    text = NANO.read_text()
    head_conv = text.rindex("[convolutional]", 0, text.rindex("[yolo]"))
    cfg = tmp_path / "bn_head.cfg"
    cfg.write_text(text[:head_conv] + "[convolutional]\nbatch_normalize=1\n" + text[head_conv + 16 :])
    result = CliRunner().invoke(
        main, ["retarget", "--cfg", str(cfg), "--classes", "2", "-o", str(tmp_path / "o")]
    )
    assert result.exit_code != 0
    assert "bn_head.cfg:" in result.output and "plain convolution" in result.output
    assert "Traceback" not in result.output


def test_retarget_cli_needs_classes_or_names(tmp_path):
    result = CliRunner().invoke(main, ["retarget", "--cfg", str(NANO), "-o", str(tmp_path / "o")])
    assert result.exit_code != 0 and "--classes" in result.output


def test_retarget_cli_writes_seen_zero(tmp_path):
    cfg, weights = _nano_with_weights(tmp_path)
    names = tmp_path / "new.names"
    names.write_text("one\ntwo\n")
    result = CliRunner().invoke(
        main,
        [
            "retarget",
            "--cfg",
            str(cfg),
            "--weights",
            str(weights),
            "--names",
            str(names),
            "-o",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 0, result.output
    data = (tmp_path / "o" / "nano.weights").read_bytes()
    assert int(np.frombuffer(data[12:20], "<u8")[0]) == 0
    graph = load_cfg(tmp_path / "o" / "yolo-nano.cfg", warn=lambda m: None)
    assert {layer.classes for layer in graph.layers if isinstance(layer, L.Yolo)} == {2}
