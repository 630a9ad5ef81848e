"""`train` from weights whose heads differ from the cfg (COCO weights, a cfg retargeted to a few classes):
every layer that matches is loaded bit-identically, the head convolutions start from the seeded init of
training from scratch, and one warning line names them with their cfg lines.

The expected tensors are the ones written (seeded, by our writer on an 80-class cfg made by editing the cfg
text) or what OpenCV's darknet importer reads from the zoo's file; the head layers and their lines are
found by scanning the cfg text, not with our parser.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import (
    MODELS_DIR,
    REPO_CFG_DIR,
    SHARED_MARK,
    Warnings,
    nano_config,
    need_shared,
    section_headers,
)

from cfgsurgeon.convert import save_checkpoint
from cfgsurgeon.errors import WeightsError
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.weights import write_weights

torch = pytest.importorskip("torch")

from cfgsurgeon.emit.torch import DarknetModel, store_darknet_weights  # noqa: E402
from cfgsurgeon.train.trainer import load_graph, train  # noqa: E402

NANO = REPO_CFG_DIR / "yolo-nano.cfg"
OPENCV_BN_BLOBS = ("rolling_mean", "rolling_variance", "scales", "biases")  # OpenCV's BatchNorm blob order


def _with_classes(text: str, classes: int, old_classes: int, anchors: int = 3) -> str:
    """The cfg text with every head at ``classes`` and the convolution feeding it at the matching width."""
    old_filters, new_filters = anchors * (old_classes + 5), anchors * (classes + 5)
    assert text.count(f"filters={old_filters}\n") == text.count(f"classes={old_classes}\n") == 2
    text = text.replace(f"filters={old_filters}\n", f"filters={new_filters}\n")
    return text.replace(f"classes={old_classes}\n", f"classes={classes}\n")


def _head_convs(cfg: Path) -> dict[int, int]:
    """Layer index → cfg line of every section right before a [yolo] section."""
    headers = section_headers(cfg)[1:]  # [net] is no layer
    return {k - 1: headers[k - 1][0] for k, (_, name) in enumerate(headers) if name == "yolo"}


def _coco_shaped(tmp_path: Path, text: str, text_classes: int, file_classes: int, suffix: str):
    """The cfg ``text`` edited to ``file_classes`` with seeded weights, written as ``suffix``: (its path, the
    tensors written, layer by layer)."""
    cfg = tmp_path / f"coco-{file_classes}.cfg"
    cfg.write_text(_with_classes(text, file_classes, text_classes))
    graph = load_cfg(cfg, warn=lambda m: None)
    random_weights(graph, seed=11)
    written = {
        layer.index: {name: np.array(array) for name, array in layer.weights.items()}
        for layer in graph.layers
        if layer.weights
    }
    path = tmp_path / f"coco{suffix}"
    if suffix == ".weights":
        write_weights(graph, path)
    else:
        save_checkpoint(graph, path)
    return path, written


def _from_scratch(cfg: Path, seed: int):
    """The weights the trainer starts from without --weights: torch's init after manual_seed(seed)."""
    graph = load_cfg(cfg, warn=lambda m: None)
    torch.manual_seed(seed)
    store_darknet_weights(DarknetModel(graph), graph)
    return graph


@pytest.mark.parametrize("suffix", [".weights", ".pt"])
def test_coco_shaped_weights_load_into_a_4_class_cfg(tmp_path, suffix):
    cfg = tmp_path / "nano-4.cfg"
    cfg.write_text(_with_classes(NANO.read_text(), 4, 3))
    source, written = _coco_shaped(tmp_path, cfg.read_text(), 4, 80, suffix)
    heads = _head_convs(cfg)
    warnings = Warnings()
    graph = load_graph(cfg, source, warn=warnings, init_seed=5)
    scratch = _from_scratch(cfg, 5)
    for layer in graph.layers:
        if not layer.weight_layout():
            continue
        expected = scratch.layers[layer.index].weights if layer.index in heads else written[layer.index]
        assert set(layer.weights) == set(expected)
        for name, array in layer.weights.items():
            assert array.dtype == np.float32
            np.testing.assert_array_equal(array, expected[name], err_msg=f"layer {layer.index} {name}")
    assert all(graph.layers[k].weights["weights"].shape[0] == 27 for k in heads)
    assert graph.weights_header.seen == 0  # a changed model: darknet's burn-in runs again
    notes = list(warnings.matching("initialised"))
    assert len(notes) == 1 and "\n" not in notes[0]
    assert f"{len(heads)} layers" in notes[0]
    for index, line in heads.items():
        assert f"layer {index} [convolutional] (line {line})" in notes[0]
    if suffix == ".weights":
        assert "80 classes" in notes[0]


def test_the_initialised_heads_depend_on_the_seed(tmp_path):
    cfg = tmp_path / "nano-4.cfg"
    cfg.write_text(_with_classes(NANO.read_text(), 4, 3))
    source, _ = _coco_shaped(tmp_path, cfg.read_text(), 4, 80, ".weights")
    head = next(iter(_head_convs(cfg)))
    first, second = (load_graph(cfg, source, warn=Warnings(), init_seed=seed) for seed in (0, 1))
    assert not np.array_equal(first.layers[head].weights["weights"], second.layers[head].weights["weights"])


def test_matching_weights_load_as_before_without_a_warning(tmp_path):
    cfg = tmp_path / "nano-4.cfg"
    cfg.write_text(_with_classes(NANO.read_text(), 4, 3))
    source, written = _coco_shaped(tmp_path, NANO.read_text(), 3, 4, ".weights")  # a 4-class file
    warnings = Warnings()
    graph = load_graph(cfg, source, warn=warnings, init_seed=0)
    assert not list(warnings.matching("initialised"))
    for index, tensors in written.items():
        for name, array in tensors.items():
            np.testing.assert_array_equal(graph.layers[index].weights[name], array)


def test_a_file_no_class_count_fits_is_one_line_naming_its_size(tmp_path):
    cfg = tmp_path / "nano-4.cfg"
    cfg.write_text(_with_classes(NANO.read_text(), 4, 3))
    source, _ = _coco_shaped(tmp_path, cfg.read_text(), 4, 80, ".weights")
    with source.open("ab") as out:
        out.write(b"\0" * 4)  # one float too many for any class count
    size = source.stat().st_size
    with pytest.raises(WeightsError) as caught:
        load_graph(cfg, source, warn=Warnings(), init_seed=0)
    message = str(caught.value)
    assert "\n" not in message and str(source) in message and f"{size} bytes" in message
    assert "header +" in message and "classes" in message


def test_without_a_seed_the_file_must_fit_the_cfg(tmp_path):
    """The teacher of a distillation (and every reader but training) keeps the strict reading."""
    cfg = tmp_path / "nano-4.cfg"
    cfg.write_text(_with_classes(NANO.read_text(), 4, 3))
    source, _ = _coco_shaped(tmp_path, cfg.read_text(), 4, 80, ".weights")
    with pytest.raises(WeightsError, match="file too long"):
        load_graph(cfg, source, warn=Warnings())


def test_train_starts_from_coco_shaped_weights(tmp_path, nano):
    cfg, _ = nano  # 3 classes, like its synthetic data
    source, written = _coco_shaped(tmp_path, cfg.read_text(), 3, 80, ".weights")
    lines: list[str] = []
    config = nano_config(nano, tmp_path / "run", weights=source, epochs=1, max_steps=1)
    result = train(config, log=lines.append)
    assert sum("initialised as when training from scratch" in line for line in lines) == 1
    assert result.weights is not None and result.weights.exists()
    assert len(result.step_losses) == 1 and np.isfinite(result.step_losses[0])


@SHARED_MARK
def test_real_yolov3_tiny_retargeted_loads_what_opencv_reads(tmp_path):
    """The zoo's COCO yolov3-tiny into its cfg retargeted to 4 classes: every layer but the two head
    convolutions equals what OpenCV's darknet importer reads from the original file."""
    cv2 = pytest.importorskip("cv2")
    original = need_shared(MODELS_DIR / "yolov3-tiny.cfg")
    weights = need_shared(MODELS_DIR / "yolov3-tiny.weights")
    cfg = tmp_path / "yolov3-tiny-4.cfg"
    cfg.write_text(_with_classes(original.read_text(), 4, 80))
    heads = _head_convs(cfg)
    warnings = Warnings()
    graph = load_graph(cfg, weights, warn=warnings, init_seed=0)
    net = cv2.dnn.readNetFromDarknet(str(original), str(weights))
    names = set(net.getLayerNames())
    checked = 0
    for layer in graph.layers:
        if f"conv_{layer.index}" not in names or layer.index in heads:
            continue
        tensors = layer.weights
        np.testing.assert_array_equal(tensors["weights"], net.getParam(f"conv_{layer.index}", 0))
        if f"bn_{layer.index}" in names:
            for k, name in enumerate(OPENCV_BN_BLOBS):
                np.testing.assert_array_equal(tensors[name], net.getParam(f"bn_{layer.index}", k).ravel())
        else:
            np.testing.assert_array_equal(tensors["biases"], net.getParam(f"conv_{layer.index}", 1).ravel())
        checked += 1
    assert checked == 11  # yolov3-tiny's 13 convolutions less the two heads
    notes = list(warnings.matching("initialised"))
    assert len(notes) == 1 and "80 classes" in notes[0]
    for index, line in heads.items():
        assert f"layer {index} [convolutional] (line {line})" in notes[0]
