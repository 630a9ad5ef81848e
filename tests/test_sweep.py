"""Ratio sweeps (`cfgsurgeon.workflow.sweep`): the rows and kept files, resuming without redoing a ratio,
refused ratios, the choice of the largest ratio within the mAP drop, and the `ratios` syntax.

The kept models are read back by OpenCV's darknet importer (an independent reader: its parameter count must
be the row's), and a row's params are also the float count of its .weights file.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.weights import read_weights, write_weights

pytest.importorskip("torch")

from cfgsurgeon.surgery.prune import choose  # noqa: E402
from cfgsurgeon.workflow import sweep as sweep_module  # noqa: E402
from cfgsurgeon.workflow.sweep import (  # noqa: E402
    SweepSettings,
    largest_within,
    parse_ratios,
    sweep,
)

HEADER_BYTES = 20  # our writer's header: major, minor, revision (int32) and seen (uint64)


@pytest.fixture(scope="module")
def model(nano, tmp_path_factory) -> tuple[Path, Path, Path]:
    """The nano cfg with seeded random weights, and its synthetic data: (cfg, weights, .data)."""
    cfg, data = nano
    graph = load_cfg(cfg, warn=lambda m: None)
    random_weights(graph, seed=3)
    weights = tmp_path_factory.mktemp("sweep-model") / "nano.weights"
    write_weights(graph, weights)
    return cfg, weights, data


def quick(**overrides) -> SweepSettings:
    settings = {"ratios": (0.2, 0.4), "latency_runs": 0}
    settings.update(overrides)
    return SweepSettings(**settings)


# -- ratios and the choice -----------------------------------------------------------------------------------


def test_ratio_ranges_include_their_stop():
    assert parse_ratios("0.1:0.5:0.1") == (0.1, 0.2, 0.3, 0.4, 0.5)
    assert parse_ratios("0.1:0.9:0.1")[-1] == 0.9 and len(parse_ratios("0.1:0.9:0.1")) == 9
    assert parse_ratios("0.25:0.6:0.25") == (0.25, 0.5)
    assert parse_ratios("0.4,0.2") == (0.2, 0.4)


@pytest.mark.parametrize("text", ["0.1:0.9", "a:b:c", "0.1:0.9:0", "0.5:0.1:0.1", "0.1::0.1", "0.3,x", ""])
def test_bad_ratio_syntax_is_one_line(text):
    with pytest.raises(UsageError) as caught:
        parse_ratios(text)
    message = str(caught.value)
    assert "\n" not in message and "`ratios`" in message


@pytest.mark.parametrize("text", ["1.2", "0", "0.2,0.2", "0.5:1.0:0.25"])
def test_ratios_must_be_distinct_shares(text):
    with pytest.raises(UsageError, match="`ratios`"):
        parse_ratios(text)


def test_the_choice_is_the_largest_ratio_within_the_relative_drop():
    # baseline 0.60, max drop 5 %: a ratio is within when its mAP@0.5 >= 0.57
    rows = [
        {"ratio": 0.1, "map50": 0.600},
        {"ratio": 0.2, "map50": 0.580},
        {"ratio": 0.3, "map50": 0.560},  # outside
        {"ratio": 0.4, "map50": 0.575},  # within again: the largest within
        {"ratio": 0.5, "map50": 0.400},
        {"ratio": 0.6, "refused": "above the safe bound 0.55", "bound": 0.55},
    ]
    assert largest_within(0.60, rows, 0.05) == 0.4
    assert largest_within(0.60, rows, 0.0) == 0.1
    assert largest_within(0.60, rows[2:3], 0.05) is None
    # relative: 0.56 is within an absolute drop of 0.05 from 0.60, not within 5 % of it
    assert largest_within(0.60, [{"ratio": 0.1, "map50": 0.6}, {"ratio": 0.5, "map50": 0.56}], 0.05) == 0.1
    assert largest_within(None, rows, 0.05) is None


def test_settings_refuse_what_cannot_be_swept():
    with pytest.raises(UsageError, match="`method`"):
        SweepSettings(method="layer")
    with pytest.raises(UsageError, match="`max_drop`"):
        SweepSettings(max_drop=1.5)
    with pytest.raises(UsageError, match="`finetune_epochs`"):
        SweepSettings(finetune_epochs=-1)
    with pytest.raises(UsageError, match="`backend` tf1 measures no latency"):
        SweepSettings(backend="tf1")


# -- a sweep -------------------------------------------------------------------------------------------------


def _params_in_opencv(cfg: Path, weights: Path) -> int:
    """What OpenCV's darknet importer loads into its convolution and batch-norm layers (its [yolo] layers
    also hold their anchors as a blob: not parameters)."""
    cv2 = pytest.importorskip("cv2")
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    layers = [net.getLayer(name) for name in net.getLayerNames() if name.startswith(("conv_", "bn_"))]
    return sum(int(np.prod(blob.shape)) for layer in layers for blob in layer.blobs)


def test_rows_and_kept_files(model, tmp_path):
    cfg, weights, data = model
    out = tmp_path / "sweep"
    result = sweep(cfg, weights, data, out, quick(backend="torch", latency_runs=2))
    assert [row["ratio"] for row in result.rows] == [0.2, 0.4]
    assert result.files == [out / "sweep.json", out / "sweep.md", out / "sweep.png"]
    saved = json.loads((out / "sweep.json").read_text())
    assert saved["rows"] == result.rows and saved["baseline"] == result.baseline
    original_floats = (weights.stat().st_size - HEADER_BYTES) // 4
    assert result.baseline["params"] == original_floats
    previous = original_floats
    for row in result.rows:
        folder = out / f"ratio-{row['ratio']:.2f}"
        kept_cfg, kept_weights = folder / cfg.name, folder / f"{cfg.stem}.weights"
        assert row["cfg"] == str(kept_cfg) and row["weights"] == str(kept_weights)
        floats = (kept_weights.stat().st_size - HEADER_BYTES) // 4
        assert row["params"] == floats < previous  # a larger ratio keeps fewer parameters
        previous = floats
        assert _params_in_opencv(kept_cfg, kept_weights) == floats
        assert abs(row["achieved"] - row["ratio"]) < 0.05
        assert row["latency_ms"] > 0
        seen = np.frombuffer(kept_weights.read_bytes()[12:20], "<u8")[0]
        assert seen == 0  # a changed model: darknet fine-tunes it with its burn-in
    table = (out / "sweep.md").read_text()
    lines = [line for line in table.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| ratio | removed | P | R | mAP@0.5 | mAP@0.5:0.95 | params | BFLOPs |")
    labels = [line.split(" | ")[0].removesuffix(" (chosen)") for line in lines[1:]]
    assert labels == ["| baseline", "| 0.2", "| 0.4"]
    assert f"{result.rows[1]['params']:,}" in lines[-1]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refused_ratios_record_the_bound(model, tmp_path):
    cfg, weights, data = model
    graph = load_cfg(cfg, warn=lambda m: None)
    read_weights(graph, weights)
    bound = choose(graph, "slim", percent=0.0).selection.ratio_bound
    above = round(min(0.99, bound + 0.05), 2)
    result = sweep(cfg, weights, data, tmp_path / "sweep", quick(ratios=(0.2, above)))
    refused = result.rows[1]
    assert refused["ratio"] == above and "refused" in refused and refused["bound"] == pytest.approx(bound)
    assert f"{bound:.4g}" in refused["refused"]
    assert not (tmp_path / "sweep" / f"ratio-{above:.2f}").exists()
    assert "refused" in (tmp_path / "sweep" / "sweep.md").read_text()
    forced = sweep(cfg, weights, data, tmp_path / "forced", quick(ratios=(above,), force=True))
    assert "refused" not in forced.rows[0] and forced.rows[0]["params"] < result.rows[0]["params"]


def _normalised(path: Path, out: Path) -> str:
    return path.read_text().replace(str(out), "OUT")


def test_a_killed_sweep_continues_without_redoing_a_ratio(model, tmp_path, monkeypatch):
    cfg, weights, data = model
    whole = tmp_path / "whole"
    sweep(cfg, weights, data, whole, quick())
    out = tmp_path / "killed"
    real_prune = sweep_module.prune
    pruned: list[float] = []

    def prune_until_killed(graph, method, percent, **kwargs):
        if percent == 0.4:
            raise KeyboardInterrupt  # killed while measuring the second ratio
        pruned.append(percent)
        return real_prune(graph, method, percent=percent, **kwargs)

    monkeypatch.setattr(sweep_module, "prune", prune_until_killed)
    with pytest.raises(KeyboardInterrupt):
        sweep(cfg, weights, data, out, quick())
    assert pruned == [0.2]
    assert [row["ratio"] for row in json.loads((out / "sweep.json").read_text())["rows"]] == [0.2]

    scored: list[float] = []
    real_score = sweep_module._Context.score

    def counting_score(self, graph, ratio):
        scored.append(ratio)
        return real_score(self, graph, ratio)

    def counting_prune(graph, method, percent, **kwargs):
        pruned.append(percent)
        return real_prune(graph, method, percent=percent, **kwargs)

    monkeypatch.setattr(sweep_module, "prune", counting_prune)
    monkeypatch.setattr(sweep_module._Context, "score", counting_score)
    sweep(cfg, weights, data, out, quick())
    assert scored == [0.4] and pruned == [0.2, 0.4]  # neither the baseline nor 0.2 again
    for name in ("sweep.json", "sweep.md"):
        assert _normalised(out / name, out) == _normalised(whole / name, whole)
    sweep(cfg, weights, data, out, quick(ratios=(0.2, 0.4, 0.6)))  # a point added to a finished sweep
    assert scored == [0.4, 0.6]


def test_a_sweep_of_other_settings_is_refused_in_one_line(model, tmp_path):
    cfg, weights, data = model
    out = tmp_path / "sweep"
    sweep(cfg, weights, data, out, quick(ratios=(0.2,)))
    with pytest.raises(UsageError) as caught:
        sweep(cfg, weights, data, out, quick(ratios=(0.2,), criterion="l1"))
    message = str(caught.value)
    assert "\n" not in message and "criterion" in message and str(out / "sweep.json") in message


def test_a_missing_latency_backend_leaves_the_column_empty_with_a_note(model, tmp_path, monkeypatch):
    from cfgsurgeon import runtimes

    def not_installed(graph, model, threads):
        raise ImportError("No module named 'openvino'", name="openvino")

    monkeypatch.setitem(runtimes.BACKENDS, "openvino", not_installed)
    cfg, weights, data = model
    lines: list[str] = []
    result = sweep(
        cfg, weights, data, tmp_path / "sweep", quick(backend="openvino", latency_runs=2), log=lines.append
    )
    assert result.baseline["latency_ms"] is None and all(row["latency_ms"] is None for row in result.rows)
    notes = [line for line in lines if line.startswith("latency not measured")]
    assert len(notes) == 1 and "openvino" in notes[0]


def test_fine_tuning_keeps_its_run_beside_the_pruned_model(model, tmp_path):
    cfg, weights, data = model
    out = tmp_path / "sweep"
    train = {"batch": 4, "warmup": 0, "lr": 0.005}
    result = sweep(cfg, weights, data, out, quick(ratios=(0.3,), finetune_epochs=1, train=train))
    row = result.rows[0]
    folder = out / "ratio-0.30"
    assert row["weights"] == str(folder / "finetune" / f"{cfg.stem}.weights")
    assert (folder / "finetune" / "history.json").exists()
    pruned, tuned = (folder / f"{cfg.stem}.weights").read_bytes(), Path(row["weights"]).read_bytes()
    assert len(pruned) == len(tuned) and pruned[HEADER_BYTES:] != tuned[HEADER_BYTES:]
    assert "1 epochs per ratio" in (out / "sweep.md").read_text()


def test_a_kept_file_never_replaces_an_input(model, tmp_path):
    cfg, weights, data = model
    out = tmp_path / "sweep"
    inside = out / "ratio-0.20"
    inside.mkdir(parents=True)
    (inside / cfg.name).write_text(cfg.read_text())
    (inside / weights.name).write_bytes(weights.read_bytes())
    before = (inside / weights.name).read_bytes()
    with pytest.raises(UsageError, match="refusing to overwrite"):
        sweep(inside / cfg.name, inside / weights.name, data, out, quick())
    assert (inside / weights.name).read_bytes() == before
