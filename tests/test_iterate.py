"""The iterative loop (`cfgsurgeon.workflow.iterate`): steps down to the BFLOPs target, kept files, resuming
without redoing a step, the stop rule, refused settings.

A step's BFLOPs are checked against OpenCV's darknet importer reading the kept cfg/weights (its parameter
count) and against the requested shares, which are plain arithmetic on the settings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.weights import write_weights

pytest.importorskip("torch")

from cfgsurgeon.workflow import iterate as iterate_module  # noqa: E402
from cfgsurgeon.workflow.iterate import IterateSettings, iterate  # noqa: E402


@pytest.fixture(scope="module")
def model(nano, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The nano cfg with seeded random weights, and its synthetic data: (cfg, weights, .data)."""
    cfg, data = nano
    graph = load_cfg(cfg, warn=lambda m: None)
    random_weights(graph, seed=3)
    weights = tmp_path_factory.mktemp("iterate-model") / "nano.weights"
    write_weights(graph, weights)
    return cfg, weights, data


def opencv_params(cv2, cfg: str, weights: str) -> int:
    """What OpenCV's darknet importer reads: the conv and batch-norm tensors of the kept model."""
    net = cv2.dnn.readNetFromDarknet(cfg, weights)
    layers = [net.getLayer(name) for name in net.getLayerNames() if name.startswith(("conv_", "bn_"))]
    return sum(int(np.prod(blob.shape)) for layer in layers for blob in layer.blobs)


def quick(**overrides) -> IterateSettings:
    settings = dict(
        target_bflops=0.6,
        step=0.2,
        epochs_per_step=1,
        max_drop=1.0,
        images=4,
        train={"batch": 4, "lr": 0.001, "warmup": 0, "lr_policy": "constant", "gamma_plots": False},
    )
    settings.update(overrides)
    return IterateSettings(**settings)


@pytest.fixture(scope="module")
def finished(model, tmp_path_factory):
    cfg, weights, data = model
    out = tmp_path_factory.mktemp("iterate")
    lines: list[str] = []
    return iterate(cfg, weights, data, out, quick(), log=lines.append), lines


def test_shares_step_down_to_the_target_exactly():
    assert IterateSettings(target_bflops=0.5, step=0.1).shares() == [0.9, 0.8, 0.7, 0.6, 0.5]
    assert IterateSettings(target_bflops=0.6, step=0.3).shares() == [0.7, 0.6]
    assert IterateSettings(target_bflops=0.3, step=0.5).shares() == [0.5, 0.3]


def test_each_step_reaches_its_share_and_keeps_its_files(finished, model):
    cv2 = pytest.importorskip("cv2")
    result, lines = finished
    base = result.steps[0]
    assert [step["target_share"] for step in result.steps] == [1.0, 0.8, 0.6]
    for step in result.steps[1:]:
        share = step["bflops"] / base["bflops"]
        assert step["target_share"] - 0.01 <= share <= step["target_share"] + 1e-9
        folder = result.output / f"step-{step['step']}"
        for name in (
            "sensitivity.json",
            "plan.json",
            "step.json",
            "yolo-nano-64.cfg",
            "yolo-nano-64.weights",
        ):
            assert (folder / name).is_file(), name
        assert opencv_params(cv2, step["cfg"], step["weights"]) == step["params"]
    assert result.stopped is None
    state = json.loads((result.output / "iterate.json").read_text())
    assert [s["step"] for s in state["steps"]] == [0, 1, 2]
    table = (result.output / "iterate.md").read_text()
    assert table.count("\n| ") == 3  # start + two steps
    assert (result.output / "iterate.png").read_bytes()[:4] == b"\x89PNG"
    assert any(line.startswith("step 2/2") for line in lines)


def test_a_second_call_redoes_nothing(finished, model, monkeypatch):
    cfg, weights, data = model
    result, _ = finished

    def refuse(*args, **kwargs):
        raise AssertionError("a finished step ran again")

    monkeypatch.setattr(iterate_module, "_run_step", refuse)
    again = iterate(cfg, weights, data, result.output, quick())
    assert again.steps == result.steps


def test_other_settings_in_the_same_folder_are_refused(finished, model):
    cfg, weights, data = model
    result, _ = finished
    with pytest.raises(UsageError, match="other settings.*target_bflops"):
        iterate(cfg, weights, data, result.output, quick(target_bflops=0.5))


def test_a_step_losing_more_than_max_drop_stops_the_loop(model, tmp_path, monkeypatch):
    cfg, weights, data = model
    scores = iter([0.8, 0.7, 0.7, 0.2, 0.2])  # start; step 1 pruned, tuned; step 2 pruned, tuned

    def fake_metrics(graph, data):
        value = next(scores)
        return {"P": value, "R": value, "mAP50": value, "mAP50_95": value / 2}

    monkeypatch.setattr(iterate_module, "_valid_metrics", fake_metrics)
    result = iterate(cfg, weights, data, tmp_path, quick(max_drop=0.2, epochs_per_step=1))
    assert [s["within_drop"] for s in result.steps] == [True, True, False]
    assert "stopped at step 2" in result.stopped and "step 1" in result.stopped
    assert result.final["step"] == 1


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("target_bflops", 1.2, "target_bflops"),
        ("step", 0.0, "step"),
        ("epochs_per_step", -1, "epochs_per_step"),
    ],
)
def test_bad_settings_name_the_parameter(field, value, words):
    with pytest.raises(UsageError, match=words):
        IterateSettings(**{field: value})
