"""``cfgsurgeon quantize`` / ``Model.quantize``: post-training INT8 for OpenVINO (NNCF) and ONNX Runtime.

What is int8 is read from the runtimes themselves (the precision OpenVINO's CPU plugin runs each convolution
in, the int8 initializers of the QDQ graph), and the int8 outputs are compared with the float export run in
the same runtime."""

from __future__ import annotations

import builtins
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner

from cfgsurgeon import Model
from cfgsurgeon.calibration import calibration_images, network_batch
from cfgsurgeon.cli import main
from cfgsurgeon.errors import UsageError
from tests.conftest import BAD_CALIBRATION, MODELS_DIR, ZOO, need_shared

pytest.importorskip("openvino")
pytest.importorskip("nncf")
pytest.importorskip("onnxruntime")


class Quantized(NamedTuple):
    cfg: Path
    weights: Path
    data: Path  # the synthetic .data: train/ holds the calibration photos, valid/ the held-out ones
    xml: Path  # openvino int8, calibrated on the train/ folder
    onnx: Path  # onnxruntime int8, calibrated on train.txt
    report: dict  # the JSON of the openvino run


def run(*args: object):
    return CliRunner().invoke(main, [str(arg) for arg in args])


def run_apart(*args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    """The command in a process of its own, for NNCF's quantizations: NNCF compiles with OpenVINO Cores of its
    own, whose release left the test process with a dangling alternate signal stack (cfgsurgeon.signal_stack
    tells the story; the library now guards against it, and this keeps the test process out of it anyway)."""
    command = [sys.executable, "-m", "cfgsurgeon", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def quantized(nano, tmp_path_factory) -> Quantized:
    cfg, data = nano
    out = tmp_path_factory.mktemp("int8")
    weights = out / "nano.weights"
    assert run("init", "--cfg", cfg, "-o", weights, "--seed", 3).exit_code == 0
    common = ("--cfg", cfg, "--weights", weights, "--subset", 6)
    folder = run_apart("quantize", *common, "--backend", "openvino", "--calibration", data.parent / "train",
                       "-o", out / "ov" / "nano.xml", "--json")  # fmt: skip
    assert folder.returncode == 0, folder.stderr
    listed = run("quantize", *common, "--backend", "onnxruntime", "--calibration", data.parent / "train.txt",
                 "-o", out / "ort" / "nano.onnx")  # fmt: skip
    assert listed.exit_code == 0, listed.output
    return Quantized(
        cfg, weights, data, out / "ov" / "nano.xml", out / "ort" / "nano.onnx", json.loads(folder.stdout)
    )


def held_out(quantized: Quantized) -> np.ndarray:
    graph = Model.load(quantized.cfg).graph
    valid = calibration_images(quantized.data.parent / "valid.txt")
    return np.concatenate([network_batch(graph, path) for path in valid])


def relative_errors(int8: list[np.ndarray], floats: list[np.ndarray]) -> list[float]:
    return [float(np.linalg.norm(q - f) / np.linalg.norm(f)) for q, f in zip(int8, floats, strict=True)]


# Tolerance: 8-bit activations per tensor leave each conv's output ~1/100 to ~1/10 of its norm off (SQNR 20 to
# 40 dB, the report shows it); through nano's 13 convs that compounds to a few tenths at the heads, ~0.1 here.
# A model that was not quantized (or quantized wrong: a lost scale, a wrong zero point) is 0 or ~1 off.
HEAD_TOLERANCE = 0.3


def test_openvino_int8_runs_int8_convolutions_close_to_float(quantized: Quantized, tmp_path: Path):
    from cfgsurgeon.emit.openvino import compile_model
    from cfgsurgeon.runtimes import make_runner

    compiled = compile_model(str(quantized.xml))
    precisions = {
        op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    int8 = [name for name, precision in precisions.items() if precision in ("u8", "i8")]
    assert len(int8) >= len(precisions) - 1  # the conv after the route falls back to f32 (the report says so)
    runs_in = {
        f"/blocks.{row['layer']}/conv/Conv/WithoutBiases": row["runs_in"]
        for row in quantized.report["layers"]
    }
    assert runs_in == precisions

    model = Model.load(quantized.cfg, quantized.weights)
    float_xml = tmp_path / "float.xml"
    model.export("openvino", float_xml)
    batch = held_out(quantized)
    int8_runner = make_runner(model.graph, "openvino", quantized.xml)
    float_runner = make_runner(model.graph, "openvino", float_xml)
    for image in batch:
        errors = relative_errors(int8_runner(image[None]), float_runner(image[None]))
        assert 0.001 < max(errors) < HEAD_TOLERANCE, errors


def test_onnx_int8_is_qdq_with_per_channel_int8_weights_close_to_float(quantized: Quantized, tmp_path: Path):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(quantized.onnx))
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in model.graph.initializer}
    ops = [node.op_type for node in model.graph.node]
    conv_weights = [initializers.get(node.input[1]) for node in model.graph.node if node.op_type == "Conv"]
    assert ops.count("QuantizeLinear") >= 1 and ops.count("DequantizeLinear") >= ops.count("Conv")
    dequantized = {node.output[0]: node for node in model.graph.node if node.op_type == "DequantizeLinear"}
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = dequantized[node.input[1]]  # the weight reaches the conv through a DequantizeLinear
            assert initializers[weight.input[0]].dtype == np.int8
            assert initializers[weight.input[1]].size > 1  # a scale per output channel
    assert all(w is None for w in conv_weights)  # no float weight left on a conv

    float_onnx = tmp_path / "float.onnx"
    Model.load(quantized.cfg, quantized.weights).export("onnx", float_onnx)
    batch = held_out(quantized)
    int8 = ort.InferenceSession(str(quantized.onnx), providers=["CPUExecutionProvider"])
    floats = ort.InferenceSession(str(float_onnx), providers=["CPUExecutionProvider"])
    for image in batch:
        errors = relative_errors(
            int8.run(None, {"images": image[None]}), floats.run(None, {"images": image[None]})
        )
        assert 0.001 < max(errors) < HEAD_TOLERANCE, errors


def test_report_lists_every_conv_and_the_sizes(quantized: Quantized):
    report = quantized.report
    graph = Model.load(quantized.cfg).graph
    convs = [layer.index for layer in graph.layers if type(layer).__name__ == "Convolutional"]
    assert [row["layer"] for row in report["layers"]] == convs
    assert all(10 < row["sqnr_db"] < 60 and not row["kept_float"] for row in report["layers"])
    files = [Path(path) for path in report["paths"]]
    assert files == [quantized.xml, quantized.xml.with_suffix(".bin")]
    assert report["int8_bytes"] == sum(path.stat().st_size for path in files)
    assert report["int8_bytes"] < 0.4 * report["float_bytes"]  # int8 weights: about a quarter of float32
    assert report["calibration_images"] == 6


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_the_int8_model_file_is_all_detect_needs_besides_the_cfg(
    quantized: Quantized, backend: str, tmp_path
):
    model = quantized.xml if backend == "openvino" else quantized.onnx
    photo = calibration_images(quantized.data.parent / "valid.txt")[0]
    names = quantized.data.parent / "synthetic.names"
    args = ("detect", "--cfg", quantized.cfg, "--names", names, "--backend", backend, "--json")
    without = run(*args, "--model", model, "-o", tmp_path / "a", photo)
    assert without.exit_code == 0, without.output
    with_weights = run(*args, "--weights", quantized.weights, "--model", model, "-o", tmp_path / "b", photo)
    assert json.loads(without.stdout) == json.loads(with_weights.stdout)
    refused = run(*args, "-o", tmp_path / "c", photo)
    assert refused.exit_code != 0
    assert refused.output.strip().splitlines()[-1] == (
        "Error: detecting needs the model's --weights, or an exported --model that holds them"
    )


@pytest.mark.parametrize("backend", ["openvino", "onnxruntime"])
def test_bench_measures_the_int8_file_with_the_cfg_alone(quantized: Quantized, backend: str):
    model = quantized.xml if backend == "openvino" else quantized.onnx
    args = ("bench", "--cfg", quantized.cfg, "--backend", backend, "--runs", 2, "--warmup", 0)
    result = run(*args, "--model", model, "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)["models"]
    assert row["model"] == str(model) and row["weights"] is None and not row["random_weights"]
    assert row["input"] == [3, 64, 64]  # the cfg's size, which the file was written at
    assert run(*args, "--model", model).stdout.splitlines()[2].startswith(model.name)
    wrong_size = run(*args, "--model", model, "--size", 96)
    assert wrong_size.exit_code == 1 and wrong_size.output.strip().splitlines()[-1].startswith(
        f"Error: {model} takes input 1x3x64x64, but the cfg's network input is Nx3x96x96"
    )
    two = run(*args, "--cfg", quantized.cfg, "--model", model)
    assert two.output.strip().splitlines()[-1] == (
        "Error: 1 --model for 2 --cfg: give one per --cfg in order ('-' for a cfg exported in memory), "
        "or none"
    )


def test_same_inputs_give_byte_identical_files(quantized: Quantized, tmp_path: Path):
    common = ("--cfg", quantized.cfg, "--weights", quantized.weights, "--subset", 6)
    calibration = quantized.data.parent / "train.txt"
    again = run("quantize", *common, "--backend", "onnxruntime", "--calibration", calibration,
                "-o", tmp_path / "nano.onnx")  # fmt: skip
    assert again.exit_code == 0, again.output
    assert (tmp_path / "nano.onnx").read_bytes() == quantized.onnx.read_bytes()
    folder = quantized.data.parent / "train"
    again = run_apart(
        "quantize", *common, "--backend", "openvino", "--calibration", folder, "-o", tmp_path / "n.xml"
    )
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "n.bin").read_bytes() == quantized.xml.with_suffix(".bin").read_bytes()
    assert (tmp_path / "n.xml").read_bytes() == quantized.xml.read_bytes()


def test_keep_float_leaves_that_conv_in_float(quantized: Quantized, tmp_path: Path):
    import onnx

    report = Model.load(quantized.cfg, quantized.weights).quantize(
        tmp_path / "nano.onnx",
        backend="onnxruntime",
        calibration=quantized.data.parent / "train.txt",
        subset=2,
        keep_float=[22],
    )
    kept = [row.layer for row in report.layers if row.kept_float]
    assert kept == [22]
    graph = onnx.load(str(tmp_path / "nano.onnx")).graph
    floats = {init.name for init in graph.initializer if init.data_type == onnx.TensorProto.FLOAT}
    conv = next(node for node in graph.node if node.name == "/blocks.22/conv/Conv")
    assert conv.input[1] in floats  # its float weights, straight from the initializer
    assert str(report).splitlines()[-1].endswith("float (kept)")


# -- calibration input ---------------------------------------------------------------------------------------


def test_a_folder_gives_its_images_by_name_and_skips_labels(tmp_path: Path, nano):
    _, data = nano
    folder = data.parent / "train"
    images = calibration_images(folder)
    assert images == sorted(folder.glob("*.png")) and len(images) == 8  # the label .txt files are not images
    assert calibration_images(folder, subset=3) == images[:3]


def test_a_list_is_read_relative_to_its_folder(tmp_path: Path, nano):
    _, data = nano
    listed = calibration_images(data.parent / "train.txt")
    lines = (data.parent / "train.txt").read_text().split()
    assert listed == [data.parent / line for line in lines]


@pytest.mark.parametrize(("make", "message"), BAD_CALIBRATION)
def test_bad_calibration_input_is_one_line(quantized: Quantized, tmp_path: Path, make, message: str):
    source = make(tmp_path)
    result = run("quantize", "--cfg", quantized.cfg, "--weights", quantized.weights, "--backend", "openvino",
                 "--calibration", source, "-o", tmp_path / "out.xml")  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + message.format(d=tmp_path)), result.output
    assert not (tmp_path / "out.xml").exists()


def test_wrong_suffix_and_keep_float_are_one_line(quantized: Quantized, tmp_path: Path):
    common = ("quantize", "--cfg", quantized.cfg, "--weights", quantized.weights, "--calibration",
              quantized.data.parent / "train")  # fmt: skip
    result = run(*common, "--backend", "onnxruntime", "-o", tmp_path / "m.xml")
    assert (
        result.output.strip()
        == f"Error: the onnxruntime int8 output {tmp_path / 'm.xml'} should end in .onnx"
    )
    result = run(*common, "--backend", "openvino", "--keep-float", "1", "-o", tmp_path / "m.xml")
    assert result.output.strip() == "Error: --keep-float: layer 1 is not a convolutional layer of the model"


def self_labelled(quantized: Quantized, folder: Path) -> Path:
    """A .data whose valid photos are labelled with the float model's own five likeliest boxes each: float
    scores a high mAP@0.5 there (0.875), and int8, whose probabilities move a little, ranks them lower."""
    folder.mkdir()
    photos = calibration_images(quantized.data.parent / "valid.txt")
    found = Model.load(quantized.cfg, quantized.weights).detect(photos, thresh=0.05)
    for photo, result in zip(photos, found.results, strict=True):
        shutil.copy(photo, folder / photo.name)
        (w, h), best = result.size, sorted(result.detections, key=lambda d: -d.prob)[:5]
        rows = [f"{d.class_id} {(x + bw / 2) / w} {(y + bh / 2) / h} {bw / w} {bh / h}"
                for d in best for x, y, bw, bh in [d.box]]  # fmt: skip
        (folder / photo.name).with_suffix(".txt").write_text("\n".join(rows) + "\n")
    (folder / "valid.txt").write_text("".join(f"{photo.name}\n" for photo in photos))
    (folder / "self.data").write_text("classes=3\nvalid=valid.txt\n")
    return folder / "self.data"


def test_accuracy_control_reverts_layers_to_float_and_says_which(quantized: Quantized, tmp_path: Path):
    from cfgsurgeon.emit.openvino import compile_model

    data = self_labelled(quantized, tmp_path / "self")
    xml = tmp_path / "ac.xml"
    common = ("--cfg", quantized.cfg, "--weights", quantized.weights, "--backend", "openvino")
    calibration = ("--calibration", quantized.data.parent / "train", "--subset", 6)
    result = run_apart("quantize", *common, *calibration, "--accuracy-control", "--data", data,
                       "--max-drop", 0.001, "-o", xml, "--json", timeout=3000)  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    control = report["accuracy_control"]
    assert control["images"] == 4 and control["max_drop"] == 0.001
    # the figures NNCF acted on are eval's, through eval's own runner on the files
    float_xml = tmp_path / "float.xml"
    Model.load(quantized.cfg, quantized.weights).export("openvino", float_xml)
    scored = {}
    for name, model in (("float", float_xml), ("written", xml)):
        evaluated = run("eval", "--cfg", quantized.cfg, "--data", data, "--backend", "openvino", "--model",
                        model, "--json")  # fmt: skip
        assert evaluated.exit_code == 0, evaluated.output
        scored[name] = json.loads(evaluated.stdout)["mAP50"]
    assert control["float_mAP50"] == pytest.approx(scored["float"], abs=1e-9)
    assert control["final_mAP50"] == pytest.approx(scored["written"], abs=1e-9)
    assert control["int8_mAP50"] < control["float_mAP50"] - 0.001  # so NNCF had to revert something
    assert control["steps"] and all(step["layers"] for step in control["steps"])
    assert control["final_mAP50"] >= control["float_mAP50"] - 0.001
    kept = [row["layer"] for row in report["kept_float"]]
    assert kept == control["kept_float"] and all(row["reason"] for row in report["kept_float"])
    # OpenVINO's own view of the written file: the kept convolutions run in f32
    compiled = compile_model(str(xml))
    runs_in = {
        op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ops()
        if op.get_rt_info()["layerType"].astype(str) == "Convolution"
    }
    assert kept and all(runs_in[f"/blocks.{layer}/conv/Conv/WithoutBiases"] == "f32" for layer in kept)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--accuracy-control"],
            "--accuracy-control needs --data: a .data file whose valid split scores mAP@0.5",
        ),
        (["--data", "{data}"], "--data scores the accuracy control: give --accuracy-control too"),
        (
            ["--accuracy-control", "--data", "{data}", "--max-drop", "1.5"],
            "--max-drop is a drop of mAP@0.5, between 0 and 1: got 1.5",
        ),
        (
            ["--accuracy-control", "--data", "{data}", "--backend", "onnxruntime", "-o", "{tmp}/m.onnx"],
            "--accuracy-control is NNCF's, for --backend openvino",
        ),
        (
            ["--accuracy-control", "--data", "{tmp}/two.data"],
            "{tmp}/two.data: classes=2, but the model has 3 classes",
        ),
        (
            ["--accuracy-control", "--data", "{tmp}/none.data"],
            "{tmp}/none.data: cannot read the data file (No such file or directory)",
        ),
    ],
)
def test_accuracy_control_mistakes_are_one_line(quantized: Quantized, tmp_path: Path, args, message: str):
    (tmp_path / "two.data").write_text(f"classes=2\nvalid={quantized.data.parent / 'valid.txt'}\n")
    fill = {"data": quantized.data, "tmp": tmp_path}
    result = run("quantize", "--cfg", quantized.cfg, "--weights", quantized.weights, "--backend", "openvino",
                 "--calibration", quantized.data.parent / "train", "-o", tmp_path / "out.xml",
                 *[arg.format(**fill) for arg in args])  # fmt: skip
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + message.format(**fill)), result.output
    assert not (tmp_path / "out.xml").exists()


MISSING = [("openvino", "nncf", "openvino"), ("onnxruntime", "onnxruntime", "onnx")]


@pytest.mark.parametrize(("backend", "package", "extra"), MISSING)
def test_a_missing_package_names_the_extra(quantized, tmp_path, monkeypatch, backend, package, extra):
    real_import = builtins.__import__

    def without(name, *args, **kwargs):
        if name.split(".")[0] == package:
            raise ImportError(f"No module named '{package}'", name=package)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without)
    suffix = ".xml" if backend == "openvino" else ".onnx"
    result = run("quantize", "--cfg", quantized.cfg, "--weights", quantized.weights, "--backend", backend,
                 "--calibration", quantized.data.parent / "train", "-o", tmp_path / f"m{suffix}")  # fmt: skip
    assert result.output.strip() == (
        f"Error: --backend {backend} int8 needs the package '{package}': pip install 'cfgsurgeon[{extra}]'"
    )


def test_the_api_refuses_a_model_without_weights(quantized: Quantized, tmp_path: Path):
    with pytest.raises(UsageError, match="needs trained weights"):
        Model.load(quantized.cfg).quantize(tmp_path / "m.xml", calibration=quantized.data.parent / "train")


# -- the real yolov3-tiny ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.shared
@pytest.mark.parametrize(("backend", "suffix"), [("openvino", ".xml"), ("onnxruntime", ".onnx")])
def test_int8_yolov3_tiny_finds_darknets_dog_truck_and_bicycle(tmp_path: Path, backend: str, suffix: str):
    need_shared(MODELS_DIR / "yolov3-tiny.weights")
    model = Model.load(MODELS_DIR / "yolov3-tiny.cfg", MODELS_DIR / "yolov3-tiny.weights")
    output = tmp_path / f"int8{suffix}"
    model.quantize(output, backend=backend, calibration=ZOO / "images")
    found = Model.load(MODELS_DIR / "yolov3-tiny.cfg").detect(
        ZOO / "images" / "dog.jpg", names=MODELS_DIR / "coco.names", backend=backend, model=output
    )
    names = {detection.name for detection in found.detections[0]}
    assert {"dog", "truck", "bicycle"} <= names, found


def test_eval_runs_exported_files_without_weights(quantized: Quantized, tmp_path: Path):
    """eval through a runtime scores the detections that runtime makes: the float OpenVINO export (another
    implementation of the network) scores what torch scores; the int8 file scores without --weights."""
    float_xml = tmp_path / "float.xml"
    Model.load(quantized.cfg, quantized.weights).export("openvino", float_xml)
    args = ("eval", "--cfg", quantized.cfg, "--data", quantized.data, "--thresh", 0.01, "--json")
    torch = run(*args, "--weights", quantized.weights)
    exported = run(*args, "--backend", "openvino", "--model", float_xml)
    int8 = run(*args, "--backend", "openvino", "--model", quantized.xml)
    assert torch.exit_code == exported.exit_code == int8.exit_code == 0, int8.output
    floats, openvino = json.loads(torch.stdout), json.loads(exported.stdout)
    for key in ("P", "R", "mAP50", "mAP50_95"):
        assert openvino[key] == (None if floats[key] is None else pytest.approx(floats[key], abs=1e-6)), key
    assert json.loads(int8.stdout)["mAP50"] is not None
