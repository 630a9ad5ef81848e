"""The collection's xnor cfgs and YOLO9000's softmax-tree [region], end to end: they build and run in the
PyTorch backend with darknet's layer shapes, their ``.weights`` round-trip byte for byte, pruning leaves the
binarised convolutions whole, and the CLI answers in one line where it cannot help.

The layer semantics themselves (xnor/binary convolutions, the tree softmax) are checked against numpy
versions of darknet's formulas in ``test_torch_layers.py``; OpenCV ignores ``xnor=1`` (its float result is
compared up to the first xnor layer in ``test_torch_vs_opencv.py``) and refuses YOLO9000.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CFG_DIR, REFERENCE_DIR, SHARED_MARK, need_shared, quiet
from test_torch_tree import darknet_tree_groups

from cfgsurgeon import CfgError, load_cfg, loads_cfg, read_weights, write_weights
from cfgsurgeon import layers as L
from cfgsurgeon.ir import Graph

torch = pytest.importorskip("torch")

from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.emit.torch import binary_conv_activation, store_darknet_weights, to_torch  # noqa: E402
from cfgsurgeon.randinit import random_weights  # noqa: E402

XNOR_CFGS = ["yolov3-tiny_xnor.cfg", "tiny-yolo_xnor.cfg", "darknet53_448_xnor.cfg"]
SLOW = {"darknet53_448_xnor.cfg"}  # ~13 s at 448x448 on 2 cores
YOLO9000_CLASSES = 9418


def collection(name: str) -> Graph:
    return load_cfg(need_shared(CFG_DIR / name), warn=quiet)


def darknet_rows(name: str) -> list[dict[str, str]]:
    """darknet's own per-layer table (``darknet_reference/<cfg>.tsv``, printed at the cfg's input size)."""
    lines = need_shared(REFERENCE_DIR / name.replace(".cfg", ".tsv")).read_text().splitlines()
    columns = lines[1].split("\t")
    return [dict(zip(columns, line.split("\t"), strict=True)) for line in lines[2:] if line]


@SHARED_MARK
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in XNOR_CFGS]
)
def test_xnor_cfg_runs_with_darknets_shapes(name: str) -> None:
    """At the cfg's own size: every layer's output has darknet's size and is finite; every convolution's
    activation is the one darknet printed (``bin_output=1`` xnor layers become linear)."""
    graph = collection(name)
    random_weights(graph, seed=0)
    model = to_torch(graph)
    seen: dict[int, tuple[tuple[int, ...], bool]] = {}
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(
            lambda _m, _in, out, i=i: seen.__setitem__(i, (tuple(out.shape), bool(torch.isfinite(out).all())))
        )
    x = torch.from_numpy(np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32))
    with torch.no_grad():
        model(x)
    rows = darknet_rows(name)
    assert len(rows) == len(graph.layers) == len(seen)
    for layer, row in zip(graph.layers, rows, strict=True):
        shape, finite = seen[layer.index]
        expected = (int(row["out_c"]), int(row["out_h"]), int(row["out_w"]))
        assert finite, f"layer {layer.index}"
        if expected == (0, 0, 0):  # darknet's [softmax] leaves its out_c/out_h/out_w unset
            expected = (int(row["in_c"]), int(row["in_h"]), int(row["in_w"]))
        assert np.prod(shape[1:]) == np.prod(expected), (layer.index, shape, expected)
        if not isinstance(layer, L.Region):  # [region] is darknet's flat buffer
            assert shape[1:] == expected, (layer.index, shape, expected)
        if isinstance(layer, L.Convolutional):
            assert binary_conv_activation(layer) == row["activation"], layer.index
    assert sum(bool(layer.xnor) for layer in graph.layers if isinstance(layer, L.Convolutional)) >= 7


@SHARED_MARK
def test_xnor_weights_round_trip_byte_for_byte(tmp_path: Path) -> None:
    graph = collection("yolov3-tiny_xnor.cfg")
    random_weights(graph, seed=3)
    first, second = tmp_path / "a.weights", tmp_path / "b.weights"
    write_weights(graph, first)
    again = collection("yolov3-tiny_xnor.cfg")
    read_weights(again, first)
    store_darknet_weights(to_torch(again), again)
    write_weights(again, second)
    assert first.read_bytes() == second.read_bytes()


def synthetic_tree(path: Path, nodes: int, seed: int = 0) -> Path:
    """A WordTree-like file: runs of siblings of random sizes, each run's parent an earlier node."""
    rng = np.random.default_rng(seed)
    lines, parent = [], -1
    while len(lines) < nodes:
        for _ in range(min(int(rng.integers(1, 60)), nodes - len(lines))):
            lines.append(f"n{len(lines)} {parent}")
        parent = int(rng.integers(0, len(lines)))
    path.write_text("\n".join(lines) + "\n")
    return path


@SHARED_MARK
def test_yolo9000_runs_with_a_tree(tmp_path: Path) -> None:
    """yolo9000 at 64×64 with a synthetic 9418-node tree: finite; per box, logistic objectness and every
    tree group of the classes sums to 1."""
    tree = synthetic_tree(tmp_path / "9k.tree", YOLO9000_CLASSES)
    groups = darknet_tree_groups(tree.read_text())
    graph = collection("yolo9000.cfg")
    graph.net.width = graph.net.height = 64
    graph.infer()
    random_weights(graph, seed=0)
    x = torch.from_numpy(np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32))
    with torch.no_grad():
        (out,) = to_torch(graph, tree=tree)(x)
    region = graph.layers[-1]
    assert out.numel() == np.prod(region.out_shape)
    boxes = out.double().numpy().reshape(-1, 5 + YOLO9000_CLASSES)
    assert np.isfinite(boxes).all() and ((boxes[:, 4] > 0) & (boxes[:, 4] < 1)).all()
    starts = np.cumsum([0, *groups[:-1]])
    sums = np.add.reduceat(boxes[:, 5:], starts[np.array(groups) > 0], axis=1)
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    assert len(groups) > 200


@SHARED_MARK
def test_yolo9000_without_its_tree_file_is_one_line() -> None:
    graph = collection("yolo9000.cfg")
    with pytest.raises(
        CfgError, match=r"yolo9000\.cfg:217: layer 24 \[region\] tree=data/9k\.tree: file not found"
    ):
        to_torch(graph)


# -- pruning -------------------------------------------------------------------------------------------------


@SHARED_MARK
def test_pruning_leaves_binarised_convolutions_whole() -> None:
    """No unit reaching an xnor convolution (its inputs or outputs) is prunable; a slim prune of the rest
    equals the keep-size model with those channels switched off."""
    from cfgsurgeon.surgery.groups import analyse
    from cfgsurgeon.surgery.prune import prune

    graph = collection("yolov3-tiny_xnor.cfg")
    graph.net.width = graph.net.height = 128
    graph.infer()
    random_weights(graph, seed=0, dead_fraction=0.5)
    analysis = analyse(graph)
    xnor = [layer.index for layer in graph.layers if isinstance(layer, L.Convolutional) and layer.xnor]
    for i in xnor:
        assert not analysis.unit_prunable[analysis.output_units[i]].any(), i
        assert not analysis.unit_prunable[analysis.input_units[i][0]].any(), i
    result = prune(graph, "slim", percent=0.3)
    assert result.pruned.params < graph.params
    for i in xnor:
        assert result.pruned.layers[i].in_shape == graph.layers[i].in_shape
    x = torch.from_numpy(np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32))
    with torch.no_grad():
        ours, masked = to_torch(result.pruned)(x), to_torch(result.masked())(x)
    for a, b in zip(ours, masked, strict=True):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


# -- the CLI -------------------------------------------------------------------------------------------------


def _cli(*args: object):
    return CliRunner().invoke(main, [str(arg) for arg in args])


@SHARED_MARK
@pytest.mark.parametrize("name", [*XNOR_CFGS, "yolo9000.cfg"])
def test_inspect(name: str) -> None:
    result = _cli("-q", "inspect", "--cfg", need_shared(CFG_DIR / name))
    assert result.exit_code == 0, result.output
    assert "BFLOPs" in result.output


@SHARED_MARK
def test_tree_option_reaches_the_exporter(tmp_path: Path) -> None:
    cfg = need_shared(CFG_DIR / "yolo9000.cfg")
    out = tmp_path / "y.py"
    missing = _cli("-q", "export", "--format", "torch-source", "--cfg", cfg, "-o", out)
    assert missing.exit_code == 1
    assert "yolo9000.cfg:217:" in missing.output and "--tree FILE" in missing.output
    assert "Traceback" not in missing.output and len(missing.output.strip().splitlines()) == 1
    tree = synthetic_tree(tmp_path / "9k.tree", YOLO9000_CLASSES)
    done = _cli("-q", "--tree", tree, "export", "--format", "torch-source", "--cfg", cfg, "-o", out)
    assert done.exit_code == 0, done.output
    assert "self.l24_tree = GroupedSoftmax(" in out.read_text()
    absent = _cli("-q", "--tree", tmp_path / "nope.tree", "export", "--format", "torch-source", "--cfg", cfg)
    assert absent.exit_code != 0 and "Traceback" not in absent.output


def test_detect_refuses_a_tree_region_in_one_line(tmp_path: Path) -> None:
    """darknet's detector test cannot decode a tree [region] (hierarchy_top_prediction follows tree->child,
    which read_tree never fills): detect says so instead of printing made-up classes."""
    (tmp_path / "t.tree").write_text("a\nb\nc 0\nd 0\n")
    text = (
        "[net]\nwidth=32\nheight=32\nchannels=3\n\n[convolutional]\nfilters=18\nsize=1\nactivation=linear\n\n"
    )
    text += "[region]\nclasses=4\nnum=2\nanchors=1,1,2,2\nsoftmax=1\ntree=t.tree\n"
    cfg = tmp_path / "tree.cfg"
    cfg.write_text(text)
    graph = loads_cfg(text, str(cfg), warn=quiet)
    random_weights(graph, seed=0)
    write_weights(graph, tmp_path / "tree.weights")
    names = tmp_path / "names.txt"
    names.write_text("a\nb\nc\nd\n")
    photo = tmp_path / "photo.png"
    import cv2

    cv2.imwrite(str(photo), np.zeros((8, 8, 3), np.uint8))
    result = _cli(
        "-q", "detect", "--cfg", cfg, "--weights", tmp_path / "tree.weights", "--names", names, photo
    )
    assert result.exit_code == 1, result.output
    assert "softmax tree; detect does not decode those" in result.output
    assert len(result.output.strip().splitlines()) == 1


@SHARED_MARK
@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_yolo9000_tree_exports(backend: str, tmp_path: Path) -> None:
    """The grouped softmax survives export (gathers, softmaxes and one inverse gather): ≤ 1e-4 of torch."""
    pytest.importorskip(backend)
    from cfgsurgeon.runtimes import make_runner

    graph = collection("yolo9000.cfg")
    graph.net.width = graph.net.height = 64
    graph.infer()
    random_weights(graph, seed=0)
    graph.tree_file = str(synthetic_tree(tmp_path / "9k.tree", YOLO9000_CLASSES))
    x = np.random.default_rng(1).random((1, *graph.input_shape), dtype=np.float32)
    (ours,) = make_runner(graph, "torch")(x)
    (theirs,) = make_runner(graph, backend)(x)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(ours).max()
