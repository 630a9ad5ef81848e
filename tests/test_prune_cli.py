"""``cfgsurgeon prune`` end to end through click: ``init`` writes random weights (with dead channels),
``prune`` writes pruned.cfg, pruned.weights, report.md and report.json, prints the bound and the achieved
ratio, and refuses mistakes with one ``Error:`` line without touching its inputs. Uses the repository's own
cfg/yolo-nano-res.cfg (grouped routes, residual units, SPP), so nothing here needs ../shared."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import REPO_CFG_DIR, quiet
from test_prune import kept_by_matching, outputs, producer_convs, random_input, rel_error

from cfgsurgeon import layers as L
from cfgsurgeon.cli import main
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.surgery.layer import residual_units
from cfgsurgeon.surgery.prune import prune, report
from cfgsurgeon.weights import read_weights

CFG = REPO_CFG_DIR / "yolo-nano-res.cfg"
OUTPUTS = ("pruned.cfg", "pruned.weights", "report.json", "report.md")


def run(*args: object):
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    # CliRunner catches every exception: only SystemExit (what click raises) is an acceptable outcome
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def ok(*args: object):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def one_error_line(result, *needles: str) -> str:
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """``cfgsurgeon init`` weights for yolo-nano-res with 30 % dead channels per BN layer."""
    path = tmp_path_factory.mktemp("init") / "nano.weights"
    ok("init", "--cfg", CFG, "-o", path, "--seed", 3, "--dead-fraction", 0.3)
    return path


def load(cfg: Path, weights: Path):
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)
    return graph


def test_prune_writes_the_model_and_the_report(weights: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = ok("prune", "--cfg", CFG, "--weights", weights, "--method", "slim", "--percent", 0.2, "-o", out)
    assert sorted(path.name for path in out.iterdir()) == sorted(OUTPUTS)
    data = json.loads((out / "report.json").read_text())
    original, pruned = load(CFG, weights), load(out / "pruned.cfg", out / "pruned.weights")

    # the printed summary
    lines = result.stdout.splitlines()
    bound, threshold = data["ratio_bound"], data["threshold_bound"]
    assert lines[0] == f"upper bound of the global ratio: {bound:.4f} (threshold {threshold:.6g})"
    assert (
        lines[1] == f"achieved ratio: {data['achieved_ratio']:.4f} of {data['candidate_channels']} channels"
    )
    assert f"params {original.params:,} -> {pruned.params:,}" in result.stdout
    assert lines[-1] == f"wrote {out}/pruned.cfg, pruned.weights, report.md, report.json"

    # settings and totals
    assert data["method"] == "slim" and data["criterion"] == "bn-gamma"
    assert data["requested_ratio"] == 0.2
    assert 0 < data["achieved_ratio"] <= data["ratio_bound"] < 1
    totals = data["totals"]
    assert totals["params_before"] == original.params and totals["params_after"] == pruned.params
    assert totals["bflops_before"] == pytest.approx(original.bflops)
    assert totals["bflops_after"] == pytest.approx(pruned.bflops) and pruned.bflops < original.bflops
    assert totals["layers_before"] == totals["layers_after"] == len(original.layers)
    assert (out / "pruned.weights").stat().st_size == 20 + 4 * pruned.params

    # per-layer rows, with the kept channel indices of every narrowed conv
    rows = data["layers"]
    assert [row["index"] for row in rows] == list(range(len(original.layers)))
    narrowed = 0
    for row, before, after in zip(rows, original.layers, pruned.layers, strict=True):
        assert row["channels_before"] == before.out_shape[0] and row["channels_after"] == after.out_shape[0]
        assert row["params_before"] == before.params and row["params_after"] == after.params
        if before in producer_convs(original) and after.filters < before.filters:
            assert row["kept_indices"] == kept_by_matching(before, after)
            narrowed += 1
        else:
            assert "kept_indices" not in row
    assert narrowed > 0

    # compensation: only dead channels went (percent ≤ their share), so it is exact, and measured
    compensation = data["compensation"]
    assert compensation["inexact_at_borders"] == []
    assert 0 <= compensation["measured_relative_error"] < 1e-5
    x = random_input(original)
    assert rel_error(outputs(pruned, x), outputs(original, x)) < 1e-12

    markdown = (out / "report.md").read_text()
    for needle in (
        "# Pruning report",
        "upper bound: ratio",
        "achieved ratio",
        "## Compensation",
        "## Layers",
    ):
        assert needle in markdown


def test_the_report_is_the_api_report(weights: Path, tmp_path: Path):
    ok("prune", "--cfg", CFG, "--weights", weights, "--method", "regular", "--percent", 0.3, "-o", tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    expected = report(prune(load(CFG, weights), "regular", percent=0.3))
    measured = data["compensation"].pop("measured_relative_error")
    expected["compensation"].pop("measured_relative_error")
    assert data == json.loads(json.dumps(expected))
    assert measured is not None


def test_live_channels_report_inexact_borders(weights: Path, tmp_path: Path):
    result = ok(
        "prune", "--cfg", CFG, "--weights", weights, "--method", "shortcut", "--percent", 0.5, "-o", tmp_path
    )
    data = json.loads((tmp_path / "report.json").read_text())
    layers = data["compensation"]["inexact_at_borders"]
    measured = data["compensation"]["measured_relative_error"]
    assert layers and measured > 0
    folded = f"in {len(layers)} layers the removed channels' constants are folded exactly except"
    assert folded in result.stdout
    assert f"random input: {measured:.3g} of its largest output" in result.stdout
    assert "not a predicted accuracy loss" in result.stdout
    assert "not at the borders" in (tmp_path / "report.md").read_text()


def test_no_verify_leaves_the_error_unmeasured(weights: Path, tmp_path: Path):
    args = ("--method", "normal", "--threshold", 1e-9, "--no-verify", "-o", tmp_path)
    ok("prune", "--cfg", CFG, "--weights", weights, *args)
    assert (
        json.loads((tmp_path / "report.json").read_text())["compensation"]["measured_relative_error"] is None
    )


def test_regular_round_to(weights: Path, tmp_path: Path):
    args = ("--method", "regular", "--percent", 0.4, "--round-to", 8, "-o", tmp_path)
    ok("prune", "--cfg", CFG, "--weights", weights, *args)
    original, pruned = load(CFG, weights), load(tmp_path / "pruned.cfg", tmp_path / "pruned.weights")
    widths = [(layer.filters, pruned.layers[layer.index].filters) for layer in producer_convs(original)]
    assert all(after % 8 == 0 or after == before for before, after in widths), widths
    assert any(after < before for before, after in widths)


def test_layer_pruning_from_the_command_line(weights: Path, tmp_path: Path):
    units = residual_units(load(CFG, weights))
    removable = len(units) - len({u.stage for u in units})
    args = ("--cfg", CFG, "--weights", weights, "--method", "layer", "-o", tmp_path)
    if removable == 0:
        one_error_line(run("prune", *args, "--shortcuts", 1), "--shortcuts 1", "at most 0 can be removed")
        return
    result = ok("prune", *args, "--shortcuts", 1)
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["removed_shortcuts"]) == 1
    assert "removed residual units at shortcut layers" in result.stdout


def test_layer_method_needs_shortcuts(weights: Path, tmp_path: Path):
    one_error_line(
        run("prune", "--cfg", CFG, "--weights", weights, "--method", "layer", "-o", tmp_path), "--shortcuts"
    )
    assert not list(tmp_path.iterdir())


def test_an_excessive_ratio_is_refused_with_the_bound(weights: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ("--cfg", CFG, "--weights", weights, "--method", "slim", "-o", out)
    line = one_error_line(run("prune", *args, "--percent", 0.99), "--percent 0.990", "would empty a layer")
    bound = prune(load(CFG, weights), "slim", percent=0.1).selection.ratio_bound
    assert f"largest ratio that keeps every layer is {bound:.3f}" in line
    assert not out.exists() or not list(out.iterdir())
    ok("prune", *args, "--percent", 0.99, "--force")  # forced: every layer keeps at least one channel
    pruned = load(out / "pruned.cfg", out / "pruned.weights")
    assert min(layer.out_shape[0] for layer in pruned.layers) >= 1


def test_an_excessive_threshold_is_refused(weights: Path, tmp_path: Path):
    args = ("--cfg", CFG, "--weights", weights, "--method", "shortcut", "--threshold", 100, "-o", tmp_path)
    one_error_line(run("prune", *args), "--threshold 100 would empty a layer", "highest safe threshold")


@pytest.mark.parametrize("given", [(), ("--percent", 0.1, "--threshold", 0.1)], ids=["neither", "both"])
def test_percent_or_threshold_exactly_once(weights: Path, tmp_path: Path, given):
    args = ("--cfg", CFG, "--weights", weights, "--method", "slim", *given, "-o", tmp_path)
    one_error_line(run("prune", *args), "give exactly one of --percent and --threshold")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("percent", [1.0, -0.2])
def test_percent_out_of_range(weights: Path, tmp_path: Path, percent: float):
    args = ("--cfg", CFG, "--weights", weights, "--method", "slim", "--percent", percent, "-o", tmp_path)
    one_error_line(run("prune", *args), "--percent must be in [0, 1)")


def test_weights_are_required(tmp_path: Path):
    result = run("prune", "--cfg", CFG, "--method", "slim", "--percent", 0.1, "-o", tmp_path)
    assert result.exit_code == 2 and "--weights" in result.output


def test_unknown_method_is_a_usage_error(weights: Path, tmp_path: Path):
    result = run(
        "prune", "--cfg", CFG, "--weights", weights, "--method", "magic", "--percent", 0.1, "-o", tmp_path
    )
    assert result.exit_code == 2 and "'magic' is not one of" in result.output


@pytest.mark.parametrize("name", ["pruned.cfg", "pruned.weights"])
def test_inputs_are_never_overwritten(weights: Path, tmp_path: Path, name: str):
    """Inputs named like the outputs, in the output directory: refused, and the inputs stay as they were."""
    cfg, weights_copy = tmp_path / "model.cfg", tmp_path / "model.weights"
    shutil.copy(CFG, cfg)
    shutil.copy(weights, weights_copy)
    (cfg if name == "pruned.cfg" else weights_copy).rename(tmp_path / name)
    cfg = tmp_path / "pruned.cfg" if name == "pruned.cfg" else cfg
    weights_copy = tmp_path / "pruned.weights" if name == "pruned.weights" else weights_copy
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    args = ("--cfg", cfg, "--weights", weights_copy, "--method", "slim", "--percent", 0.2, "-o", tmp_path)
    one_error_line(run("prune", *args), "refusing to overwrite the input file")
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_the_output_directory_may_hold_the_inputs(weights: Path, tmp_path: Path):
    cfg, weights_copy = tmp_path / "model.cfg", tmp_path / "model.weights"
    shutil.copy(CFG, cfg)
    shutil.copy(weights, weights_copy)
    before = cfg.read_bytes(), weights_copy.read_bytes()
    ok("prune", "--cfg", cfg, "--weights", weights_copy, "--method", "slim", "--percent", 0.2, "-o", tmp_path)
    assert (cfg.read_bytes(), weights_copy.read_bytes()) == before
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [*OUTPUTS, "model.cfg", "model.weights"]
    )


def test_same_command_same_bytes(weights: Path, tmp_path: Path):
    for folder in ("a", "b"):
        args = ("--method", "slim", "--percent", 0.05, "--criterion", "l1", "-o", tmp_path / folder)
        ok("prune", "--cfg", CFG, "--weights", weights, *args)
    for name in OUTPUTS:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_grouped_routes_stay_even(weights: Path, tmp_path: Path):
    args = ("--method", "shortcut", "--percent", 0.5, "-o", tmp_path)
    ok("prune", "--cfg", CFG, "--weights", weights, *args)
    pruned = load(tmp_path / "pruned.cfg", tmp_path / "pruned.weights")
    routes = [layer for layer in pruned.layers if isinstance(layer, L.Route) and layer.groups > 1]
    assert routes
    for route in routes:
        (source,) = route.inputs
        assert source.out_shape[0] % 2 == 0 and route.out_shape[0] == source.out_shape[0] // 2
    assert np.isfinite(outputs(pruned, random_input(pruned))[0]).all()
