"""The ``cfgsurgeon`` command line: inspect (table, JSON, γ columns), rewrite, init, light imports, and one
clean ``Error:`` line (never a traceback) for every user mistake."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import CFG_DIR, MODELS_DIR, REFERENCE_DIR, REPO_CFG_DIR, REPORT, SHARED_MARK, need_shared, quiet

from cfgsurgeon import load_cfg, read_weights
from cfgsurgeon.cli import main

PROJECT = Path(__file__).resolve().parents[1]
WEIGHTS_SIZE = 35_434_956


def run(*args: object):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    # CliRunner catches every exception: only SystemExit (what click raises) is an acceptable outcome
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def ok(*args: object):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def model() -> tuple[Path, Path]:
    return need_shared(MODELS_DIR / "yolov3-tiny.cfg"), need_shared(MODELS_DIR / "yolov3-tiny.weights")


def reference_total_bflops(name: str) -> float:
    header = (REFERENCE_DIR / f"{name}.tsv").read_text().splitlines()[0]
    return float(re.search(r"total BFLOPs ([0-9.]+)", header).group(1))


# -- inspect -----------------------------------------------------------------------------------------------
@SHARED_MARK
def test_inspect_table_totals(model):
    cfg, _ = model
    result = ok("inspect", "--cfg", cfg)
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["layer", "type"]
    assert len(lines) == 1 + 24 + 1
    total = re.fullmatch(
        r"input 416x416x3, 24 layers, ([0-9.]+) BFLOPs, 8,858,734 floats in \.weights.*", lines[-1]
    )
    assert total, lines[-1]
    assert total.group(1) == "5.571" == f"{reference_total_bflops('yolov3-tiny'):.3f}"
    assert re.match(r"\s*12 convolutional\s+1024 3x3/1\s+13x13x512 → 13x13x1024\s+1\.595$", lines[13])
    assert result.stderr == ""  # no warnings for the official cfg


@SHARED_MARK
def test_inspect_json(model):
    cfg, _ = model
    data = json.loads(ok("inspect", "--cfg", cfg, "--json").stdout)
    assert {"bflops", "params", "layers"} <= set(data)
    assert data["params"] == 8_858_734
    assert data["bflops"] == pytest.approx(reference_total_bflops("yolov3-tiny"), rel=1e-6)
    layers = data["layers"]
    assert [row["index"] for row in layers] == list(range(24))
    for row in layers:
        assert {"index", "type", "input", "output", "bflops", "params"} <= set(row)
    assert [row["line"] for row in layers] == sorted(row["line"] for row in layers)  # cfg order
    assert [row["type"] for row in layers[:3]] == ["convolutional", "maxpool", "convolutional"]
    assert layers[0]["input"] == [3, 416, 416] and layers[0]["output"] == [16, 416, 416]
    assert layers[20]["inputs"] == [19, 8] and layers[20]["output"] == [384, 26, 26]
    assert sum(row["params"] for row in layers) == data["params"]
    assert sum(row["bflops"] for row in layers) == pytest.approx(data["bflops"])
    assert "gamma" not in layers[0]


@SHARED_MARK
def test_inspect_with_weights_shows_gamma(model):
    cfg, weights = model
    lines = ok("inspect", "--cfg", cfg, "--weights", weights).stdout.splitlines()
    assert "|γ| min" in lines[0] and "<0.01" in lines[0]
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)
    gamma = abs(graph[0].weights["scales"].astype(float))
    row0 = lines[1].split()
    assert row0[-4:-1] == [f"{gamma.min():.4f}", f"{gamma.mean():.4f}", f"{gamma.max():.4f}"]
    assert row0[-1].endswith("%")
    assert lines[16].split()[:2] == ["15", "convolutional"] and lines[16].endswith("0.044")  # no BN: no γ
    data = json.loads(ok("inspect", "--cfg", cfg, "--weights", weights, "--json").stdout)
    assert data["layers"][0]["gamma"]["max"] == pytest.approx(gamma.max())
    assert "gamma" not in data["layers"][15]


def test_inspect_imports_no_framework():
    """A fresh interpreter running ``inspect`` must not import torch or tensorflow (they take seconds)."""
    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    code = (
        "import sys, json\n"
        f"sys.argv = ['cfgsurgeon', 'inspect', '--cfg', {str(cfg)!r}]\n"
        "from cfgsurgeon.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
        "names = ('torch', 'tensorflow', 'cfgsurgeon.cli')\n"
        "print(json.dumps({name: name in sys.modules for name in names}))\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT, timeout=120
    )
    wall = time.perf_counter() - start
    REPORT["inspect in a fresh interpreter (yolo-nano.cfg), wall time"] = f"{wall:.2f} s"
    print(f"inspect wall time: {wall:.2f} s")
    assert done.returncode == 0, done.stderr
    assert "BFLOPs" in done.stdout
    modules = json.loads(done.stdout.splitlines()[-1])
    assert modules == {"torch": False, "tensorflow": False, "cfgsurgeon.cli": True}


# -- user errors: one "Error:" line, non-zero exit, no traceback --------------------------------------------
BAD_CFG = "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nfilters 4\n"
RNN_CFG = "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\n[lstm]\noutput=4\n"


def assert_one_error_line(result, *needles: str) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), lines[0]
    assert result.stdout == ""  # the error goes to stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_error_missing_cfg(tmp_path: Path):
    assert_one_error_line(run("inspect", "--cfg", tmp_path / "nope.cfg"), "nope.cfg", "cannot read cfg")


def test_error_bad_cfg(tmp_path: Path):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(BAD_CFG)
    assert_one_error_line(run("inspect", "--cfg", cfg), f"{cfg}:6:9:", "key=value")


def test_error_unsupported_layer(tmp_path: Path):
    cfg = tmp_path / "rnn.cfg"
    cfg.write_text(RNN_CFG)
    assert_one_error_line(run("inspect", "--cfg", cfg), f"unsupported layer [lstm] at {cfg}:6")


@SHARED_MARK
def test_error_recurrent_collection_cfg():
    cfg = need_shared(CFG_DIR / "rnn.cfg")
    assert_one_error_line(run("inspect", "--cfg", cfg), "unsupported layer [rnn]")


@SHARED_MARK
def test_error_resnet50():
    cfg = need_shared(CFG_DIR / "resnet50.cfg")
    line = assert_one_error_line(run("inspect", "--json", "--cfg", cfg), "[shortcut]")
    assert len(re.findall(r"\d+x\d+x\d+", line)) == 2


@SHARED_MARK
@pytest.mark.parametrize(("change", "actual"), [(-100, WEIGHTS_SIZE - 100), (8, WEIGHTS_SIZE + 8)])
def test_error_wrong_size_weights(model, tmp_path: Path, change: int, actual: int):
    cfg, weights = model
    bad = tmp_path / "bad.weights"
    data = weights.read_bytes()
    bad.write_bytes(data[:change] if change < 0 else data + b"\0" * change)
    for command in ("inspect", "rewrite"):
        extra = ["-o", tmp_path / "out"] if command == "rewrite" else []
        assert_one_error_line(
            run(command, "--cfg", cfg, "--weights", bad, *extra), str(WEIGHTS_SIZE), str(actual)
        )
    assert not (tmp_path / "out" / "bad.weights").exists()


def test_error_missing_weights(tmp_path: Path):
    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    assert_one_error_line(
        run("inspect", "--cfg", cfg, "--weights", tmp_path / "x.weights"), "cannot read weights"
    )


def test_error_rewrite_would_overwrite_the_input_cfg(tmp_path: Path):
    cfg = tmp_path / "model.cfg"
    shutil.copy(REPO_CFG_DIR / "yolo-nano.cfg", cfg)
    before = cfg.read_bytes()
    assert_one_error_line(run("rewrite", "--cfg", cfg, "-o", tmp_path), "refusing to overwrite")
    assert cfg.read_bytes() == before
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.cfg"]  # no temp file left behind


@SHARED_MARK
def test_error_rewrite_would_overwrite_the_input_weights(model, tmp_path: Path):
    cfg, weights = model
    (tmp_path / "w").mkdir()
    copy = tmp_path / "w" / "yolov3-tiny.weights"
    shutil.copy(weights, copy)
    assert_one_error_line(run("rewrite", "--cfg", cfg, "--weights", copy, "-o", copy.parent), "refusing")
    assert copy.stat().st_size == WEIGHTS_SIZE and copy.read_bytes() == weights.read_bytes()


@SHARED_MARK
def test_error_in_a_real_process_has_no_traceback(model, tmp_path: Path):
    cfg, weights = model
    bad = tmp_path / "short.weights"
    bad.write_bytes(weights.read_bytes()[:-100])
    done = subprocess.run(
        [sys.executable, "-m", "cfgsurgeon.cli", "inspect", "--cfg", str(cfg), "--weights", str(bad)],
        capture_output=True,
        text=True,
        cwd=PROJECT,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert (
        done.stderr.count("\n") == 1 and done.stderr.startswith("Error: ") and "Traceback" not in done.stderr
    )


# -- rewrite -----------------------------------------------------------------------------------------------
@SHARED_MARK
def test_rewrite_reproduces_the_model(model, tmp_path: Path):
    cfg, weights = model
    out = tmp_path / "out"
    result = ok("rewrite", "--cfg", cfg, "--weights", weights, "-o", out)
    assert f"({WEIGHTS_SIZE:,} bytes)" in result.stdout
    assert (out / "yolov3-tiny.weights").read_bytes() == weights.read_bytes()
    assert load_cfg(out / "yolov3-tiny.cfg", warn=quiet).signature() == load_cfg(cfg, warn=quiet).signature()
    # rewriting the rewritten model is a fixed point
    again = tmp_path / "again"
    ok("rewrite", "--cfg", out / "yolov3-tiny.cfg", "--weights", out / "yolov3-tiny.weights", "-o", again)
    assert (again / "yolov3-tiny.cfg").read_text() == (out / "yolov3-tiny.cfg").read_text()
    assert (again / "yolov3-tiny.weights").read_bytes() == weights.read_bytes()


def test_rewrite_cfg_only(tmp_path: Path):
    cfg = REPO_CFG_DIR / "yolo-nano-res.cfg"
    ok("rewrite", "--cfg", cfg, "-o", tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["yolo-nano-res.cfg"]
    assert (
        load_cfg(tmp_path / "yolo-nano-res.cfg", warn=quiet).signature()
        == load_cfg(cfg, warn=quiet).signature()
    )


# -- init --------------------------------------------------------------------------------------------------
def test_init_writes_reproducible_random_weights(tmp_path: Path):
    pytest.importorskip("cfgsurgeon.randinit")
    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    graph = load_cfg(cfg, warn=quiet)
    files = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        files[name] = tmp_path / f"{name}.weights"
        result = ok("init", "--cfg", cfg, "-o", files[name], "--seed", seed)
        assert f"seed {seed}" in result.stdout
    assert files["a"].stat().st_size == 20 + 4 * graph.params
    read_weights(graph, files["a"])
    assert graph[0].weights["weights"].std() > 0
    assert files["a"].read_bytes() == files["b"].read_bytes()
    assert files["a"].read_bytes() != files["c"].read_bytes()


def test_init_refuses_a_non_weights_output(tmp_path: Path):
    pytest.importorskip("cfgsurgeon.randinit")
    assert_one_error_line(
        run("init", "--cfg", REPO_CFG_DIR / "yolo-nano.cfg", "-o", tmp_path / "x.txt"), ".weights"
    )
    assert not (tmp_path / "x.txt").exists()
