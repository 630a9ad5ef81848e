"""TFLite export (``cfgsurgeon.emit.tflite``) and the ``tflite`` runtime, against the torch backend and
darknet's own detections:

* the float ``.tflite`` matches torch within 1e-4 relative (yolov4-tiny with random weights; the real
  yolov3-tiny at 416×416);
* the full-integer INT8 model (calibrated on the zoo's photos, letterboxed like ``detect``) runs in the
  TFLite interpreter with int8 input and outputs, and with the real yolov3-tiny still finds darknet's dog
  in dog.jpg (probability above 0.25, IoU ≥ 0.5 with darknet's box);
* ``detect`` / ``bench --backend tflite`` work from the command line; a model of another cfg is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import BAD_CALIBRATION, MISH_TOLERANCE, REPORT, SHARED_MARK, ZOO, mish_error, mish_probe, quiet

from cfgsurgeon import UsageError, load_cfg, read_weights

pytest.importorskip("tensorflow")

from test_detect import parse_lines  # noqa: E402
from test_keras import collection, relative_errors, torch_outputs  # noqa: E402

from cfgsurgeon.cli import main  # noqa: E402
from cfgsurgeon.emit import tflite as T  # noqa: E402

MODELS = ZOO / "models"
IMAGES = ZOO / "images"
needs_yolov3_tiny = pytest.mark.skipif(
    not (MODELS / "yolov3-tiny.weights").is_file(), reason="needs the shared zoo (yolov3-tiny.weights)"
)
DARKNET_DOG = (124, 220, 258, 298)  # left, top, width, height: darknet's yolov3-tiny on dog.jpg


def iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def calibration_list(tmp_path: Path) -> Path:
    """The zoo's photos as a darknet image list, by relative paths (resolved from the list's folder)."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for photo in sorted(IMAGES.glob("*.jpg")):
        (folder / photo.name).symlink_to(photo)
    listing = folder / "list.txt"
    listing.write_text("\n".join(p.name for p in sorted(IMAGES.glob("*.jpg"))) + "\n")
    return listing


def yolov3_tiny():
    graph = load_cfg(MODELS / "yolov3-tiny.cfg", warn=quiet)
    read_weights(graph, MODELS / "yolov3-tiny.weights")
    return graph


@SHARED_MARK
def test_float_tflite_matches_torch() -> None:
    graph = collection("yolov4-tiny.cfg", 128)
    model = T.TFLiteModel(T.tflite_bytes(graph))
    assert model.output_names == ["yolo_30", "yolo_37"] and model.input_shape == [None, 3, 128, 128]
    x = np.random.default_rng(2).random((3, *graph.input_shape), dtype=np.float32)  # batch 3: resized
    error = max(relative_errors(model(x, ["yolo_30", "yolo_37"]), torch_outputs(graph, x)))
    REPORT["tflite float vs torch, yolov4-tiny 128"] = f"max relative error {error:.2e}"
    assert error < 1e-4


def test_mish_is_accurate_in_float_tflite() -> None:
    graph, x = mish_probe()
    model = T.TFLiteModel(T.tflite_bytes(graph))
    assert mish_error(model(x, model.output_names)[0], x) <= MISH_TOLERANCE


@SHARED_MARK
@pytest.mark.parametrize("quantize", ["fp16", pytest.param("dynamic", marks=pytest.mark.slow)])
def test_weight_quantized_models_run(quantize: str) -> None:
    graph = collection("yolov4-tiny.cfg", 64)
    model = T.TFLiteModel(T.tflite_bytes(graph, quantize))
    x = np.random.default_rng(2).random((1, *graph.input_shape), dtype=np.float32)
    error = max(relative_errors(model(x, ["yolo_30", "yolo_37"]), torch_outputs(graph, x)))
    REPORT[f"tflite {quantize} vs torch, yolov4-tiny 64"] = f"max relative error {error:.2e}"
    assert 0 < error < 0.1


@SHARED_MARK
@needs_yolov3_tiny
def test_int8_finds_the_dog_and_float_matches_torch(tmp_path: Path) -> None:
    """Acceptance: `export --format tflite --quantize int8` then `detect --backend tflite --model`."""
    args = ["--cfg", MODELS / "yolov3-tiny.cfg", "--weights", MODELS / "yolov3-tiny.weights"]
    int8 = tmp_path / "int8.tflite"
    calibration = ["--calibration", calibration_list(tmp_path), "--num-calibration-images", "300"]
    result = CliRunner().invoke(
        main,
        list(
            map(str, ["export", "--format", "tflite", "--quantize", "int8", *calibration, *args, "-o", int8])
        ),
    )
    assert result.exit_code == 0, result.output
    model = T.TFLiteModel(int8)
    assert model.quantized and {d["dtype"] for d in model.outputs.values()} == {np.int8}
    detect = ["detect", *args, "--names", MODELS / "coco.names", "--backend", "tflite", "--model", int8]
    result = CliRunner().invoke(main, list(map(str, [*detect, "-o", tmp_path / "out", IMAGES / "dog.jpg"])))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{IMAGES / 'dog.jpg'}: Predicted in")
    dogs = [(prob, box) for name, prob, box in parse_lines(lines[1:]) if name == "dog"]
    assert dogs, result.stdout
    prob, box = max(dogs)
    overlap = iou(box, DARKNET_DOG)
    REPORT["tflite int8 yolov3-tiny dog.jpg"] = (
        f"dog {prob}% (darknet 81%), IoU {overlap:.2f} with darknet's box"
    )
    assert prob > 25 and overlap >= 0.5

    graph = yolov3_tiny()
    x = np.random.default_rng(3).random((1, *graph.input_shape), dtype=np.float32)
    reference = torch_outputs(graph, x)
    float_error = max(
        relative_errors(T.TFLiteModel(T.tflite_bytes(graph))(x, ["yolo_16", "yolo_23"]), reference)
    )
    int8_error = max(relative_errors(model(x, ["yolo_16", "yolo_23"]), reference))
    REPORT["tflite vs torch, real yolov3-tiny 416"] = f"float {float_error:.2e}, int8 {int8_error:.2e}"
    assert float_error < 1e-4


@SHARED_MARK
def test_runner_refuses_a_model_of_another_cfg(tmp_path: Path) -> None:
    from cfgsurgeon.runtimes import make_runner

    graph = collection("yolov4-tiny.cfg", 64)
    path = tmp_path / "v4.tflite"
    T.write_tflite(graph, path)
    with pytest.raises(UsageError, match=r"has outputs \['yolo_30', 'yolo_37'\], but the cfg's heads are"):
        make_runner(collection("yolov3-tiny.cfg", 64), "tflite", path)
    other_size = collection("yolov4-tiny.cfg", 96)
    with pytest.raises(UsageError, match="takes input"):
        make_runner(other_size, "tflite", path)


@SHARED_MARK
def test_bench_backend_tflite(tmp_path: Path) -> None:
    from conftest import CFG_DIR

    args = ["bench", "--cfg", CFG_DIR / "yolov4-tiny.cfg", "--backend", "tflite", "--size", "64"]
    result = CliRunner().invoke(main, list(map(str, [*args, "--runs", "2", "--warmup", "0", "--batch", "2"])))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("backend tflite") and "yolov4-tiny.cfg (random)" in result.stdout


@pytest.fixture(scope="module")
def nano_weights(nano, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The ``nano`` fixture's cfg with random weights, and its synthetic data set's folder."""
    cfg, data = nano
    weights = tmp_path_factory.mktemp("tflite-int8") / "nano.weights"
    assert (
        CliRunner().invoke(main, ["init", "--cfg", str(cfg), "-o", str(weights), "--seed", "3"]).exit_code
        == 0
    )
    return cfg, weights, data.parent


def export_int8(cfg: Path, weights: Path, calibration: Path, output: Path):
    args = ["export", "--format", "tflite", "--quantize", "int8", "--cfg", cfg, "--weights", weights,
            "--calibration", calibration, "--num-calibration-images", 3, "-o", output]  # fmt: skip
    return CliRunner().invoke(main, list(map(str, args)))


def test_int8_calibration_takes_a_folder_or_a_list(nano_weights, tmp_path: Path) -> None:
    cfg, weights, data = nano_weights
    folder = export_int8(cfg, weights, data / "train", tmp_path / "folder.tflite")
    assert folder.exit_code == 0, folder.output
    listed = export_int8(cfg, weights, data / "train.txt", tmp_path / "list.tflite")
    assert listed.exit_code == 0, listed.output
    assert T.TFLiteModel(tmp_path / "folder.tflite").quantized
    # train.txt lists the folder's photos in name order: the same three photos give the same ranges
    assert (tmp_path / "folder.tflite").read_bytes() == (tmp_path / "list.tflite").read_bytes()


@pytest.mark.parametrize(("make", "message"), BAD_CALIBRATION)
def test_bad_calibration_input_is_one_line(nano_weights, tmp_path: Path, make, message: str) -> None:
    """The same reader and the same messages as ``quantize`` (tests/test_int8.py)."""
    cfg, weights, _ = nano_weights
    result = export_int8(cfg, weights, make(tmp_path), tmp_path / "out.tflite")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: " + message.format(d=tmp_path)), result.output
    assert not (tmp_path / "out.tflite").exists()


def test_int8_without_calibration_is_refused() -> None:
    from cfgsurgeon import loads_cfg

    graph = loads_cfg(
        "[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=2\nsize=1\n", warn=quiet
    )
    with pytest.raises(UsageError, match="`quantize` int8 needs `calibration`"):
        T.tflite_bytes(graph, "int8")
