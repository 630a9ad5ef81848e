"""Sensitivity analysis (cfgsurgeon.workflow.sensitivity): the JSON a planner reads, the widths it reports
against cfgs edited by hand, resuming after a kill, the proxy against a numpy transcription on a model whose
outputs are known, Spearman's ρ against values worked out by hand, and the one-line refusals."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import quiet

from cfgsurgeon import loads_cfg
from cfgsurgeon.errors import UsageError
from cfgsurgeon.ir import Graph
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.train.synthetic import make_synthetic_dataset
from cfgsurgeon.workflow import sensitivity as sens

# Two prunable convs (8 and 16 channels) and a [yolo] head: six unit × rate evaluations take seconds.
SMALL_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=8
size=3
stride=2
pad=1
activation=leaky

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[convolutional]
filters=18
size=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes=1
num=3
"""


def random_model(text: str, seed: int = 0) -> Graph:
    graph = loads_cfg(text, "model.cfg", warn=quiet)
    random_weights(graph, seed)
    return graph


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Graph, Path]:
    """``(graph, data)``: SMALL_CFG with random weights, 4 synthetic valid images of one class."""
    root = tmp_path_factory.mktemp("sensitivity")
    data = make_synthetic_dataset(root / "data", classes=1, train=1, valid=4, size=32, seed=0)
    return random_model(SMALL_CFG), data


def with_filters(text: str, line: int, filters: int) -> str:
    """``text`` with ``filters=`` of the section whose header is on ``line`` (1-based) set to ``filters``."""
    lines = text.split("\n")
    for number in range(line, len(lines)):
        if lines[number].startswith("["):
            break
        if lines[number].startswith("filters="):
            lines[number] = f"filters={filters}"
            return "\n".join(lines)
    raise AssertionError(f"no filters= in the section at line {line}")


def test_json_format_and_the_widths_pruned(small):
    graph, data = small
    result = sens.sensitivity(graph, data, rates=(0.25, 0.5, 0.75), warn=quiet, weights="model.weights")
    assert list(result) == ["version", "cfg", "weights", "data", "criterion", "rates", "images", "inputs"] + [
        "baseline",
        "units",
    ]
    assert (result["version"], result["cfg"], result["weights"], result["data"]) == (
        1,
        "model.cfg",
        "model.weights",
        str(data),
    )
    assert (result["criterion"], result["rates"], result["images"]) == ("bn-gamma", [0.25, 0.5, 0.75], 4)
    assert set(result["baseline"]) == {
        "map50",
        "map50_95",
        "precision",
        "recall",
        "params",
        "bflops",
        "proxy",
    }
    assert result["baseline"]["proxy"] == 0.0
    text = SMALL_CFG
    original = loads_cfg(text, warn=quiet)
    assert (result["baseline"]["params"], result["baseline"]["bflops"]) == (
        original.params,
        pytest.approx(original.bflops, rel=1e-6),
    )
    assert [(u["producers"], u["channels"]) for u in result["units"]] == [([0], 8), ([1], 16)]
    for unit in result["units"]:
        (producer,) = unit["producers"]
        assert [r["rate"] for r in unit["results"]] == [0.25, 0.5, 0.75]
        for entry in unit["results"]:
            assert list(entry) == ["rate", *sens.METRICS, "params", "bflops", "proxy"]
            assert isinstance(entry["map50"], float) and isinstance(entry["proxy"], float)
            width = unit["channels"] - round(entry["rate"] * unit["channels"])
            edited = loads_cfg(with_filters(text, original.layers[producer].line, width), warn=quiet)
            assert (entry["params"], entry["bflops"]) == (
                edited.params,
                pytest.approx(edited.bflops, rel=1e-6),
            )
    assert json.loads(sens.to_json(result)) == result


def test_proxy_only_has_no_map_and_needs_no_labels(small, tmp_path):
    graph, data = small
    unlabelled = tmp_path / "unlabelled"
    images = sorted((Path(data).parent / "valid").glob("*.png"))
    unlabelled.mkdir()
    for image in images:
        (unlabelled / image.name).write_bytes(image.read_bytes())
    listing = tmp_path / "valid.txt"
    listing.write_text("".join(f"{unlabelled / image.name}\n" for image in images))
    spec = tmp_path / "unlabelled.data"
    spec.write_text(f"classes=1\ntrain={listing}\nvalid={listing}\n")
    result = sens.sensitivity(graph, spec, rates=(0.5,), images=2, proxy=True, warn=quiet)
    assert result["images"] == 2 and result["inputs"]["proxy_only"] is True
    assert all(result["baseline"][key] is None for key in sens.METRICS)
    for unit in result["units"]:
        (entry,) = unit["results"]
        assert all(entry[key] is None for key in sens.METRICS) and entry["proxy"] > 0
    with pytest.raises(UsageError, match="none of its 2 images has a label file"):
        sens.sensitivity(graph, spec, rates=(0.5,), images=2, warn=quiet)


# -- resuming ------------------------------------------------------------------------------------------------


class Stop(Exception):
    pass


def test_a_killed_run_continues_without_redoing_finished_entries(small, tmp_path, monkeypatch):
    graph, data = small
    whole = tmp_path / "whole.json"
    sens.sensitivity(graph, data, state=whole, warn=quiet)

    def kill_after_three(done: int, total: int, what: str) -> None:
        if done == 3:
            raise Stop

    state = tmp_path / "state.json"
    with pytest.raises(Stop):
        sens.sensitivity(graph, data, state=state, progress=kill_after_three, warn=quiet)
    saved = json.loads(state.read_text())
    assert [len(u["results"]) for u in saved["units"]] == [3, 0]

    pruned = []
    original_prune = sens.prune_units
    monkeypatch.setattr(
        sens,
        "prune_units",
        lambda graph, rates, **kw: pruned.append(rates) or original_prune(graph, rates, **kw),
    )
    reports = []
    result = sens.sensitivity(graph, data, state=state, progress=lambda *a: reports.append(a), warn=quiet)
    second = saved["units"][1]["key"]
    assert pruned == [{second: 0.25}, {second: 0.5}, {second: 0.75}]
    assert [done for done, _, _ in reports] == [3, 4, 5, 6] and reports[0][1] == 6
    assert state.read_bytes() == whole.read_bytes()
    assert sens.to_json(result).encode() == whole.read_bytes()

    pruned.clear()  # a finished analysis is only read back: no model is even run
    monkeypatch.setattr(sens, "to_torch", lambda graph: pytest.fail("a model was run"))
    assert sens.sensitivity(graph, data, state=state, warn=quiet) == result
    assert pruned == []


@pytest.fixture(scope="module")
def finished(small, tmp_path_factory) -> Path:
    """The state file of a finished analysis of ``small`` (default rates, all images, with mAP)."""
    state = tmp_path_factory.mktemp("finished") / "state.json"
    sens.sensitivity(*small, state=state, warn=quiet)
    return state


@pytest.mark.parametrize(
    "change, named",
    [
        ({"rates": (0.25, 0.5)}, r"`rates` \[0.25, 0.5, 0.75\], this run has \[0.25, 0.5\]"),
        ({"criterion": "l1"}, "`criterion` bn-gamma, this run has l1"),
        ({"images": 3}, "`images` 4, this run has 3"),
        ({"proxy": True}, "`proxy` False, this run has True"),
        ({"weights": "other"}, r"`weights` content sha256 [0-9a-f]{12}…, this run has sha256 [0-9a-f]{12}…"),
    ],
)
def test_continuing_with_other_inputs_is_refused(small, finished, tmp_path, change, named):
    graph, data = small
    state = tmp_path / "state.json"
    state.write_bytes(finished.read_bytes())
    settings = {"rates": (0.25, 0.5, 0.75), "criterion": "bn-gamma", "images": None, "proxy": False}
    if change.pop("weights", None):
        graph = random_model(SMALL_CFG, seed=1)
    settings.update(change)
    with pytest.raises(UsageError, match=named) as refused:
        sens.sensitivity(graph, data, state=state, warn=quiet, **settings)
    assert "delete it" in str(refused.value) and "\n" not in str(refused.value)


# -- the proxy -----------------------------------------------------------------------------------------------

# conv 0: four copies of the input's first channel, scaled by γ = 1, 2, 3, 4 (BN mean 0, variance 1, β 0,
# linear); conv 1 sums them (weights 1/4): every head entry is s = (γ kept)/4 · x₀/√(1 + 1e-5), so the
# detection score of each cell is logistic(s)² and pruning the smallest γ first shrinks every s > 0.
ADDING_CFG = """[net]
width=32
height=32
channels=3

[convolutional]
batch_normalize=1
filters=4
size=1
activation=linear

[convolutional]
filters=6
size=1
activation=linear

[yolo]
mask=0
anchors=8,8
classes=1
num=1
"""
GAMMAS = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)


def adding_model() -> Graph:
    graph = loads_cfg(ADDING_CFG, "adding.cfg", warn=quiet)
    copy = np.zeros((4, 3, 1, 1), np.float32)
    copy[:, 0] = 1.0
    graph.layers[0].weights = {
        "biases": np.zeros(4, np.float32),
        "scales": GAMMAS.copy(),
        "rolling_mean": np.zeros(4, np.float32),
        "rolling_variance": np.ones(4, np.float32),
        "weights": copy,
    }
    graph.layers[1].weights = {
        "biases": np.zeros(6, np.float32),
        "weights": np.full((6, 4, 1, 1), 0.25, np.float32),
    }
    return graph


def test_proxy_is_zero_at_rate_0_and_matches_a_numpy_transcription(small):
    _, data = small
    graph = adding_model()
    rates = (0.0, 0.25, 0.5, 0.75)
    result = sens.sensitivity(graph, data, rates=rates, proxy=True, warn=quiet)
    (unit,) = result["units"]
    proxies = [r["proxy"] for r in unit["results"]]
    assert proxies[0] == 0.0
    assert all(a < b for a, b in zip(proxies, proxies[1:], strict=False))

    from cfgsurgeon.train.dataset import DetectionDataset

    images = DetectionDataset.from_data(data, "valid", graph, augment=False)
    x0 = np.stack([images.sample(i)[0][0] for i in range(len(images))]).astype(np.float64)

    def scores(removed: int) -> np.ndarray:
        s = GAMMAS[removed:].sum() / 4 * x0 / math.sqrt(1 + 1e-5)
        return (1 / (1 + np.exp(-s))) ** 2

    for rate, proxy in zip(rates, proxies, strict=True):
        p, p0 = scores(round(rate * 4)), scores(0)
        assert proxy == pytest.approx(np.linalg.norm(p - p0) / np.linalg.norm(p0), rel=1e-5, abs=1e-9)


# -- Spearman ------------------------------------------------------------------------------------------------


def test_spearman_against_values_worked_out_by_hand():
    # ranks of b: 1, 2, 3.5, 5, 3.5 (the two 7s share 3 and 4); deviations from the mean rank 3:
    # a: -2 -1 0 1 2, b: -2 -1 .5 2 .5 → Σ = 8, Σa² = 10, Σb² = 9.5 → ρ = 8 / √95
    assert sens.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95), abs=1e-12)
    # ranks 1 2 3 against 2 3 1: deviations -1 0 1 and 0 1 -1 → Σ = -1, Σa² = Σb² = 2 → ρ = -1/2
    assert sens.spearman([0.1, 0.2, 0.4], [20, 30, 10]) == pytest.approx(-0.5, abs=1e-12)
    assert sens.spearman([3, 1, 2], [30, 10, 20]) == pytest.approx(1.0)
    assert math.isnan(sens.spearman([1, 1, 1], [1, 2, 3]))


# -- reports -------------------------------------------------------------------------------------------------


def test_markdown_table_lists_the_most_sensitive_unit_first(small, tmp_path):
    graph, data = small
    result = sens.sensitivity(graph, data, rates=(0.5,), proxy=True, warn=quiet)
    result["units"][0]["results"][0]["proxy"], result["units"][1]["results"][0]["proxy"] = 0.1, 0.7
    rows = [line for line in sens.markdown_table(result).splitlines() if re.match(r"\| \S+ \| \d+ \|", line)]
    assert rows == [
        f"| {result['units'][1]['key']} | 16 | 0.700 |",
        f"| {result['units'][0]['key']} | 8 | 0.100 |",
    ]
    path = sens.plot_sensitivity(result, tmp_path / "s.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- refusals ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"rates": (0.5, 1.0)}, r"`rates`: 1 is not a share of a unit's channels in \[0, 1\)"),
        ({"rates": (0.5, 0.5)}, "`rates` lists a rate twice"),
        ({"rates": ()}, "`rates` is empty"),
        ({"criterion": "l3"}, "`criterion` 'l3' is unknown"),
        ({"images": 5}, "`images` is 5, but the valid split has 4 images"),
        ({"images": 0}, "`images` is 0"),
    ],
)
def test_bad_settings_are_one_line_errors(small, settings, message):
    graph, data = small
    with pytest.raises(UsageError, match=message) as refused:
        sens.sensitivity(graph, data, **{"proxy": True, **settings}, warn=quiet)
    assert "\n" not in str(refused.value)


def test_a_dataset_with_other_classes_is_refused(small, tmp_path):
    graph, _ = small
    data = make_synthetic_dataset(tmp_path / "three", classes=3, train=1, valid=1, size=32, seed=0)
    with pytest.raises(UsageError, match="classes=3, but the model has 1 classes"):
        sens.sensitivity(graph, data, proxy=True, warn=quiet)


def test_a_foreign_state_file_is_refused(small, tmp_path):
    graph, data = small
    state = tmp_path / "state.json"
    state.write_text('{"something": "else"}\n')
    with pytest.raises(UsageError, match="not a sensitivity analysis"):
        sens.sensitivity(graph, data, proxy=True, state=state, warn=quiet)
    state.write_text("{not json")
    with pytest.raises(UsageError, match="cannot continue from it"):
        sens.sensitivity(graph, data, proxy=True, state=state, warn=quiet)
