"""The training API (``Model.train`` / ``Model.resume`` / ``Model.sparsify``, ``synth_dataset``, ``demo``)
against the commands: the same inputs give the command's stdout as ``str(report)`` and byte-identical files;
and each report's data checked against what is on disk, read back by our readers (or numpy)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import CFG_DIR, REPO_CFG_DIR, SHARED_MARK

from cfgsurgeon import Model, load_cfg, read_weights
from cfgsurgeon.api.training import synth_dataset
from cfgsurgeon.cli import main

# the nano fixture's short run: 2 epochs of batch 4 (2 steps each), a constant lr, valid scored every epoch
RUN = {"epochs": 2, "batch": 4, "warmup": 0, "lr": 0.005, "lr_policy": "constant", "eval_every": 1}
STEP_FLAGS = ["--batch", "4", "--warmup", "0", "--lr", "0.005", "--lr-policy", "constant", "--no-progress"]
RUN_FLAGS = [*STEP_FLAGS, "--epochs", "2", "--eval-every", "1"]


def run_cli(*args: object) -> str:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def same_files(first: Path, second: Path, names: list[str]) -> None:
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def tensors(graph) -> dict[tuple[int, str], np.ndarray]:
    return {
        (layer.index, name): value for layer in graph.layers for name, value in (layer.weights or {}).items()
    }


@pytest.fixture
def one_thread():
    """One intra-op thread: fast on a shared 2-core machine and bit-for-bit repeatable runs."""
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- synth ---------------------------------------------------------------------------------------------------


def test_synth_dataset_is_the_command(tmp_path):
    args = ["--classes", "2", "--train", "3", "--valid", "2", "--size", "32", "--seed", "4"]
    stdout = run_cli("synth", "-o", tmp_path / "cli", *args)
    report = synth_dataset(tmp_path / "api", classes=2, train=3, valid=2, size=32, seed=4)
    assert stdout.replace(str(tmp_path / "cli"), str(tmp_path / "api")) == f"{report}\n"
    files = sorted(str(p.relative_to(tmp_path / "cli")) for p in (tmp_path / "cli").rglob("*") if p.is_file())
    same_files(tmp_path / "cli", tmp_path / "api", files)


def test_synth_dataset_files(tmp_path):
    """The counts and paths the report gives are the files on disk."""
    from cfgsurgeon.train.dataset import read_data_file

    report = synth_dataset(tmp_path / "s", classes=2, train=3, valid=2, size=32)
    assert report.data_file == tmp_path / "s" / "synthetic.data" and report.folder == tmp_path / "s"
    spec = read_data_file(report.data_file)
    assert len(spec.names) == report.classes == 2
    assert len(list((tmp_path / "s" / "train").glob("*.png"))) == report.train_images == 3
    assert len(list((tmp_path / "s" / "valid").glob("*.png"))) == report.valid_images == 2


# -- train / resume ------------------------------------------------------------------------------------------


@pytest.fixture
def trained_both_ways(nano, tmp_path, one_thread):
    cfg, data = nano
    stdout = run_cli("train", "--cfg", cfg, "--data", data, "-o", tmp_path / "cli", *RUN_FLAGS)
    report = Model.load(cfg).train(data, tmp_path / "api", **RUN)
    return tmp_path, stdout, report


def test_train_is_the_command(trained_both_ways):
    tmp_path, stdout, report = trained_both_ways
    assert stdout.replace(str(tmp_path / "cli"), str(tmp_path / "api")) == f"{report}\n"
    assert "best valid mAP@0.5 in" in stdout
    same_files(tmp_path / "cli", tmp_path / "api", ["yolo-nano-64.weights", "yolo-nano-64.cfg"])
    same_files(tmp_path / "cli", tmp_path / "api", ["yolo-nano-64_best.weights"])


def test_train_report_is_what_was_written(trained_both_ways):
    """The trained model is the final .weights read back; the history is history.json; the best metrics
    are the evaluated epoch of highest mAP@0.5 there, and its weights file exists."""
    tmp_path, _, report = trained_both_ways
    out = tmp_path / "api"
    assert (report.weights, report.checkpoint, report.best) == (
        out / "yolo-nano-64.weights",
        out / "last.pt",
        out / "best.pt",
    )
    graph = load_cfg(out / "yolo-nano-64.cfg", warn=lambda m: None)
    read_weights(graph, out / "yolo-nano-64.weights")
    written, trained = tensors(graph), tensors(report.model.graph)
    assert written.keys() == trained.keys()
    for key, value in written.items():
        np.testing.assert_array_equal(trained[key], value, err_msg=str(key))
    history = json.loads((out / "history.json").read_text())
    assert report.history == history and len(report.step_losses) == 4
    scores = [epoch["map50"] for epoch in history["epochs"]]
    best = history["epochs"][int(np.argmax(scores))]
    assert report.best_metrics == {key: best[key] for key in ("epoch", "P", "R", "map50", "map50_95")}
    assert report.best_weights == out / "yolo-nano-64_best.weights" and report.best_weights.is_file()
    assert report.model.cfg == out / "yolo-nano-64.cfg" and report.warnings == []


def test_resume_is_the_command_and_continues_the_run(trained_both_ways, nano):
    tmp_path, _, first = trained_both_ways
    cfg, data = nano
    flags = [*STEP_FLAGS, "--epochs", "3"]
    last = tmp_path / "cli" / "last.pt"
    stdout = run_cli("train", "--resume", last, "--cfg", cfg, "--data", data, "-o", tmp_path / "cli2", *flags)
    options = {**RUN, "epochs": 3, "eval_every": 0}
    report = Model.resume(first.checkpoint, data, tmp_path / "api2", cfg=cfg, **options)
    assert stdout.replace(str(tmp_path / "cli2"), str(tmp_path / "api2")) == f"{report}\n"
    same_files(tmp_path / "cli2", tmp_path / "api2", ["yolo-nano-64.weights", "yolo-nano-64.cfg"])
    assert len(report.step_losses) == 6 and report.step_losses[:4] == first.step_losses
    assert [epoch.epoch for epoch in report.epochs] == [1, 2, 3]


def test_train_from_weights_of_another_class_count_warns(trained_both_ways, nano, tmp_path):
    """A 4-class variant of the cfg started from the 3-class run: the two head convolutions start as from
    scratch, named in one warning that the command prints on stderr as ``warning: ...``."""
    _, _, first = trained_both_ways
    cfg, data = nano
    four = tmp_path / "nano-4.cfg"
    text = cfg.read_text()
    assert text.count("filters=24\n") == text.count("classes=3\n") == 2
    four.write_text(text.replace("filters=24\n", "filters=27\n").replace("classes=3\n", "classes=4\n"))
    options = {**RUN, "epochs": 1, "eval_every": 0}
    report = Model.load(four).train(data, tmp_path / "api4", weights=first.weights, **options)
    assert len(report.warnings) == 1 and "2 layers of" in report.warnings[0]
    heads = [layer.index for layer in load_cfg(four, warn=lambda m: None).layers if layer.kind == "yolo"]
    for index in heads:
        assert f"layer {index - 1} [convolutional]" in report.warnings[0]
    flags = [*STEP_FLAGS, "--epochs", "1"]
    result = CliRunner().invoke(
        main,
        [str(a) for a in ("train", "--cfg", four, "--weights", first.weights, "--data", data)]
        + ["-o", str(tmp_path / "cli4"), *flags],
    )
    assert result.exit_code == 0, result.output
    assert f"warning: {report.warnings[0]}\n" in result.stderr
    same_files(tmp_path / "cli4", tmp_path / "api4", ["nano-4.weights"])


def test_train_leaves_the_model_alone_and_refuses_to_overwrite_an_input(nano, tmp_path, one_thread):
    from cfgsurgeon.errors import UsageError

    cfg, data = nano
    model = Model.load(cfg)
    with pytest.raises(UsageError, match="teacher"):
        model.train(data, tmp_path / "t", teacher=Model.load(cfg), max_steps=1)
    with pytest.raises(UsageError, match="refusing to overwrite the input file"):
        model.train(data, cfg.parent, max_steps=1, batch=4)  # would write yolo-nano-64.cfg over the input
    report = model.train(data, tmp_path / "once", max_steps=1, batch=4, warmup=0)
    assert not model.has_weights and report.model.has_weights


# -- sparsify ------------------------------------------------------------------------------------------------


@SHARED_MARK
def test_sparsify_is_the_command(tmp_path):
    pytest.importorskip("tensorflow_model_optimization")
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.sparsify.selection import prunable
    from cfgsurgeon.weights import write_weights

    text = (CFG_DIR / "yolov4-tiny.cfg").read_text()
    cfg = tmp_path / "yolov4-tiny.cfg"
    cfg.write_text(text.replace("width=416", "width=64").replace("height=416", "height=64"))
    graph = load_cfg(cfg, warn=lambda m: None)
    random_weights(graph, seed=0)
    weights = tmp_path / "dense.weights"
    write_weights(graph, weights)
    args = ["--final-sparsity", "0.5", "--skip-layers", "2", "--no-tflite"]
    stdout = run_cli("sparsify", "--cfg", cfg, "--weights", weights, *args, "-o", tmp_path / "cli")
    model = Model.load(cfg, weights)
    report = model.sparsify(tmp_path / "api", final_sparsity=0.5, skip=[2], tflite=False)
    assert stdout.replace(str(tmp_path / "cli"), str(tmp_path / "api")) == f"{report}\n"
    same_files(tmp_path / "cli", tmp_path / "api", ["sparse.weights", "report.json", "report.md"])
    assert report.json() == json.dumps(json.loads((tmp_path / "cli" / "report.json").read_text()))
    # the sparse model is the file written, and its kernels are half zeros where pruned (numpy's count)
    written = load_cfg(cfg, warn=lambda m: None)
    read_weights(written, tmp_path / "api" / "sparse.weights")
    pruned = [row["layer"] for row in report.data["layers"] if row["target"] is not None]
    assert 2 not in pruned and pruned
    for layer in prunable(written):
        kernel = layer.weights["weights"]
        np.testing.assert_array_equal(report.model.graph.layers[layer.index].weights["weights"], kernel)
        if layer.index in pruned:
            assert abs(float(np.mean(kernel == 0)) - 0.5) <= 0.01
    zeros = sum(int(np.sum(written.layers[i].weights["weights"] == 0)) for i in pruned)
    total = sum(written.layers[i].weights["weights"].size for i in pruned)
    assert report.kernel_sparsity == pytest.approx(zeros / total)
    assert report.model.weights == tmp_path / "api" / "sparse.weights" and model.weights == weights


def test_sparsify_mistakes_name_the_flags(tmp_path):
    from cfgsurgeon.randinit import random_weights
    from cfgsurgeon.weights import write_weights

    cfg = REPO_CFG_DIR / "yolo-nano.cfg"
    graph = load_cfg(cfg, warn=lambda m: None)
    random_weights(graph, seed=0)
    write_weights(graph, tmp_path / "w.weights")
    base = [
        "sparsify",
        "--cfg",
        str(cfg),
        "--weights",
        str(tmp_path / "w.weights"),
        "-o",
        str(tmp_path / "o"),
    ]
    for extra, message in (
        ([], "--fine-tune needs --data"),
        (["--data", "x.data"], "--data is for --fine-tune"),
    ):
        flags = extra if extra else ["--fine-tune"]
        result = CliRunner().invoke(main, base + flags)
        assert result.exit_code != 0 and message in result.output, result.output


# -- demo ----------------------------------------------------------------------------------------------------


def test_demo_command_prints_its_report(tmp_path, monkeypatch, one_thread):
    """The command at toy size (the demo's plan and cfg swapped for the tests' tiny ones): its stdout is the
    progress it logged, then ``str(report)``; the table's figures are the files on disk."""
    pytest.importorskip("matplotlib")
    from test_demo import TINY

    import cfgsurgeon.api.training as api
    import cfgsurgeon.demo as pipeline

    cfg = tmp_path / "yolo-nano-64.cfg"
    text = (REPO_CFG_DIR / "yolo-nano.cfg").read_text()
    cfg.write_text(text.replace("width=128", "width=64").replace("height=128", "height=64"))
    monkeypatch.setattr(pipeline, "FULL", TINY)
    monkeypatch.setattr(pipeline, "DEFAULT_CFG", cfg)
    seen: dict = {}
    real = api.demo

    def recorded(*args, log, **kwargs):
        seen["logged"] = []
        seen["report"] = real(*args, log=lambda line: (seen["logged"].append(line), log(line)), **kwargs)
        return seen["report"]

    monkeypatch.setattr(api, "demo", recorded)
    stdout = run_cli("demo", "-o", tmp_path / "out", "--json", tmp_path / "demo.json")
    report = seen["report"]
    assert stdout == "".join(f"{line}\n" for line in seen["logged"]) + f"{report}\n"
    assert [row.model for row in report.rows] == ["baseline", "sparse", "pruned", "finetuned"]
    assert json.loads((tmp_path / "demo.json").read_text()) == report.data
    assert json.loads(report.results.read_text()) == report.data
    pruned = load_cfg(tmp_path / "out" / "pruned" / "pruned.cfg", warn=lambda m: None)
    assert pruned.bflops == pytest.approx(report.rows[2].bflops) and pruned.params == report.rows[2].params
    size = (tmp_path / "out" / "pruned" / "pruned.weights").stat().st_size
    assert report.rows[2].size_bytes == size
