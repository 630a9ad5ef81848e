"""Training that fits the run and guards against silent ruin: the cfg's burn-in rescaled, a test cfg's batch
replaced, divergence and early stopping, progress lines without a terminal, evaluation while training, the
history files. Expected values are worked by hand from the rules the trainer documents."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import nano_config  # noqa: E402

from cfgsurgeon.ir import loads_cfg  # noqa: E402
from cfgsurgeon.train.monitor import (  # noqa: E402
    DivergenceGuard,
    EarlyStop,
    ProgressLines,
    TrainingStopped,
    format_duration,
)
from cfgsurgeon.train.trainer import TrainConfig, TrainingDiverged, learning_rate, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _net(options: str):
    """yolo-nano with these [net] schedule options instead of its own."""
    keys = ("burn_in", "max_batches", "steps", "scales", "policy")
    text = (REPO / "cfg" / "yolo-nano.cfg").read_text()
    kept = "\n".join(line for line in text.split("\n") if not line.startswith(keys))
    return loads_cfg(kept.replace("\n[net]\n", "\n[net]\n" + options + "\n", 1), warn=lambda m: None)


def test_burn_in_is_rescaled_like_steps():
    """darknet's yolov3-tiny [net]: burn_in=1000 of max_batches=500200; a 1,280-step run warms up for
    round(1000 · 1280 / 500200) = round(2.559) = 3 steps, and steps=400000,450000 land at 1024 and 1152."""
    graph = _net("burn_in=1000\nmax_batches=500200\npolicy=steps\nsteps=400000,450000\nscales=.1,.1")
    schedule = learning_rate(graph, TrainConfig(lr=0.001), 1280)
    assert schedule.warmup == 3
    assert schedule.steps == (1024, 1152)
    assert schedule(0) == pytest.approx(0.001 * (1 / 3) ** 4)
    assert schedule(3) == pytest.approx(0.001)
    assert schedule(1100) == pytest.approx(0.0001)
    assert "warm-up 3 steps" in schedule.describe() and "rescaled from max_batches" in schedule.describe()


def test_burn_in_without_max_batches_is_capped_at_a_tenth_of_the_run():
    graph = _net("burn_in=1000")
    schedule = learning_rate(graph, TrainConfig(), 250)
    assert schedule.warmup == 25
    assert "capped at 10% of the run" in schedule.describe()
    assert learning_rate(graph, TrainConfig(warmup=400), 250).warmup == 400  # --warmup is taken as given


def test_divergence_guard_trips_on_a_sustained_rise_not_on_one_spike():
    guard = DivergenceGuard(factor=3.0, patience=3, smoothing=1.0)  # smoothing 1: the level is the loss
    for step, loss in enumerate([10, 8, 30, 7, 20, 20], 1):  # 30 > 3·8 once: one step above, then reset
        guard.update(step, loss)
    with pytest.raises(TrainingStopped) as stop:
        for step, loss in enumerate([25, 26, 27], 7):  # three steps above 3·7 = 21
            guard.update(step, loss)
    assert stop.value.diverged and "step 9" in stop.value.reason and "3.9×" in stop.value.reason


def test_divergence_guard_trips_at_once_on_a_non_finite_loss():
    with pytest.raises(TrainingStopped, match="nan at step 4"):
        guard = DivergenceGuard()
        for step, loss in enumerate([5.0, 4.0, 3.0, math.nan], 1):
            guard.update(step, loss)


def test_early_stop_keeps_the_best_and_stops_after_patience():
    early = EarlyStop(patience=2, max_drop=0.5)
    assert early.update(1, 0.30) and early.update(2, 0.40)
    assert not early.update(3, 0.35)
    with pytest.raises(TrainingStopped) as stop:
        early.update(4, 0.39)
    assert not stop.value.diverged and "best 0.4000 at epoch 2" in stop.value.reason


def test_early_stop_calls_a_collapse_divergence():
    early = EarlyStop(patience=None, max_drop=0.5)
    early.update(1, 0.27)
    with pytest.raises(TrainingStopped) as stop:
        early.update(2, 0.13)  # below 0.5 · 0.27 = 0.135
    assert stop.value.diverged and "fell to 0.1300" in stop.value.reason


def test_progress_lines_once_per_interval():
    now = [0.0]
    lines: list[str] = []
    progress = ProgressLines(lines.append, total=100, every=30.0, clock=lambda: now[0])
    progress.start(0)
    for step in range(1, 101):
        now[0] = 2.0 * step  # 2 s a step: lines at steps 1, 16, 31, … (t = 2, 32, 62, …)
        progress.step("epoch 1/1", step, 1.0, 0.001)
    assert len(lines) == 7
    assert lines[0].startswith("epoch 1/1 step 1/100 (1%)") and "ETA 3:18" in lines[0]
    assert "step 16/100" in lines[1] and "2.00 s/step" in lines[1] and "ETA 2:48" in lines[1]
    assert format_duration(3725) == "1:02:05"


_config = nano_config


class _PoisonedAfterFirstEpoch(torch.utils.data.Dataset):
    """The training images, turned to NaN from the second epoch on: a run that goes bad mid-way."""

    def __init__(self, base):
        self.base, self.epoch = base, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.base.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, targets, path = self.base[index]
        return (image * math.nan if self.epoch >= 1 else image), targets, path


def test_divergence_stops_and_keeps_the_last_healthy_checkpoint(nano, tmp_path):
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.train.dataset import DetectionDataset

    cfg, data = nano
    base = DetectionDataset.from_data(data, "train", load_cfg(cfg, warn=lambda m: None), seed=0)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged) as error:
        train(_config(nano, out, epochs=3), dataset=_PoisonedAfterFirstEpoch(base), log=lambda m: None)
    message = str(error.value)
    assert "training diverged: the loss became nan at step 3" in message
    assert f"kept {out / 'last.pt'}" in message and "lower --lr (this run: 0.005)" in message
    from cfgsurgeon.convert import checkpoint_entry

    saved = checkpoint_entry(out / "last.pt", "train")
    assert saved["step"] == 2 and saved["epoch"] == 1  # the end of the healthy epoch
    history = json.loads((out / "history.json").read_text())
    assert history["stopped"].startswith("the loss became nan") and len(history["epochs"]) == 1


def test_cli_divergence_is_one_line_and_a_non_zero_exit(nano, tmp_path):
    cfg, data = nano
    command = [
        sys.executable,
        "-m",
        "cfgsurgeon.cli",
        "train",
        "--cfg",
        str(cfg),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "run"),
        "--epochs",
        "20",
        "--batch",
        "4",
        "--lr",
        "1e6",
        "--warmup",
        "0",
        "--optimizer",
        "sgd",
        "--lr-policy",
        "constant",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "Error: training diverged:" in done.stderr and "lower --lr (this run: 1e+06)" in done.stderr


def test_test_cfg_batch_is_replaced_and_progress_lines_without_a_terminal(nano, tmp_path):
    """A cfg with [net] batch=1 (darknet's test setting) trains with batch 16 and says so; run without a
    terminal (output to a file, as under nohup), it logs start-up lines and timed progress lines."""
    from cfgsurgeon.train.synthetic import make_synthetic_dataset

    cfg, _ = nano
    data = make_synthetic_dataset(tmp_path / "data", train=32, valid=4, size=64, seed=1)
    test_cfg = tmp_path / "test.cfg"
    test_cfg.write_text(cfg.read_text().replace("\nbatch=16\n", "\nbatch=1\n", 1))
    log = tmp_path / "train.log"
    command = [
        sys.executable,
        "-m",
        "cfgsurgeon.cli",
        "train",
        "--cfg",
        str(test_cfg),
        "--data",
        str(data),
        "-o",
        str(tmp_path / "run"),
        "--epochs",
        "2",
        "--log-every",
        "1",
    ]
    with log.open("w") as out:
        done = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=300
        )
    text = log.read_text()
    assert done.returncode == 0, text
    assert "batch=1 is a test setting; training with batch 16" in text
    assert "data: 32 training images; batch 16 in 1 subdivisions, 2 steps per epoch, 2 epochs" in text
    assert "epoch 1/2 step 1/4 (25%)" in text and "ETA" in text
    assert text.count("wrote ") == 1


def test_eval_every_keeps_the_best_epoch_and_writes_the_history(nano, tmp_path):
    snapshots = {}

    def keep(record, graph):
        snapshots[record.epoch] = {
            layer.index: {k: v.copy() for k, v in (layer.weights or {}).items()} for layer in graph.layers
        }

    out = tmp_path / "run"
    result = train(
        _config(nano, out, epochs=3, eval_every=1, sparsity=0.01), log=lambda m: None, on_epoch=keep
    )
    epochs = json.loads((out / "history.json").read_text())["epochs"]
    scores = [e["map50"] for e in epochs]
    assert all(s is not None for s in scores) and all(e["safe_ratio"] is not None for e in epochs)
    best_epoch = 1 + int(np.argmax(scores))  # the first of equal scores stays the best
    assert result.best == out / "best.pt"
    from cfgsurgeon.ir import load_cfg
    from cfgsurgeon.weights import read_weights

    graph = load_cfg(out / "yolo-nano-64.cfg", warn=lambda m: None)
    read_weights(graph, out / "yolo-nano-64_best.weights")
    for layer in graph.layers:
        for name, value in (layer.weights or {}).items():
            np.testing.assert_array_equal(value, snapshots[best_epoch][layer.index][name])
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"


def test_multiscale_feeds_each_step_its_size(nano, tmp_path, monkeypatch):
    """--multiscale: every optimizer step's batch is resized to multiscale_size(step) (that function is
    checked against darknet's formula in test_mosaic.py); the start-up lines say so."""
    from cfgsurgeon.train import dataset
    from cfgsurgeon.train.dataset import multiscale_size

    seen: list[tuple[int, int]] = []
    resize = dataset.resize_batch

    def recording(images, wh):
        seen.append(wh)
        return resize(images, wh)

    monkeypatch.setattr(dataset, "resize_batch", recording)
    lines: list[str] = []
    train(_config(nano, tmp_path / "run", epochs=6, multiscale=True), log=lines.append)
    assert seen == [multiscale_size((64, 64), step, 0) for step in range(12)]
    assert len(set(seen)) > 1
    assert any(line.startswith("multi-scale: input sizes from ×1/1.4 to ×1.4") for line in lines)


@pytest.mark.parametrize("kind", ["local-decay", "layer-decay"])
def test_decay_schedules_choose_the_protected_channels_overall_or_per_layer(kind):
    """Two penalised layers, one with |γ| 1…n and one with |γ| a hundred times smaller: local decay protects
    the largest half of all channels (all of the first layer, the largest of the second), layer decay the
    largest half of each."""
    from cfgsurgeon.emit.torch import DarknetModel
    from cfgsurgeon.train.sparsity import Schedule, SparsityPenalty

    graph = loads_cfg((REPO / "cfg" / "yolo-nano.cfg").read_text(), warn=lambda m: None)
    penalty = SparsityPenalty(
        DarknetModel(graph), graph, "all", Schedule(1.0, kind, decay_start=0.0, protect=0.5)
    )
    (first, first_mask), (second, second_mask) = penalty.targets[:2]
    penalty.targets = penalty.targets[:2]
    with torch.no_grad():
        first.weight.copy_(torch.arange(1, len(first.weight) + 1, dtype=torch.float32))
        second.weight.copy_(torch.arange(1, len(second.weight) + 1, dtype=torch.float32) / 100)
    penalty.start_epoch(0.0)
    protected = [p.numpy() for p in penalty.protected]
    if kind == "local-decay":  # the largest half of all channels: every one of layer 0, the rest from layer 1
        n0, n1 = len(protected[0]), len(protected[1])
        assert protected[0].all() and protected[1].sum() == (n0 + n1) // 2 - n0
        assert protected[1][n1 - protected[1].sum() :].all()
    else:
        for flags in protected:
            assert flags.sum() == len(flags) // 2 and flags[len(flags) // 2 :].all()


def test_a_collapsing_validation_map_stops_the_run_and_stays_in_the_history(nano, tmp_path, monkeypatch):
    """Validation mAP 0.4, then 0.1 (below half of the best): the run stops as diverged after epoch 2; the
    history holds both epochs, best.pt the first, last.pt still epoch 1."""
    from cfgsurgeon.convert import checkpoint_entry
    from cfgsurgeon.train import evaluate as evaluation

    scores = iter([0.4, 0.1, 0.9])
    real = evaluation.evaluate

    def scripted(*args, **kwargs):
        metrics = real(*args, **kwargs)
        return dataclasses.replace(metrics, mAP50=next(scores))

    monkeypatch.setattr(evaluation, "evaluate", scripted)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="validation mAP@0.5 fell to 0.1000 at epoch 2"):
        train(_config(nano, out, epochs=3, eval_every=1), log=lambda m: None)
    epochs = json.loads((out / "history.json").read_text())["epochs"]
    assert [e["map50"] for e in epochs] == [0.4, 0.1]
    assert checkpoint_entry(out / "last.pt", "train")["epoch"] == 1
    assert checkpoint_entry(out / "best.pt", "train")["epoch"] == 1
