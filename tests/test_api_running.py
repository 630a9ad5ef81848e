"""The Python API of the commands that run a model (``Model.detect``, ``.evaluate``, ``.export``, ``.bench``
and ``cfgsurgeon.api.running.bench``): each prints exactly what its command prints and writes the same
bytes, and what it returns agrees with an independent implementation (darknet's printout, pycocotools,
ONNX Runtime, a clock the test controls).

Timings are the only figures that differ between two runs; the tests that compare the command with the
API replace the module's clock with one that ticks a whole second per reading.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO_CFG_DIR, SHARED, quiet

from cfgsurgeon import Model, UsageError
from cfgsurgeon.api.running import bench
from cfgsurgeon.bench import ModelSpec
from cfgsurgeon.cli import main

MODELS = SHARED / "zoo" / "models"
REFERENCE = SHARED / "zoo" / "darknet_reference" / "detections"


class Files(NamedTuple):
    cfg: Path  # yolo-nano at 64×64
    weights: Path  # seeded random weights
    data: Path  # synthetic .data (3 classes, 4 valid photos)
    names: Path
    photos: list[Path]  # two of the valid photos


@pytest.fixture(scope="module")
def files(nano, tmp_path_factory) -> Files:
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.weights import write_weights

    cfg, data = nano
    graph = load_cfg(cfg, warn=quiet)
    random_weights(graph, seed=1)
    weights = tmp_path_factory.mktemp("api_running") / "nano.weights"
    write_weights(graph, weights)
    photos = [data.parent / line for line in (data.parent / "valid.txt").read_text().split()[:2]]
    return Files(cfg, weights, data, data.parent / "synthetic.names", photos)


class Clock:
    """A ``time`` module whose ``perf_counter`` advances one second per reading (whole numbers: every
    difference is exact, so two runs print the same timings)."""

    def __init__(self) -> None:
        self.now = 0

    def perf_counter(self) -> float:
        self.now += 1
        return float(self.now)


def cli(*args: object):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def same_files(first: Path, second: Path) -> None:
    names = sorted(path.name for path in first.iterdir())
    assert names and names == sorted(path.name for path in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


# -- detect --------------------------------------------------------------------------------------------------


def test_detect_prints_and_draws_what_the_command_does(files: Files, tmp_path: Path, monkeypatch):
    monkeypatch.setattr("cfgsurgeon.detect.time", Clock())
    model_args = ["--cfg", files.cfg, "--weights", files.weights, "--names", files.names, "--thresh", 0.05]
    text = cli("detect", *model_args, "-o", tmp_path / "cli", *files.photos)
    as_json = cli("detect", *model_args, "--json", "-o", tmp_path / "cli-json", *files.photos)
    report = Model.load(files.cfg, files.weights).detect(
        files.photos, names=files.names, thresh=0.05, output=tmp_path / "api"
    )
    assert sum(map(len, report.detections)) > 0  # something to compare
    assert text.stdout == str(report) + "\n"
    assert as_json.stdout == report.json() + "\n" and json.loads(as_json.stdout) == report.data
    assert as_json.stderr == "\n".join(report.timing_lines()) + "\n"
    assert report.drawn == [tmp_path / "api" / f"{photo.stem}.png" for photo in files.photos]
    same_files(tmp_path / "cli", tmp_path / "api")


def test_detect_draws_nothing_unless_asked_and_keeps_the_warnings(files: Files, tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = Model.load(files.cfg, files.weights)
    numbered = model.detect(str(files.photos[0]), thresh=0.05)
    assert list(tmp_path.iterdir()) == [] and numbered.drawn == [] and numbered.warnings == []
    assert {det.name for det in numbered.detections[0]} <= {"0", "1", "2"}
    named = model.detect(files.photos[:1], names=["circle", "square", "triangle", "extra"], thresh=0.05)
    assert named.warnings == ["`names`: 4 class names for 3 classes; the extra names are not used"]
    assert [det.class_id for det in named.detections[0]] == [det.class_id for det in numbered.detections[0]]
    with pytest.raises(UsageError, match="no such image file"):
        model.detect(tmp_path / "missing.png")


@pytest.mark.shared
@pytest.mark.slow
def test_detect_finds_what_darknet_prints_for_the_dog(files: Files):
    from test_detect import BOX_TOLERANCE, PROB_TOLERANCE, parse_lines

    if not (MODELS / "yolov3-tiny.weights").is_file():
        pytest.skip("needs yolov3-tiny.weights in the shared zoo")
    model = Model.load(MODELS / "yolov3-tiny.cfg", MODELS / "yolov3-tiny.weights")
    found = model.detect(SHARED / "zoo" / "images" / "dog.jpg", names=MODELS / "coco.names").detections[0]
    reference = parse_lines((REFERENCE / "dog.txt").read_text().splitlines())
    assert [det.name for det in found] == [name for name, _, _ in reference]
    for det, (_, percent, box) in zip(found, reference, strict=True):
        assert abs(round(det.prob * 100) - percent) <= PROB_TOLERANCE
        assert max(abs(a - b) for a, b in zip(det.rounded_box, box, strict=True)) <= BOX_TOLERANCE
        left, top, width, height = det.box
        assert det.corners == (left, top, left + width, top + height)


# -- eval ----------------------------------------------------------------------------------------------------


def test_evaluate_prints_and_saves_what_the_command_does(files: Files, tmp_path: Path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr("cfgsurgeon.train.evaluate.time", Clock())
    cli_out, api_out = tmp_path / "cli", tmp_path / "api"
    model_args = ["--cfg", files.cfg, "--weights", files.weights, "--data", files.data]
    table = cli("eval", *model_args, "--save-json", cli_out / "d.json", "--save-txt", cli_out / "txt")
    as_json = cli("eval", *model_args, "--json", "--classes", "square,2", "--all-classes")
    logged: list[str] = []
    model = Model.load(files.cfg, files.weights)
    report = model.evaluate(
        files.data, save_json=api_out / "d.json", save_txt=api_out / "txt", log=logged.append
    )
    chosen = model.evaluate(files.data, classes=["square", 2], all_classes=True)
    assert table.stdout == str(report) + "\n"
    assert table.stderr == "\n".join(logged).replace(str(api_out), str(cli_out)) + "\n"
    assert as_json.stdout == chosen.json() + "\n" and chosen.data["classes"] == [1, 2]
    assert (cli_out / "d.json").read_bytes() == (api_out / "d.json").read_bytes()
    same_files(cli_out / "txt", api_out / "txt")
    assert report.json_file == api_out / "d.json" and len(report.txt_files) == 4


def test_evaluate_detections_score_in_pycocotools_as_reported(files: Files):
    """pycocotools, given the returned detections and ground truth built from the label files, finds the
    returned mAPs: the detections are the ones scored, in the photos' pixels."""
    pytest.importorskip("torch")
    pytest.importorskip("pycocotools")
    from test_eval_cli import coco_map, ground_truth

    report = Model.load(files.cfg, files.weights).evaluate(files.data)
    results = [
        {"image_id": int(image.stem), "category_id": det.class_id, "bbox": list(det.box), "score": det.prob}
        for image, found in zip(report.images, report.detections, strict=True)
        for det in found
    ]
    assert results and len(report.images) == 4
    map50, map50_95 = coco_map(ground_truth(files.data), results)
    assert report.mAP50 == pytest.approx(map50, abs=1e-9)
    assert report.mAP50_95 == pytest.approx(map50_95, abs=1e-9)
    assert isinstance(report.P, float)
    assert [metrics.name for metrics in report.per_class] == ["circle", "square", "triangle"]


# -- export --------------------------------------------------------------------------------------------------


def test_export_prints_and_writes_what_the_command_does(files: Files, tmp_path: Path, monkeypatch):
    (tmp_path / "cli").mkdir()
    (tmp_path / "api").mkdir()
    monkeypatch.chdir(tmp_path / "cli")  # the same relative output in two folders: the same line printed
    result = cli("export", "--format", "torch-source", "--cfg", files.cfg, "-o", "nano.py")
    monkeypatch.chdir(tmp_path / "api")
    report = Model.load(files.cfg).export("torch-source", "nano.py")
    assert result.stdout == str(report) + "\n"
    assert report.paths == [Path("nano.py")]
    same_files(tmp_path / "cli", tmp_path / "api")


def test_exported_onnx_runs_in_onnxruntime_as_the_model_in_torch(files: Files, tmp_path: Path):
    ort = pytest.importorskip("onnxruntime")
    import torch

    from cfgsurgeon.emit.heads import INPUT_NAME, head_layers

    model = Model.load(files.cfg, files.weights)
    report = model.export("onnx", tmp_path / "nano.onnx")
    assert report.paths == [tmp_path / "nano.onnx"] and report.format == "onnx"
    x = np.random.default_rng(0).random((1, *model.graph.input_shape), dtype=np.float32)
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    exported = session.run(None, {INPUT_NAME: x})
    with torch.inference_mode():
        keep = [layer.index for layer in head_layers(model.graph)]
        expected = [out.numpy() for out in model.to_torch()(torch.from_numpy(x), keep=keep)]
    for got, want in zip(exported, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(UsageError, match="^`format` onnx needs `weights`$"):
        Model.load(files.cfg).export("onnx", tmp_path / "bare.onnx")


# -- bench ---------------------------------------------------------------------------------------------------

BENCH_SETTINGS = {"runs": 2, "warmup": 1, "size": 64, "threads": 1}


def test_bench_prints_what_the_command_prints(files: Files, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr("cfgsurgeon.bench.time", Clock())
    args = [f"--{key}={value}" for key, value in BENCH_SETTINGS.items()]
    models = ["--cfg", files.cfg, "--weights", files.weights, "--cfg", files.cfg, "--weights", "random"]
    table = cli("bench", *models, *args)
    as_json = cli("bench", *models, *args, "--json")
    logged: list[str] = []
    report = bench(
        [Model.load(files.cfg, files.weights), ModelSpec(files.cfg)], log=logged.append, **BENCH_SETTINGS
    )
    assert table.stdout == str(report) + "\n"
    assert as_json.stdout == report.json() + "\n"
    assert table.stderr == "".join(line + "\n" for line in logged)


def test_bench_figures_come_from_the_clock_and_leave_the_model_alone(monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.setattr("cfgsurgeon.bench.time", Clock())
    model = Model.load(REPO_CFG_DIR / "yolo-nano.cfg")  # 128×128, no weights
    row = model.bench(**BENCH_SETTINGS).models[0]
    assert (row.median_ms, row.p90_ms, row.throughput, row.latency_ratio) == (1000.0, 1000.0, 1.0, 1.0)
    assert row.input == (3, 64, 64) and row.random_weights and row.weights is None
    assert row.bflops == pytest.approx(model.bflops / 4) and row.params == model.params
    assert (model.graph.net.width, model.graph.net.height) == (128, 128) and not model.has_weights
