"""``cfgsurgeon eval`` end to end on synthetic photos of several sizes: the saved detections (COCO JSON,
darknet txt) against pycocotools and ``detect``, class selection and listing, progress and timing, the
preparation (letterbox or plain resize) and the missing-label checks.

The ground truth pycocotools scores against is built here from the label files and the photos' sizes
(read with PIL), independently of the code under test.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO_CFG_DIR, REPORT, quiet
from PIL import Image

from cfgsurgeon.cli import main

cocoeval = pytest.importorskip("pycocotools.cocoeval", reason="pycocotools is a test dependency")
coco_api = pytest.importorskip("pycocotools.coco")

CLASSES = ["circle", "square", "triangle"]
TOLERANCE = 1e-9
# Photo sizes (width, height), reused in turn: wider and taller than the 128×128 input, and one square, so
# the letterbox pads along either axis.
SIZES = [(200, 120), (96, 160), (128, 128), (250, 90), (110, 180), (160, 100)]
_worst: dict[str, float] = {}


class Setup(NamedTuple):
    root: Path
    data: Path
    weights: Path
    cfgs: dict[str, Path]  # "resize" (the cfg as it is) and "letterbox" (letter_box=1 added)


class Run(NamedTuple):
    report: dict  # the --json object
    json_file: Path
    txt_dir: Path
    stderr: str


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    """yolo-nano with random weights; 12 synthetic photos stretched to the sizes above (the normalised
    labels stay right under a stretch)."""
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.train.synthetic import make_synthetic_dataset
    from cfgsurgeon.weights import write_weights

    root = tmp_path_factory.mktemp("eval_cli")
    data = make_synthetic_dataset(root / "synthetic", train=1, valid=12, seed=3)
    for i, photo in enumerate(_photos(data)):
        with Image.open(photo) as image:
            stretched = image.resize(SIZES[i % len(SIZES)], Image.Resampling.BILINEAR)
        stretched.save(photo)
    plain = REPO_CFG_DIR / "yolo-nano.cfg"
    graph = load_cfg(plain, warn=quiet)
    random_weights(graph, seed=1)
    write_weights(graph, root / "nano.weights")
    letterbox = root / "nano-letterbox.cfg"
    letterbox.write_text(plain.read_text().replace("[net]\n", "[net]\nletter_box=1\n", 1))
    return Setup(root, data, root / "nano.weights", {"resize": plain, "letterbox": letterbox})


def _photos(data: Path) -> list[Path]:
    return [data.parent / line for line in (data.parent / "valid.txt").read_text().split()]


def _size(photo: Path) -> tuple[int, int]:
    with Image.open(photo) as image:
        return image.size


def invoke(*args: object):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def run_eval(setup: Setup, kind: str, *args: object, data: Path | None = None):
    model = ("--cfg", setup.cfgs[kind], "--weights", setup.weights, "--data", data or setup.data)
    return invoke("eval", *model, *args)


_runs: dict[str, Run] = {}


def saved_run(setup: Setup, kind: str) -> Run:
    """``eval --json --save-json --save-txt`` with ``kind``'s cfg, run once per module."""
    if kind not in _runs:
        out = setup.root / f"out-{kind}"
        result = run_eval(setup, kind, "--json", "--save-json", out / "dets.json", "--save-txt", out / "txt")
        assert result.exit_code == 0, result.output
        _runs[kind] = Run(json.loads(result.stdout), out / "dets.json", out / "txt", result.stderr)
    return _runs[kind]


# -- pycocotools, given ground truth built from the label files ----------------------------------------------


def ground_truth(data: Path) -> dict:
    """COCO ground truth: image ids are the stems as ints, boxes the labels times the photo's size."""
    gt: dict = {"info": {}, "images": [], "annotations": []}
    gt["categories"] = [{"id": k, "name": name} for k, name in enumerate(CLASSES)]
    for photo in _photos(data):
        w, h = _size(photo)
        gt["images"].append({"id": int(photo.stem), "width": w, "height": h})
        label = photo.with_suffix(".txt")
        rows = label.read_text().splitlines() if label.is_file() else []
        for row in rows:
            k, cx, cy, bw, bh = (float(v) for v in row.split())
            box = [(cx - bw / 2) * w, (cy - bh / 2) * h, bw * w, bh * h]
            gt["annotations"].append(
                {
                    "id": len(gt["annotations"]) + 1,  # pycocotools treats an id of 0 as "unmatched"
                    "image_id": int(photo.stem),
                    "category_id": int(k),
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    return gt


def coco_map(gt: dict, results: list[dict], classes: list[int] | None = None) -> tuple[float, float]:
    """mAP@0.5 and mAP@0.5:0.95 by pycocotools' COCOeval over ``results`` read back by ``loadRes``
    (one 'all' area range and no cap on detections per image, as our eval)."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt_api = coco_api.COCO()
        gt_api.dataset = json.loads(json.dumps(gt))
        gt_api.createIndex()
        dt_api = gt_api.loadRes(results)
        evaluator = cocoeval.COCOeval(gt_api, dt_api, "bbox")
        evaluator.params.maxDets = [10**6]
        evaluator.params.areaRng = [[0, 1e12]]
        evaluator.params.areaRngLbl = ["all"]
        if classes is not None:
            evaluator.params.catIds = classes
        evaluator.evaluate()
        evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, 0]  # (iou, recall, class)
    valid = precision > -1  # -1: a class without ground truth
    return float(precision[0][valid[0]].mean()), float(precision[valid].mean())


def _note(key: str, value: float) -> None:
    _worst[key] = max(_worst.get(key, 0.0), value)
    REPORT["eval --save-json vs pycocotools"] = ", ".join(f"max |Δ{k}| = {v:.1e}" for k, v in _worst.items())


@pytest.mark.parametrize("kind", ["letterbox", "resize"])
def test_saved_json_scores_in_pycocotools_as_ours(setup, kind):
    run = saved_run(setup, kind)
    results = json.loads(run.json_file.read_text())
    assert {r["image_id"] for r in results} <= set(range(12)) and len(results) > 1000
    assert set(results[0]) == {"image_id", "category_id", "bbox", "score"}
    map50, map50_95 = coco_map(ground_truth(setup.data), results)
    assert run.report["mAP50"] > 0 and run.report["mAP50_95"] > 0  # matches exist, so a wrong box would show
    _note("mAP50", abs(run.report["mAP50"] - map50))
    _note("mAP50:95", abs(run.report["mAP50_95"] - map50_95))
    assert run.report["mAP50"] == pytest.approx(map50, abs=TOLERANCE)
    assert run.report["mAP50_95"] == pytest.approx(map50_95, abs=TOLERANCE)


def test_a_box_mapped_without_the_letterbox_scores_differently(setup):
    """The comparison above can fail: the same detections mapped as if the photos had been plainly resized
    (the letterbox left in) give pycocotools another mAP."""
    letterboxed = saved_run(setup, "letterbox")
    results = json.loads(letterboxed.json_file.read_text())
    sizes = {int(p.stem): _size(p) for p in _photos(setup.data)}
    wrong = []
    for r in results:
        (w, h), (x, y, bw, bh) = sizes[r["image_id"]], r["bbox"]
        net = _letterbox_to_network(x / w, y / h, bw / w, bh / h, w, h)  # back to network units, by hand
        wrong.append({**r, "bbox": [net[0] * w, net[1] * h, net[2] * w, net[3] * h]})
    map50, _ = coco_map(ground_truth(setup.data), wrong)
    assert abs(map50 - letterboxed.report["mAP50"]) > 1e-6


def _letterbox_to_network(x, y, w, h, photo_w, photo_h) -> tuple[float, float, float, float]:
    """A photo-normalised box → network-normalised on a 128×128 letterboxed input (darknet's arithmetic)."""
    scale = min(128 / photo_w, 128 / photo_h)
    new_w, new_h = int(photo_w * scale), int(photo_h * scale)
    off_x, off_y = (128 - new_w) // 2, (128 - new_h) // 2
    return (x * new_w + off_x) / 128, (y * new_h + off_y) / 128, w * new_w / 128, h * new_h / 128


@pytest.mark.parametrize("kind", ["letterbox", "resize"])
def test_perfect_detections_come_back_as_the_labels(setup, kind, monkeypatch, tmp_path):
    """The truths fed back as detections (score 1): after the mapping to photo pixels pycocotools gives AP 1
    at every IoU up to 0.95, and the txt files reproduce the label files."""
    import cfgsurgeon.train.evaluate as evaluate

    def truths_as_detections(model, dataset, *args, **kwargs):
        _, truths = real_predict(model, dataset, *args, **kwargs)
        return [np.c_[t[:, :1], np.ones(len(t)), t[:, 1:]] for t in truths], truths

    from cfgsurgeon.ir import load_cfg

    real_predict = evaluate.predict
    monkeypatch.setattr(evaluate, "predict", truths_as_detections)
    graph = load_cfg(setup.cfgs[kind], warn=quiet)
    from cfgsurgeon.weights import read_weights

    read_weights(graph, setup.weights)
    result = evaluate.evaluate_data(graph, setup.data, warn=quiet)
    assert result.preparation.letterbox == (kind == "letterbox")
    evaluate.save_coco_json(result, tmp_path / "dets.json")
    evaluate.save_darknet_txt(result, tmp_path / "txt")
    map50, map50_95 = coco_map(ground_truth(setup.data), json.loads((tmp_path / "dets.json").read_text()))
    assert (map50, map50_95) == (1.0, 1.0) == (result.metrics.mAP50, result.metrics.mAP50_95)
    for photo in _photos(setup.data):
        ours = _rows(tmp_path / "txt" / f"{photo.stem}.txt")
        np.testing.assert_allclose(ours[:, :5], _rows(photo.with_suffix(".txt"), 5), atol=2e-6)
        assert (ours[:, 5] == 1).all()


def _rows(path: Path, columns: int = 6) -> np.ndarray:
    return np.array([line.split() for line in path.read_text().splitlines()], dtype=float).reshape(
        -1, columns
    )


@pytest.mark.parametrize("kind", ["letterbox", "resize"])
def test_txt_files_hold_the_json_boxes(setup, kind):
    run = saved_run(setup, kind)
    results = json.loads(run.json_file.read_text())
    photos = _photos(setup.data)
    assert sorted(p.name for p in run.txt_dir.iterdir()) == sorted(f"{p.stem}.txt" for p in photos)
    for photo in photos:
        w, h = _size(photo)
        mine = [r for r in results if r["image_id"] == int(photo.stem)]
        expected = [
            [r["category_id"], (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h, r["score"]]
            for r in mine
            for x, y, bw, bh in [r["bbox"]]
        ]
        np.testing.assert_allclose(
            _rows(run.txt_dir / f"{photo.stem}.txt"), np.reshape(expected, (-1, 6)), atol=6e-7
        )


def test_json_boxes_are_the_ones_detect_prints(setup):
    """For a wide and a tall photo, letterboxed: the saved boxes above 0.2 are ``detect``'s boxes."""
    from cfgsurgeon.detect import detect_image
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.runtimes import make_runner
    from cfgsurgeon.weights import read_weights

    results = json.loads(saved_run(setup, "letterbox").json_file.read_text())
    graph = load_cfg(setup.cfgs["letterbox"], warn=quiet)
    read_weights(graph, setup.weights)
    runner = make_runner(graph)
    for photo in _photos(setup.data)[:2]:
        found = detect_image(graph, runner, photo, CLASSES, thresh=0.2).detections
        expected = np.array([(d.class_id, d.prob, *d.box) for d in found])
        ours = np.array(
            [
                (r["category_id"], r["score"], *r["bbox"])
                for r in results
                if r["image_id"] == int(photo.stem) and r["score"] > 0.2
            ]
        )
        assert len(ours) == len(expected) > 0
        for row in expected:  # each of detect's lines is one of ours: same class and probability, same box
            same = ours[(ours[:, 0] == row[0]) & (abs(ours[:, 1] - row[1]) < 1e-6)]
            assert np.abs(same[:, 2:] - row[2:]).max(axis=1).min() < 0.01, (row, same)  # float32 arithmetic


def test_saved_files_are_the_same_bytes_every_run(setup, tmp_path):
    first = saved_run(setup, "resize")
    result = run_eval(setup, "resize", "--save-json", tmp_path / "again.json", "--save-txt", tmp_path / "txt")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again.json").read_bytes() == first.json_file.read_bytes()
    for path in first.txt_dir.iterdir():
        assert (tmp_path / "txt" / path.name).read_bytes() == path.read_bytes()


# -- what the command prints --------------------------------------------------------------------------------


def test_json_report_adds_timing_and_preparation(setup):
    run = saved_run(setup, "letterbox")
    report = run.report
    assert {"P", "R", "mAP50", "mAP50_95", "per_class", "images", "truths", "pr_thresh"} <= report.keys()
    assert [c["name"] for c in report["per_class"]] == CLASSES
    assert report["seconds"] > 0 and report["ms_per_image"] == pytest.approx(report["seconds"] * 1000 / 12)
    assert report["preparation"]["letterbox"] is True
    assert (report["preparation"]["width"], report["preparation"]["height"]) == (128, 128)
    assert "letterboxed to 128×128" in report["preparation"]["description"]
    assert report["missing_labels"] == 0 and report["classes"] is None
    assert run.stderr == ""  # with --json, stdout holds the one object and stderr stays quiet


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("letterbox", "images letterboxed to 128×128: aspect ratio kept"),
        ("resize", "images resized to 128×128 without keeping their aspect ratio"),
    ],
)
def test_table_mode_says_how_images_are_prepared_and_how_long_it_took(setup, kind, said):
    result = run_eval(setup, kind)
    assert result.exit_code == 0, result.output
    assert said in result.stderr
    timing = re.search(r"scored 12 images in ([0-9.]+) s \(([0-9]+) ms/image\)", result.stderr)
    assert timing and float(timing.group(1)) > 0, result.stderr
    REPORT[f"eval timing ({kind}, yolo-nano, 12 photos, CPU)"] = timing.group(0)
    assert result.stdout.splitlines()[0].split()[:3] == ["class", "truths", "dets"]
    assert "scored" not in result.stdout and "\r" not in result.output  # no bar without a terminal


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("tty", "progress", "shown"), [(True, True, True), (False, True, False), (True, False, False)]
)
def test_progress_bar_only_when_asked_and_on_a_terminal(setup, monkeypatch, tty, progress, shown):
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.train.evaluate import evaluate_data
    from cfgsurgeon.weights import read_weights

    graph = load_cfg(setup.cfgs["resize"], warn=quiet)
    read_weights(graph, setup.weights)
    stderr = _Terminal() if tty else io.StringIO()
    monkeypatch.setattr("sys.stderr", stderr)
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        evaluate_data(graph, setup.data, batch_size=5, warn=quiet, progress=progress)
    # "/12 " is the bar's total: which counts it draws before closing depends on the machine's speed
    assert ("/12 [" in stderr.getvalue()) == shown, stderr.getvalue()
    assert stdout.getvalue() == ""  # the library prints nothing itself


# -- classes ------------------------------------------------------------------------------------------------


def test_classes_scores_only_those(setup, tmp_path):
    result = run_eval(
        setup, "letterbox", "--classes", "square, 2", "--json", "--save-json", tmp_path / "d.json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["classes"] == [1, 2]
    assert [c["name"] for c in report["per_class"]] == ["square", "triangle"]
    results = json.loads((tmp_path / "d.json").read_text())
    assert {r["category_id"] for r in results} == {1, 2}
    full = saved_run(setup, "letterbox").report
    assert report["mAP50"] == pytest.approx(np.mean([c["AP50"] for c in full["per_class"][1:]]), abs=1e-12)
    assert report["truths"] == sum(c["truths"] for c in full["per_class"][1:])
    map50, map50_95 = coco_map(ground_truth(setup.data), results, classes=[1, 2])
    assert report["mAP50"] == pytest.approx(map50, abs=TOLERANCE)
    assert report["mAP50_95"] == pytest.approx(map50_95, abs=TOLERANCE)


def test_an_unknown_class_is_refused(setup):
    result = run_eval(setup, "resize", "--classes", "circle,dog")
    assert result.exit_code != 0
    assert (
        "synthetic.data" in result.output and "'dog'" in result.output and "circle, square" in result.output
    )
    assert "Traceback" not in result.output


def test_table_lists_only_classes_with_boxes_unless_asked(setup, tmp_path):
    """Without triangle labels and with no detection above --pr-thresh 1, triangle has neither."""
    data = _copy_dataset(setup, tmp_path)
    for label in (data.parent / "valid").glob("*.txt"):
        label.write_text("".join(line + "\n" for line in label.read_text().splitlines() if line[0] != "2"))
    table = run_eval(setup, "resize", "--pr-thresh", "1", data=data)
    assert table.exit_code == 0, table.output
    rows = [line.split()[0] for line in table.stdout.splitlines()[1:]]
    assert rows[:3] == ["circle", "square", "all"]
    assert "1 of 3 classes have neither truths nor detections: not listed" in table.stdout
    every = run_eval(setup, "resize", "--pr-thresh", "1", "--all-classes", data=data)
    assert [line.split()[0] for line in every.stdout.splitlines()[1:5]] == [
        "circle",
        "square",
        "triangle",
        "all",
    ]
    assert "not listed" not in every.stdout


# -- labels ------------------------------------------------------------------------------------------------


def _copy_dataset(setup: Setup, tmp_path: Path) -> Path:
    shutil.copytree(setup.data.parent, tmp_path / "copy")
    return tmp_path / "copy" / setup.data.name


def test_a_split_without_any_label_file_is_an_error_naming_where_it_looked(setup, tmp_path):
    data = _copy_dataset(setup, tmp_path)
    for label in (data.parent / "valid").glob("*.txt"):
        label.unlink()
    result = run_eval(setup, "resize", data=data)
    assert result.exit_code != 0
    assert str(data.parent / "valid.txt") in result.output
    assert str(data.parent / "valid" / "000000.txt") in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: ") and "Traceback" not in result.output


def test_some_missing_labels_are_a_warning_with_the_count_and_an_example(setup, tmp_path):
    data = _copy_dataset(setup, tmp_path)
    for name in ("000003.txt", "000007.txt"):
        (data.parent / "valid" / name).unlink()
    result = run_eval(setup, "resize", "--json", data=data)
    assert result.exit_code == 0, result.output
    warning = result.stderr
    assert "2 of 12 images" in warning and str(data.parent / "valid" / "000003.txt") in warning
    assert json.loads(result.stdout)["missing_labels"] == 2


def test_save_txt_refuses_to_write_over_the_labels(setup, tmp_path):
    data = _copy_dataset(setup, tmp_path)
    label = data.parent / "valid" / "000000.txt"
    before = label.read_bytes()
    result = run_eval(setup, "resize", "--save-txt", data.parent / "valid", data=data)
    assert (
        result.exit_code != 0
        and "refusing to overwrite" in result.output
        and "Traceback" not in result.output
    )
    assert label.read_bytes() == before


def test_save_json_refuses_to_write_over_an_input(setup):
    result = run_eval(setup, "resize", "--save-json", setup.weights)
    assert result.exit_code != 0 and "refusing to overwrite" in result.output


def test_help_explains_every_option():
    text = " ".join(invoke("eval", "--help").output.split())
    for option, words in {
        "--save-json": "COCO results",
        "--save-txt": "<class> <cx> <cy> <w> <h> <prob>",
        "--classes": "ids or names",
        "--all-classes": "by default only classes with ground truth",
        "--split": "Which image list of the .data file",
    }.items():
        assert option in text and words in text, option
    assert "letter_box=1" in text
