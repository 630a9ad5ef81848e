"""Keras files of the Keras backend: ``.keras`` (and SavedModel) files reload with identical outputs, every
custom layer included; ``.weights`` → Keras → ``.weights`` is byte-identical; ``export --format keras`` and
``detect --backend keras`` (darknet's lines for dog.jpg). Harness and comparisons: ``test_keras.py``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CFG_DIR, REPORT, SHARED_MARK, ZOO, quiet

from cfgsurgeon import UsageError, load_cfg, read_weights, write_weights
from cfgsurgeon.randinit import random_weights

keras = pytest.importorskip("tf_keras")

from test_keras import (  # noqa: E402
    CASES,
    CONV,
    EVEN,
    MODELS,
    STEM,
    collection,
    needs_yolov3_tiny,
    net,
    random_input,
    relative_errors,
    small,
    torch_outputs,
)

from cfgsurgeon.emit import keras as K  # noqa: E402  (after the importorskip)

# -- files ---------------------------------------------------------------------------------------------------


def test_keras_file_reloads_with_identical_outputs(tmp_path: Path) -> None:
    graph = collection("yolov4-tiny.cfg", 96) if CFG_DIR.is_dir() else small(net(3, 9, 11) + CASES["yolo"])
    path = tmp_path / "model.keras"
    model = K.write_keras(graph, path)
    reloaded = K.load_keras(path)
    x = random_input(graph)
    assert reloaded.output_names == model.output_names == K.output_names(graph)
    for ours, theirs in zip(K.run_keras(reloaded, x), K.run_keras(model, x), strict=True):
        np.testing.assert_array_equal(ours, theirs)


# op of a DarknetOp layer (or a custom layer class) → a case that uses it
CUSTOM = {
    "Act": "activation stair",
    "MaxPool": "maxpool 2/1 padding 2",
    "LocalAvgPool": "local_avgpool 4/4",
    "MaxPoolDepth": "maxpool_depth",
    "Slice": "route groups",
    "Subsample": "conv dilation 3 stride 2",
    "Crop": "crop",
    "Upsample": "upsample -3 scale 1.5",
    "WeightedSum": "shortcut per_channel softmax",
    "Scale": "scale_channels scale_wh",
    "Reorg": "reorg 2",
    "HeadAct": "yolo",
    "GaussianHeadAct": "Gaussian_yolo",
    "DistributionHeadAct": "anchor_free",
    "AnchorFreeBoxes": "anchor_free",
    "RegionAct": "region",
    "Softmax": "softmax groups temperature",
    "DetectionSoftmax": "detection softmax",
    "LRN": "normalization",
    "Implicit": "implicit",
    "BinaryConv": "conv xnor",
    "Blur": "conv antialiasing 1",
    "LocallyConnected": "local",
}
ALWAYS_STANDARD = {"Conv2d", "BatchNorm", "Linear", "Flatten", "Unflatten", "GlobalAvgPool", "Concat"}


def test_every_custom_layer_has_a_reload_case() -> None:
    """Every op that may run in a DarknetOp (tree softmaxes: test_softmax_tree_reloads_from_keras_file)."""
    ops = set(K.OPS) - ALWAYS_STANDARD - {"TreeSoftmax"}
    custom = {
        name
        for name, cls in vars(K).items()
        if isinstance(cls, type) and issubclass(cls, keras.layers.Layer) and cls.__module__ == K.__name__
    }
    assert ops | custom - {"DarknetOp"} == set(CUSTOM)


@pytest.mark.parametrize(("cls", "case"), CUSTOM.items(), ids=CUSTOM.keys())
def test_custom_layer_reloads_from_keras_file(tmp_path: Path, cls: str, case: str) -> None:
    """The .keras file rebuilds each custom layer from its config (and its variables, if any)."""
    graph = small((net(3, 10, 12) if case in EVEN else net(3, 9, 11)) + CASES[case] + "\n")
    path = tmp_path / "model.keras"
    model = K.write_keras(graph, path)
    assert cls in {
        layer.op if isinstance(layer, K.DarknetOp) else type(layer).__name__ for layer in model.layers
    }
    x = random_input(graph)
    for ours, theirs in zip(K.run_keras(K.load_keras(path), x), K.run_keras(model, x), strict=True):
        np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("suffix", [".keras", ""], ids=["keras-file", "saved-model"])
def test_mish_activation_reloads(tmp_path: Path, suffix: str) -> None:
    """mish is a standard Activation layer holding cfgsurgeon's registered function: both formats keep it."""
    graph = small(net(3, 9, 11) + CASES["conv groups"] + "\n")
    path = tmp_path / f"model{suffix}"
    model = K.write_keras(graph, path)
    reloaded = K.load_keras(path)
    x = random_input(graph)
    for ours, theirs in zip(K.run_keras(reloaded, x), K.run_keras(model, x), strict=True):
        np.testing.assert_array_equal(ours, theirs)
    assert reloaded.get_layer("l1_mish").activation is K.mish


@pytest.mark.slow
def test_saved_model_reloads_with_identical_outputs(tmp_path: Path) -> None:
    graph = small(net(3, 32, 32) + STEM + CASES["route groups"] + "\n\n" + CASES["yolo"] + "\n")
    path = tmp_path / "saved"
    model = K.write_keras(graph, path)
    assert (path / "saved_model.pb").is_file()
    x = random_input(graph)
    for ours, theirs in zip(K.run_keras(K.load_keras(path), x), K.run_keras(model, x), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_cli_exports_a_saved_model_directory_and_replaces_only_a_saved_model(tmp_path: Path) -> None:
    """`export --format keras -o DIR` (no suffix): a SavedModel, replaced by a second export; a directory
    that is not a SavedModel is refused with a one-line error and left as it was."""
    from cfgsurgeon.cli import main

    graph = small(net(3, 16, 16) + STEM + CASES["yolo"] + "\n")
    cfg, weights = tmp_path / "m.cfg", tmp_path / "m.weights"
    cfg.write_text(net(3, 16, 16) + STEM + CASES["yolo"] + "\n")
    write_weights(graph, weights)
    args = ["export", "--format", "keras", "--cfg", str(cfg), "--weights", str(weights), "-o"]
    saved = tmp_path / "saved"
    for _ in range(2):
        result = CliRunner().invoke(main, [*args, str(saved)])
        assert result.exit_code == 0, result.output
    x = random_input(graph)
    for ours, theirs in zip(K.run_keras(K.load_keras(saved), x), torch_outputs(graph, x), strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4 * np.abs(theirs).max())
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("mine")
    result = CliRunner().invoke(main, [*args, str(precious)])
    assert result.exit_code == 1 and "is not a SavedModel directory" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]


def test_write_refuses_other_suffixes(tmp_path: Path) -> None:
    graph = small(net(3, 8, 8) + CONV + "filters=2\nsize=1\n")
    with pytest.raises(UsageError, match=r"should end in \.keras"):
        K.write_keras(graph, tmp_path / "model.h5")


@SHARED_MARK
@pytest.mark.parametrize("name", ["yolov4-tiny.cfg", "yolov3-tiny_xnor.cfg"])
def test_weights_round_trip_is_byte_identical(name: str, tmp_path: Path) -> None:
    """.weights → Keras → store_weights into a weightless copy → .weights, byte for byte (xnor layers keep
    their float weights: they are binarised in the graph)."""
    graph = load_cfg(CFG_DIR / name, warn=quiet)
    random_weights(graph, seed=4)
    original = tmp_path / "original.weights"
    write_weights(graph, original)
    loaded = load_cfg(CFG_DIR / name, warn=quiet)
    read_weights(loaded, original)
    model = K.to_keras(loaded)
    blank = loaded.clone()
    for layer in blank.layers:
        layer.weights = None
    K.store_weights(model, blank)
    write_weights(blank, tmp_path / "again.weights")
    assert (tmp_path / "again.weights").read_bytes() == original.read_bytes()


def test_store_weights_sees_changes_made_in_keras() -> None:
    graph = small(net(3, 9, 11) + CASES["connected bn"] + "\n\n" + CASES["shortcut per_layer"] + "\n")
    model = K.to_keras(graph)
    conv = model.get_layer("l0_conv")
    conv.kernel.assign(conv.kernel * 0 + np.arange(conv.kernel.shape[-1], dtype=np.float32))
    model.get_layer("l1_fc").kernel.assign(model.get_layer("l1_fc").kernel * 2)
    before = graph.layers[1].weights["weights"].copy()
    K.store_weights(model, graph)
    assert (graph.layers[0].weights["weights"] == np.arange(6, dtype=np.float32)[:, None, None, None]).all()
    np.testing.assert_array_equal(graph.layers[1].weights["weights"], before * 2)


# -- the command line ----------------------------------------------------------------------------------------


@SHARED_MARK
@pytest.mark.slow
@needs_yolov3_tiny
def test_cli_export_and_detect_with_keras(tmp_path: Path) -> None:
    """`export --format keras`, then `detect --backend keras` with and without --model: darknet's lines."""
    from test_detect import REFERENCE, deviations

    from cfgsurgeon.cli import main

    model_args = ["--cfg", str(MODELS / "yolov3-tiny.cfg"), "--weights", str(MODELS / "yolov3-tiny.weights")]
    exported = tmp_path / "yolov3-tiny.keras"
    result = CliRunner().invoke(main, ["export", "--format", "keras", *model_args, "-o", str(exported)])
    assert result.exit_code == 0, result.output
    assert "outputs ['yolo_16', 'yolo_23']" in result.stdout
    photo = ZOO / "images" / "dog.jpg"
    reference = (REFERENCE / "dog.txt").read_text().splitlines()
    for extra in ([], ["--model", str(exported)]):
        start = time.perf_counter()
        args = ["detect", *model_args, "--names", str(MODELS / "coco.names"), "--backend", "keras", *extra]
        result = CliRunner().invoke(main, [*args, "-o", str(tmp_path / "out"), str(photo)])
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"{photo}: Predicted in")
        worst = deviations(lines[1:], reference)
        REPORT[f"detect --backend keras {'--model' if extra else '(in memory)'}, dog.jpg"] = (
            f"max prob deviation {worst[0]} points, box {worst[1]} px, {time.perf_counter() - start:.1f} s"
        )
        (tmp_path / "out" / "dog.png").unlink()


@SHARED_MARK
def test_runner_refuses_a_model_of_another_cfg(tmp_path: Path) -> None:
    from cfgsurgeon.runtimes import make_runner

    graph = small(net(3, 32, 32) + CASES["yolo"] + "\n")
    path = tmp_path / "other.keras"
    K.write_keras(graph, path)
    target = collection("yolov3-tiny.cfg", 64)
    with pytest.raises(UsageError, match=r"has outputs \['yolo_1'\], but the cfg's heads are"):
        make_runner(target, "keras", path)
    run = make_runner(graph, "keras", path)
    x = random_input(graph)
    (error,) = relative_errors(run(x), K.run_keras(K.load_keras(path), x))  # traced graph vs eager calls
    assert error < 1e-6
