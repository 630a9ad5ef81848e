"""``sparsify``: TFMOT magnitude pruning written back as darknet ``.weights``.

Checked on the written ``.weights`` files, read back and compared with numpy against the originals:

* every pruned layer's kernel sparsity is the target ±1 %, and the zeros are the smallest magnitudes
  (every zeroed weight, or block, is no larger than every kept one);
* protected layers (first/last convolutions, those feeding a [yolo] head, --skip-layers) are byte-identical,
  and so are the biases / BN tensors of every layer;
* with ``--block-size 4,4`` every zero of a convolution lies in a whole 4×4 block of one tap's
  (in × out) matrix;
* the schedule is TFMOT's PolynomialDecay (checked against its formula) and a pruned model's Keras/TFLite
  outputs match torch;
* gzip of 50 %-sparse ``.weights`` / ``.tflite`` is measurably smaller than of the dense ones.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CFG_DIR, REPORT, SHARED_MARK, ZOO, quiet

from cfgsurgeon import load_cfg, read_weights, write_weights
from cfgsurgeon.ir import Graph
from cfgsurgeon.randinit import random_weights

pytest.importorskip("tensorflow_model_optimization")

from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.sparsify import magnitude as M  # noqa: E402
from cfgsurgeon.sparsify.selection import plan  # noqa: E402

MODELS = ZOO / "models"
needs_yolov3_tiny = pytest.mark.skipif(
    not (MODELS / "yolov3-tiny.weights").is_file(), reason="needs the shared zoo (yolov3-tiny.weights)"
)
# yolov4-tiny.cfg: conv 0 reads the image, [yolo] layers are 30 and 37, read from convs 29 and 36 (the last)
YOLOV4_TINY_PROTECTED = {0, 29, 36}
# yolov3-tiny.cfg: conv 0 first, [yolo] 16 reads conv 15, [yolo] 23 reads conv 22 (the last)
YOLOV3_TINY_PROTECTED = {0, 15, 22}


def small_model(tmp_path: Path, name: str = "yolov4-tiny.cfg", size: int = 128) -> tuple[Path, Path]:
    """A cfg at ``size`` (written out) with well-conditioned random weights."""
    text = (CFG_DIR / name).read_text()
    cfg = tmp_path / name
    cfg.write_text(text.replace("width=416", f"width={size}").replace("height=416", f"height={size}"))
    graph = load_cfg(cfg, warn=quiet)
    random_weights(graph, seed=0)
    weights = tmp_path / "dense.weights"
    write_weights(graph, weights)
    return cfg, weights


def read(cfg: Path, weights: Path) -> Graph:
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)
    return graph


def run_cli(*args: str) -> str:
    result = CliRunner().invoke(main, [*map(str, args)])
    assert result.exit_code == 0, result.output
    return result.stdout


def conv_layers(graph: Graph) -> dict[int, np.ndarray]:
    return {layer.index: layer.weights["weights"] for layer in graph.layers if layer.kind == "convolutional"}


def check_pruned(dense: Graph, sparse: Graph, protected: set[int], target: float) -> dict[int, float]:
    """The acceptance checks shared by the cases; returns each pruned layer's sparsity."""
    found = {}
    for index, before in conv_layers(dense).items():
        after = sparse.layers[index].weights["weights"]
        for name, tensor in dense.layers[index].weights.items():  # biases, BN: never pruned
            if name != "weights" or index in protected:
                assert sparse.layers[index].weights[name].tobytes() == tensor.tobytes(), (index, name)
        if index in protected:
            continue
        zero = after == 0
        found[index] = float(zero.mean())
        assert abs(found[index] - target) <= 0.01, (index, found[index])
        np.testing.assert_array_equal(after[~zero], before[~zero])  # kept weights unchanged
    return found


def smallest_zeroed(before: np.ndarray, after: np.ndarray) -> None:
    zero = after == 0
    assert np.abs(before[zero]).max() <= np.abs(before[~zero]).min()


def tap_blocks(kernel: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """darknet kernel (out, in, kh, kw) → per tap (in × out) cut into blocks: (kh, kw, in/r, r, out/c, c)."""
    out, cin, kh, kw = kernel.shape
    return kernel.transpose(2, 3, 1, 0).reshape(kh, kw, cin // rows, rows, out // cols, cols)


# -- selection (IR only) -------------------------------------------------------------------------------------


@SHARED_MARK
def test_default_protection_and_options() -> None:
    graph = load_cfg(CFG_DIR / "yolov4-tiny.cfg", warn=quiet)
    assert set(plan(graph).dense) == YOLOV4_TINY_PROTECTED
    assert set(plan(graph, skip=[2, 5]).dense) == YOLOV4_TINY_PROTECTED | {2, 5}
    assert plan(graph, whole_model=True).dense == {}
    assert set(plan(graph, whole_model=True, skip=[3 - 1]).dense) == {2}
    assert set(plan(load_cfg(CFG_DIR / "yolov3-tiny.cfg", warn=quiet)).dense) == YOLOV3_TINY_PROTECTED


@SHARED_MARK
def test_blocks_leave_out_layers_that_are_no_whole_number_of_blocks() -> None:
    graph = load_cfg(CFG_DIR / "yolov4-tiny.cfg", warn=quiet)
    layers = plan(graph, whole_model=True, block=(4, 4))
    assert "not a whole number of 4×4 blocks" in layers.dense[0]  # 3 input channels
    assert "not a whole number" in layers.dense[29]  # 255 filters
    assert 1 in layers.pruned


# -- the schedule --------------------------------------------------------------------------------------------


def test_schedule_is_tfmot_polynomial_decay() -> None:
    schedule = M.Schedule(
        final_sparsity=0.8, initial_sparsity=0.2, begin_step=100, end_step=600, frequency=50
    )
    for step in (0, 100, 225, 350, 600, 900):
        progress = min(max((step - 100) / 500, 0.0), 1.0)
        expected = 0.8 + (0.2 - 0.8) * (1 - progress) ** 3
        assert schedule.sparsity_at(step) == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--end-step", "950"], "must be a multiple of the frequency"),
        (["--block-size", "4x4"], "--block-size takes two integers"),
        (["--skip-layers", "3"], "--skip-layers [3]: not convolutional"),
        (["--quantize", "int8"], "--quantize int8 needs --calibration"),
        (["--fine-tune"], "--fine-tune needs --data"),
        (["--initial-sparsity", "0.7"], "initial sparsity (0.7) <= final sparsity"),
    ],
)
@SHARED_MARK
def test_mistakes_are_one_line_errors(tmp_path: Path, args: list[str], message: str) -> None:
    cfg, weights = small_model(tmp_path, size=64)
    result = CliRunner().invoke(
        main, ["sparsify", "--cfg", cfg, "--weights", weights, "-o", tmp_path / "o", *args]
    )
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


# -- one-shot pruning on yolov4-tiny -------------------------------------------------------------------------


@SHARED_MARK
@pytest.mark.parametrize("target", [0.5, pytest.param(0.8, marks=pytest.mark.slow)])
def test_one_shot_unstructured(tmp_path: Path, target: float) -> None:
    cfg, weights = small_model(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "sparse.tflite").write_bytes(b"an earlier run's model")
    printed = run_cli(
        "sparsify", "--cfg", cfg, "--weights", weights, "--final-sparsity", target, "--no-tflite", "-o", out
    )
    assert not (out / "sparse.tflite").exists() and "sparse.tflite" not in printed
    dense, sparse = read(cfg, weights), read(cfg, out / "sparse.weights")
    found = check_pruned(dense, sparse, YOLOV4_TINY_PROTECTED, target)
    assert len(found) == 18
    for index in found:
        smallest_zeroed(dense.layers[index].weights["weights"], sparse.layers[index].weights["weights"])
    report = json.loads((out / "report.json").read_text())
    assert {row["layer"]: row["sparsity"] for row in report["layers"] if row["target"]} == pytest.approx(
        found
    )
    REPORT[f"sparsify yolov4-tiny one-shot {target}"] = (
        f"{len(found)} layers, sparsity {min(found.values()):.4f}–{max(found.values()):.4f}"
    )


@SHARED_MARK
@pytest.mark.parametrize(
    "block", [pytest.param((4, 4), id="4x4"), pytest.param((1, 16), id="1x16", marks=pytest.mark.slow)]
)
def test_one_shot_blocks(tmp_path: Path, block: tuple[int, int]) -> None:
    cfg, weights = small_model(tmp_path)
    out = tmp_path / "out"
    rows, cols = block
    args = ["--block-size", f"{rows},{cols}", "--skip-layers", "5", "--no-tflite"]
    run_cli("sparsify", "--cfg", cfg, "--weights", weights, *args, "-o", out)
    dense, sparse = read(cfg, weights), read(cfg, out / "sparse.weights")
    found = check_pruned(dense, sparse, YOLOV4_TINY_PROTECTED | {5}, 0.5)
    assert len(found) == 17
    for index in found:
        zeros = tap_blocks(sparse.layers[index].weights["weights"], rows, cols) == 0
        whole = zeros.all(axis=(3, 5))
        assert (zeros.any(axis=(3, 5)) == whole).all(), f"layer {index}: a zero outside a whole block"
        magnitude = np.abs(tap_blocks(dense.layers[index].weights["weights"], rows, cols)).mean(axis=(3, 5))
        assert magnitude[whole].max() <= magnitude[~whole].min()  # TFMOT's AVG pooling of the block
    REPORT[f"sparsify yolov4-tiny block {rows}x{cols}"] = (
        f"{len(found)} layers, sparsity {min(found.values()):.4f}–{max(found.values()):.4f}, "
        "zeros in whole blocks"
    )


@SHARED_MARK
def test_pruned_wrapped_model_matches_torch_on_the_pruned_weights(tmp_path: Path) -> None:
    """The wrapped model (TapConv2D + TFMOT wrappers) computes what torch computes with the pruned weights."""
    from test_keras import relative_errors, torch_outputs

    from cfgsurgeon.emit.keras import run_keras, to_keras

    graph = load_cfg(CFG_DIR / "yolov4-tiny.cfg", warn=quiet)
    graph.net.width = graph.net.height = 96
    graph.infer()
    random_weights(graph, seed=0)
    layers = plan(graph, block=(4, 4))
    schedule = M.Schedule(0.5, end_step=100, frequency=10)
    wrapped = M.wrap(to_keras(graph), graph, layers, schedule, (4, 4))
    assert sum(type(w.layer) is M.TapConv2D for w in M.wrappers(wrapped)) == len(layers.pruned)
    M.prune_at(wrapped, 50)  # mid-schedule: PolynomialDecay's value there
    middle = schedule.sparsity_at(50)
    assert 0.4 < middle < 0.5
    assert list(M.kernel_sparsity(wrapped).values()) == pytest.approx([middle] * len(layers.pruned), abs=0.01)
    M.store(M.strip(wrapped), graph, layers)
    x = np.random.default_rng(1).random((2, *graph.input_shape), dtype=np.float32)
    errors = relative_errors(run_keras(wrapped, x), torch_outputs(graph, x))
    assert max(errors) < 1e-4, errors


# -- real yolov3-tiny ----------------------------------------------------------------------------------------


@SHARED_MARK
@needs_yolov3_tiny
def test_real_yolov3_tiny_one_shot(tmp_path: Path) -> None:
    cfg, weights = MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights"
    out = tmp_path / "out"
    run_cli("sparsify", "--cfg", cfg, "--weights", weights, "--block-size", "4,4", "--no-tflite", "-o", out)
    dense, sparse = read(cfg, weights), read(cfg, out / "sparse.weights")
    found = check_pruned(dense, sparse, YOLOV3_TINY_PROTECTED, 0.5)
    assert len(found) == 10
    for index in found:
        zeros = tap_blocks(sparse.layers[index].weights["weights"], 4, 4) == 0
        assert (zeros.any(axis=(3, 5)) == zeros.all(axis=(3, 5))).all()
    REPORT["sparsify real yolov3-tiny block 4x4"] = (
        f"{len(found)} layers, sparsity {min(found.values()):.4f}–{max(found.values()):.4f}"
    )


# -- compression ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["yolo-nano.cfg", pytest.param("yolov4-tiny.cfg", marks=[pytest.mark.slow, SHARED_MARK])]
)
def test_gzip_of_sparse_files_is_smaller_and_reported(tmp_path: Path, name: str) -> None:
    import gzip

    from conftest import REPO_CFG_DIR

    if name == "yolo-nano.cfg":
        cfg, weights = REPO_CFG_DIR / name, tmp_path / "dense.weights"
        graph = load_cfg(cfg, warn=quiet)
        random_weights(graph, seed=0)
        write_weights(graph, weights)
    else:
        cfg, weights = small_model(tmp_path, name)
    out = tmp_path / "out"
    stdout = run_cli(
        "sparsify", "--cfg", cfg, "--weights", weights, "--runs", "2", "--warmup", "0", "-o", out
    )
    dense_tflite = tmp_path / "dense.tflite"
    run_cli("export", "--format", "tflite", "--cfg", cfg, "--weights", weights, "-o", dense_tflite)
    for dense, sparse in ((weights, out / "sparse.weights"), (dense_tflite, out / "sparse.tflite")):
        assert dense.stat().st_size == sparse.stat().st_size  # zeros are stored, not dropped
        ratio = len(gzip.compress(sparse.read_bytes())) / len(gzip.compress(dense.read_bytes()))
        assert ratio < 0.8, (sparse.name, ratio)
        REPORT[f"gzip sparse/dense {name} 50% {sparse.suffix}"] = f"{ratio:.3f}"
    assert "sparse/dense gzipped" in stdout and "tflite CPU latency, sparse" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["tflite"]["relative_error"] < 1e-4
    assert set(report["sizes"]) == {".weights", ".tflite"}


@SHARED_MARK
@pytest.mark.slow
@needs_yolov3_tiny
def test_real_yolov3_tiny_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cfg, weights = MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights"
    stdout = run_cli("sparsify", "--cfg", cfg, "--weights", weights, "--runs", "10", "-o", out)
    report = json.loads((out / "report.json").read_text())
    for suffix, sizes in report["sizes"].items():
        REPORT[f"gzip sparse/dense real yolov3-tiny 50% {suffix}"] = f"{sizes['sparse_vs_dense_gzip']:.3f}"
        assert sizes["sparse_vs_dense_gzip"] < 0.8
    latency = report["tflite"]["latency"]
    REPORT["tflite latency real yolov3-tiny dense/sparse"] = (
        f"{latency['dense']['latency_ms']['median']:.1f} / {latency['sparse']['latency_ms']['median']:.1f} ms"
    )
    assert "kernel sparsity: 0.5000 over the pruned layers" in stdout


# -- fine-tuning ---------------------------------------------------------------------------------------------


def test_fine_tune_runs_the_schedule_to_its_final_sparsity(tmp_path: Path) -> None:
    """Acceptance 4: a few steps on the synthetic dataset; the schedule's value at each step (TFMOT's
    PolynomialDecay formula) is what the masks hold, and the final sparsity is reached at end_step."""
    pytest.importorskip("torch")  # the dataset reader is the torch training package's
    from conftest import REPO_CFG_DIR

    from cfgsurgeon.train.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", classes=3, train=8, valid=2, size=128, seed=0)
    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    graph = load_cfg(cfg, warn=quiet)
    random_weights(graph, seed=0)
    weights = tmp_path / "dense.weights"
    write_weights(graph, weights)
    out = tmp_path / "out"
    schedule = ["--end-step", "4", "--frequency", "2", "--initial-sparsity", "0.1"]
    tune = ["--fine-tune", "--data", data, "--epochs", "3", "--batch-size", "4", "--lr", "1e-3"]
    stdout = run_cli(
        "sparsify", "--cfg", cfg, "--weights", weights, *schedule, *tune, "--no-tflite", "-o", out
    )
    steps = json.loads((out / "report.json").read_text())["fine_tune"]["steps"]
    assert [s["step"] for s in steps] == list(range(1, 7))  # 2 batches × 3 epochs
    expected = {step: 0.5 + (0.1 - 0.5) * (1 - min(step / 4, 1.0)) ** 3 for step in range(1, 7)}
    # masks are recomputed on steps 2 and 4 (every 2 from 0): step 1 still runs unmasked
    assert steps[0]["sparsity"] == pytest.approx(0.0, abs=1e-6)
    for s in steps[1:]:
        applied = expected[s["step"] - s["step"] % 2]
        assert s["sparsity"] == pytest.approx(applied, abs=0.01), s
    assert all(np.isfinite(s["loss"]) for s in steps)
    dense, sparse = read(cfg, weights), read(cfg, out / "sparse.weights")
    protected = set(plan(dense).dense)
    for index in conv_layers(dense):
        layer = sparse.layers[index]
        if index not in protected:
            assert abs(float(np.mean(layer.weights["weights"] == 0)) - 0.5) <= 0.01
        for name in ("scales", "rolling_mean", "rolling_variance"):  # batch norm is frozen
            if name in layer.weights:
                assert layer.weights[name].tobytes() == dense.layers[index].weights[name].tobytes()
    assert "fine-tuned 6 steps" in stdout
    REPORT["sparsify --fine-tune yolo-nano synthetic"] = (
        f"6 steps, loss {steps[0]['loss']:.1f} → {steps[-1]['loss']:.1f}, sparsity at end step "
        f"{steps[3]['sparsity']:.4f}"
    )
