"""``cfgsurgeon bench``: the JSON report's schema and the consistency of its figures (never their values:
timings on a shared machine are not assertable), the table, and one-line user errors. Uses the repo's own
cfgs, so it needs neither ../shared nor real weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO_CFG_DIR

from cfgsurgeon import load_cfg
from cfgsurgeon.bench import default_threads
from cfgsurgeon.cli import main

NANO = REPO_CFG_DIR / "yolo-nano.cfg"
NANO_RES = REPO_CFG_DIR / "yolo-nano-res.cfg"
FAST = ["--runs", "3", "--warmup", "1", "--size", "128"]

MODEL_KEYS = {
    "cfg",
    "weights",
    "model",
    "random_weights",
    "input",
    "bflops",
    "params",
    "latency_ms",
    "throughput",
    "setup_s",
    "ratios",
}
REPORT_KEYS = {
    "backend",
    "backend_version",
    "device",
    "threads",
    "size",
    "batch",
    "runs",
    "warmup",
    "interleaved",
    "models",
}


def run(*args: object):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def bench_json(*args: object) -> dict:
    result = run("bench", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def check_report(report: dict, backend: str, runs: int, batch: int = 1) -> None:
    assert set(report) == REPORT_KEYS
    assert report["backend"] == backend and report["device"] == "CPU"
    assert report["runs"] == runs and report["batch"] == batch
    assert isinstance(report["threads"], int) and report["threads"] >= 1
    first = report["models"][0]
    for model in report["models"]:
        assert set(model) == MODEL_KEYS
        latency = model["latency_ms"]
        assert set(latency) == {"median", "p90", "mean", "min", "max"}
        assert 0 < latency["min"] <= latency["median"] <= latency["p90"] <= latency["max"]
        assert latency["min"] <= latency["mean"] <= latency["max"]
        assert model["throughput"] > 0 and model["setup_s"] >= 0
        assert model["bflops"] > 0 and model["params"] > 0
        ratios = model["ratios"]
        assert ratios["bflops"] == pytest.approx(model["bflops"] / first["bflops"])
        assert ratios["params"] == pytest.approx(model["params"] / first["params"])
        assert ratios["latency_median"] == pytest.approx(latency["median"] / first["latency_ms"]["median"])
        assert all(value > 0 for value in ratios.values())
    assert all(value == 1.0 for value in first["ratios"].values())


@pytest.mark.parametrize(("backend", "interleave"), [("torch", False), ("onnxruntime", True)])
def test_json_schema_and_consistent_numbers(backend: str, interleave: bool, tmp_path: Path):
    pytest.importorskip("torch")
    if backend == "onnxruntime":
        pytest.importorskip("onnxruntime")
    weights = tmp_path / "nano.weights"
    assert run("init", "--cfg", NANO, "-o", weights).exit_code == 0
    args = ["--cfg", NANO, "--weights", weights, "--cfg", NANO_RES, "--weights", "random"]
    report = bench_json(*args, "--backend", backend, *FAST, *(["--interleave"] if interleave else []))
    check_report(report, backend, runs=3)
    assert report["interleaved"] is interleave
    assert report["threads"] == default_threads() and report["size"] == 128
    nano, res = report["models"]
    assert (nano["weights"], nano["random_weights"]) == (str(weights), False)
    assert (res["weights"], res["random_weights"]) == (None, True)
    graph = load_cfg(NANO, warn=lambda _: None)
    assert nano["input"] == list(graph.input_shape) == [3, 128, 128]
    assert nano["bflops"] == pytest.approx(graph.bflops) and nano["params"] == graph.params


def test_size_threads_and_batch(tmp_path: Path):
    pytest.importorskip("onnxruntime")
    report = bench_json("--cfg", NANO, "--backend", "onnxruntime", "--runs", "2", "--warmup", "0",
                        "--size", "160", "--threads", "1", "--batch", "2")  # fmt: skip
    check_report(report, "onnxruntime", runs=2, batch=2)
    assert report["threads"] == 1 and report["models"][0]["input"] == [3, 160, 160]
    assert report["models"][0]["bflops"] == pytest.approx(
        load_cfg(NANO, warn=print).bflops * (160 / 128) ** 2
    )


def test_table_states_threads_and_has_a_row_per_model():
    pytest.importorskip("torch")
    result = run("bench", "--cfg", NANO, "--cfg", NANO, *FAST, "--threads", "1")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("backend torch") and "1 thread," in lines[0] and "3 timed runs" in lines[0]
    assert lines[1].split()[:4] == ["model", "input", "BFLOPs", "params"]
    rows = lines[2:]
    assert len(rows) == 2 and all(row.startswith("yolo-nano.cfg (random)") for row in rows)
    assert rows[0].split()[-3:] == ["1.000", "1.000", "1.000"]  # ratios to itself
    assert "input 3x128x128" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cfg", NANO, "--cfg", NANO, "--weights", "x.weights"], "1 --weights for 2 --cfg"),
        (["--cfg", "missing.cfg"], "missing.cfg"),
        (["--cfg", NANO, "--weights", "missing.weights"], "missing.weights"),
        (["--cfg", NANO, "--size", "100"], "layer"),  # not a multiple of the stride: the shapes do not fit
    ],
    ids=["weights-count", "missing-cfg", "missing-weights", "bad-size"],
)
def test_user_errors_are_one_line(args: list, message: str):
    result = run("bench", *args, "--runs", "1", "--warmup", "0")
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.output


def test_help_lists_every_option():
    result = run("bench", "--help")
    assert result.exit_code == 0
    for option in ("--cfg", "--weights", "--backend", "--size", "--runs", "--warmup", "--threads", "--batch"):
        assert option in result.output
