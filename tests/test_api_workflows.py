"""The pruning-workflow API (``Model.sensitivity``, ``plan``, ``sweep``, ``iterate``): each method prints what
its command prints and writes the same files, byte for byte (the command runs in one folder, the method in
another, both writing to the relative ``out``), and its values agree with figures worked out by hand from
the cfg, the sizes of the files written and OpenCV's darknet importer."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from test_iterate import opencv_params
from test_sensitivity import SMALL_CFG, random_model

from cfgsurgeon.api import Model
from cfgsurgeon.cli import main
from cfgsurgeon.errors import UsageError
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.train.synthetic import make_synthetic_dataset
from cfgsurgeon.weights import write_weights
from cfgsurgeon.workflow import iterate as iterate_module

pytest.importorskip("torch")

HEADER_BYTES = 20  # major, minor, revision (int32) and seen (uint64) before the floats of a .weights file


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> tuple[Path, Path, Path]:
    """SMALL_CFG (units "0" of 8 and "1" of 16 channels) with random weights, and 3 synthetic valid images."""
    root = tmp_path_factory.mktemp("api-small")
    cfg = root / "small.cfg"
    cfg.write_text(SMALL_CFG)
    write_weights(random_model(SMALL_CFG), root / "small.weights")
    data = make_synthetic_dataset(root / "data", classes=1, train=1, valid=3, size=32, seed=0)
    return cfg, root / "small.weights", data


@pytest.fixture(scope="module")
def nano_files(nano, tmp_path_factory) -> tuple[Path, Path, Path]:
    cfg, data = nano
    model = Model.load(cfg)
    random_weights(model.graph, seed=3)
    weights = tmp_path_factory.mktemp("api-nano") / "nano.weights"
    write_weights(model.graph, weights)
    return cfg, weights, data


def small_params(kept_0: int, kept_1: int) -> int:
    """SMALL_CFG's floats by hand: conv 3→a (3x3, BN: 4 per channel), conv a→b (3x3, BN), conv b→18 (1x1,
    biases)."""
    return (27 * kept_0 + 4 * kept_0) + (9 * kept_0 * kept_1 + 4 * kept_1) + (18 * kept_1 + 18)


def floats_in(weights: Path) -> int:
    return (weights.stat().st_size - HEADER_BYTES) // 4


def cli(folder: Path, monkeypatch, *args: str):
    """The command run in ``folder`` (its outputs relative to it)."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result


def same_files(one: Path, other: Path) -> None:
    names = sorted(path.relative_to(one) for path in one.rglob("*") if path.is_file())
    assert names == sorted(path.relative_to(other) for path in other.rglob("*") if path.is_file())
    for name in names:
        assert (one / name).read_bytes() == (other / name).read_bytes(), name


# -- sensitivity ---------------------------------------------------------------------------------------------


def test_sensitivity_prints_and_writes_what_the_command_does(small, tmp_path, monkeypatch, capsys):
    cfg, weights, data = small
    printed = cli(tmp_path / "cli", monkeypatch, "sensitivity", "--cfg", cfg, "--weights", weights,
                  "--data", data, "--rates", "0.25,0.5", "--proxy", "-o", "out")  # fmt: skip
    (tmp_path / "api").mkdir()
    monkeypatch.chdir(tmp_path / "api")
    report = Model.load(cfg, weights).sensitivity(data, "out", rates=[0.25, 0.5], proxy=True)
    assert printed.stdout == f"{report}\n"
    assert capsys.readouterr().err == ""  # nothing shown unless progress is asked
    same_files(tmp_path / "cli" / "out", tmp_path / "api" / "out")
    assert report.json() == (tmp_path / "api" / "out" / "sensitivity.json").read_text()
    assert report.files == [Path("out") / f"sensitivity.{ext}" for ext in ("json", "md", "png")]


def test_sensitivity_rows_have_the_widths_worked_out_by_hand(small, tmp_path):
    cfg, weights, data = small
    report = Model.load(cfg, weights).sensitivity(data, tmp_path, rates=[0.25, 0.5], proxy=True)
    units = {unit["key"]: unit for unit in report.data["units"]}
    assert {key: unit["channels"] for key, unit in units.items()} == {"0": 8, "1": 16}
    assert report.data["baseline"]["params"] == small_params(8, 16) == floats_in(weights)
    for rate, kept_0, kept_1 in ((0.25, 6, 12), (0.5, 4, 8)):  # round(rate · channels) removed
        by_rate = {key: {r["rate"]: r for r in unit["results"]} for key, unit in units.items()}
        assert by_rate["0"][rate]["params"] == small_params(kept_0, 16)
        assert by_rate["1"][rate]["params"] == small_params(8, kept_1)
    assert report.warnings == []


# -- plan ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def analysed(small, tmp_path_factory):
    cfg, weights, data = small
    out = tmp_path_factory.mktemp("api-analysis")
    return Model.load(cfg, weights).sensitivity(data, out, rates=[0.25, 0.5], proxy=True)


def test_plan_prints_and_saves_what_the_command_does(small, analysed, tmp_path, monkeypatch):
    cfg, weights, _ = small
    analysis = analysed.files[0].resolve()
    printed = cli(tmp_path / "cli", monkeypatch, "plan", "--sensitivity", analysis, "--cfg", cfg,
                  "--weights", weights, "--target-params", "0.7", "-o", "plan.json")  # fmt: skip
    (tmp_path / "api").mkdir()
    monkeypatch.chdir(tmp_path / "api")
    report = Model.load(cfg, weights).plan(analysis, target_params=0.7)
    assert report.save("plan.json") == Path("plan.json")
    assert printed.stdout == f"{report}\n"
    assert (tmp_path / "api" / "plan.json").read_bytes() == (tmp_path / "cli" / "plan.json").read_bytes()


def test_a_plan_from_the_report_or_a_dict_is_the_plan_from_its_file(small, analysed):
    model = Model.load(*small[:2])
    from_file = model.plan(analysed.files[0], target_bflops=0.6)
    assert model.plan(analysed, target_bflops=0.6).data == from_file.data
    assert model.plan(json.loads(analysed.json()), target_bflops=0.6).data == from_file.data


def test_the_planned_params_are_those_of_the_kept_widths(small, analysed):
    report = Model.load(*small[:2]).plan(analysed, target_params=0.7)
    kept = {unit["key"]: unit["kept"] for unit in report.data["units"]}
    assert (
        report.data["predicted"]["params"] == small_params(kept["0"], kept["1"]) <= 0.7 * small_params(8, 16)
    )
    assert report.rates and all(0 < rate < 1 for rate in report.rates.values())
    assert "wrote" not in str(report)  # until saved


def test_plan_refusals_name_the_parameter(small, analysed, tmp_path):
    model = Model.load(*small[:2])
    with pytest.raises(UsageError, match="`target_latency` and `backend` go together"):
        model.plan(analysed, target_latency=0.5)
    with pytest.raises(UsageError, match="`target_latency` needs a latency backend and no other target"):
        model.plan(analysed, target_latency=0.5, target_bflops=0.5, backend="torch")
    with pytest.raises(UsageError, match="refusing to overwrite the input file"):
        model.plan(analysed, target_params=0.7).save(small[0])


# -- sweep ---------------------------------------------------------------------------------------------------


def test_sweep_prints_and_writes_what_the_command_does(nano_files, tmp_path, monkeypatch):
    cfg, weights, data = nano_files
    printed = cli(tmp_path / "cli", monkeypatch, "sweep", "--cfg", cfg, "--weights", weights, "--data", data,
                  "--ratios", "0.3,0.6", "--latency-runs", "0", "-o", "out")  # fmt: skip
    (tmp_path / "api").mkdir()
    monkeypatch.chdir(tmp_path / "api")
    report = Model.load(cfg, weights).sweep(data, "out", ratios=[0.3, 0.6], latency_runs=0)
    assert printed.stdout == f"{report}\n"
    same_files(tmp_path / "cli" / "out", tmp_path / "api" / "out")
    assert report.files == [Path("out") / name for name in ("sweep.json", "sweep.md", "sweep.png")]


def test_sweep_rows_are_the_files_it_kept(nano_files, tmp_path, capsys):
    cfg, weights, data = nano_files
    logged: list[str] = []
    model = Model.load(cfg, weights)
    report = model.sweep(
        data, tmp_path, ratios="0.3:0.6:0.3", latency_runs=0, max_drop=0.5, log=logged.append
    )
    assert capsys.readouterr().err == "" and any(line.startswith("ratio 0.6: ") for line in logged)
    assert report.baseline["params"] == floats_in(weights)
    assert [row["ratio"] for row in report.rows] == [0.3, 0.6]
    for row in report.rows:
        assert row["params"] == floats_in(tmp_path / f"ratio-{row['ratio']:.2f}" / f"{cfg.stem}.weights")
    floor = 0.5 * report.baseline["map50"]
    assert report.chosen == max((r["ratio"] for r in report.rows if r["map50"] >= floor), default=None)


def test_sweep_and_iterate_refuse_a_model_that_is_not_its_files(nano_files, tmp_path):
    cfg, weights, data = nano_files
    changed = Model.load(cfg, weights)
    first = next(layer for layer in changed.layers if getattr(layer, "weights", None))
    name = next(iter(first.weights))
    first.weights[name] = np.asarray(first.weights[name]) * 2
    with pytest.raises(UsageError, match="the model now differs from"):
        changed.sweep(data, tmp_path, ratios=[0.5], latency_runs=0)
    with pytest.raises(UsageError, match="it has none: save it"):
        Model(changed.graph).iterate(data, tmp_path)
    assert not any(tmp_path.iterdir())


# -- iterate -------------------------------------------------------------------------------------------------


ITERATE = [
    "--target-bflops",
    "0.7",
    "--step",
    "0.3",
    "--epochs-per-step",
    "0",
    "--images",
    "4",
    "--max-drop",
    "1",
]


def test_iterate_prints_and_writes_what_the_command_does(nano_files, tmp_path, monkeypatch):
    cfg, weights, data = nano_files
    monkeypatch.setattr(iterate_module, "time", SimpleNamespace(perf_counter=lambda: 0.0))  # steps' seconds
    args = ["iterate", "--cfg", cfg, "--weights", weights, "--data", data, *ITERATE, "-o", "out"]
    printed = cli(tmp_path / "cli", monkeypatch, *args)
    (tmp_path / "api").mkdir()
    monkeypatch.chdir(tmp_path / "api")
    model = Model.load(cfg, weights)
    report = model.iterate(data, "out", target_bflops=0.7, step=0.3, epochs_per_step=0, images=4, max_drop=1)
    assert printed.stdout == f"{report}\n"
    same_files(tmp_path / "cli" / "out", tmp_path / "api" / "out")

    final = report.steps[-1]
    assert report.final == final and final["step"] == 1 and report.stopped is None
    assert report.model.params == final["params"] == floats_in(Path(final["weights"]))
    cv2 = pytest.importorskip("cv2")
    assert opencv_params(cv2, final["cfg"], final["weights"]) == report.model.params
    assert report.model.bflops <= 0.7 * model.bflops + 1e-9
