"""``cfgsurgeon prune --plan / --target-* / --round-to / --normalize / --dry-run / --keep-seen`` and
``cfgsurgeon plan`` end to end through click, on the repository's cfg/yolo-nano-res.cfg with ``init`` weights
(nothing here needs ../shared). Widths are read back from the written cfg's ``filters=`` lines and the
``seen`` field from the written file's bytes, not through our parsers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_prune_cli import CFG, OUTPUTS, load, ok, one_error_line, run

from cfgsurgeon.surgery.plan import prunable_units


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """``cfgsurgeon init`` weights for yolo-nano-res, with seen=12345 written into the header."""
    path = tmp_path_factory.mktemp("init") / "nano.weights"
    ok("init", "--cfg", CFG, "-o", path, "--seed", 3)
    data = bytearray(path.read_bytes())
    major, minor = np.frombuffer(bytes(data[:8]), dtype="<i4")
    assert (major, minor) >= (0, 2)  # seen is a uint64 at bytes 12-20
    data[12:20] = np.array([12345], dtype="<u8").tobytes()
    path.write_bytes(bytes(data))
    return path


def filters(cfg: Path) -> list[int]:
    return [int(v) for v in re.findall(r"^filters=(\d+)$", cfg.read_text(), flags=re.M)]


def seen(weights: Path) -> int:
    return int(np.frombuffer(weights.read_bytes()[12:20], dtype="<u8")[0])


def test_prune_by_a_hand_written_plan(weights: Path, tmp_path: Path):
    units = {unit.key: unit for unit in prunable_units(load(CFG, weights))}
    single = [u for u in units.values() if len(u.producers) == 1 and u.channels >= 8][:2]
    rates = {single[0].key: 0.5, single[1].key: 0.25}
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"rates": rates}))
    ok("prune", "--cfg", CFG, "--weights", weights, "--plan", plan, "--no-verify", "-o", tmp_path / "out")
    before, after = filters(CFG), filters(tmp_path / "out" / "pruned.cfg")
    conv_lines = _conv_filter_positions(CFG)
    for unit in single:
        position = conv_lines.index(unit.producers[0])
        removed = int(rates[unit.key] * unit.channels + 0.5)
        assert after[position] == before[position] - removed
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert sorted(changed) == sorted(conv_lines.index(u.producers[0]) for u in single)
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    assert data["method"] == "plan" and data["rates"] == rates


def _conv_filter_positions(cfg: Path) -> list[int]:
    """Layer index of each ``filters=`` line, by counting sections in the text."""
    positions, layer = [], -1
    for line in cfg.read_text().splitlines():
        if line.startswith("[") and not line.startswith(("[net]", "[network]")):
            layer += 1
        elif line.startswith("filters="):
            positions.append(layer)
    return positions


def test_a_plan_with_an_unknown_unit_is_one_error_line(weights: Path, tmp_path: Path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"rates": {"999": 0.5}}))
    result = run("prune", "--cfg", CFG, "--weights", weights, "--plan", plan, "-o", tmp_path / "out")
    one_error_line(result, "unknown unit '999'")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("policy", "accept"), [("pow2", lambda w: w & (w - 1) == 0), ("16", lambda w: w % 16 == 0)]
)
def test_round_to_gives_only_such_widths(weights: Path, tmp_path: Path, policy, accept):
    args = ("--method", "slim", "--percent", 0.6, "--round-to", policy, "--no-verify", "-o", tmp_path)
    ok("prune", "--cfg", CFG, "--weights", weights, *args)
    changed = [(b, a) for b, a in zip(filters(CFG), filters(tmp_path / "pruned.cfg"), strict=True) if a != b]
    assert changed
    assert all(accept(width) for _, width in changed), changed


def test_a_bad_round_to_is_refused(weights: Path, tmp_path: Path):
    result = run(
        "prune",
        "--cfg",
        CFG,
        "--weights",
        weights,
        "--method",
        "slim",
        "--percent",
        0.2,
        "--round-to",
        "pow3",
        "-o",
        tmp_path,
    )
    assert result.exit_code != 0 and "positive integer or 'pow2'" in result.output


def test_prune_to_a_bflops_target(weights: Path, tmp_path: Path):
    args = ("--method", "shortcut", "--target-bflops", 0.6, "--no-verify", "-o", tmp_path)
    result = ok("prune", "--cfg", CFG, "--weights", weights, *args)
    original, pruned = load(CFG, weights), load(tmp_path / "pruned.cfg", tmp_path / "pruned.weights")
    assert 0.6 * 0.99 <= pruned.bflops / original.bflops <= 0.6
    assert "target bflops 60.00%: reached" in result.stdout
    assert json.loads((tmp_path / "report.json").read_text())["target"]["measure"] == "bflops"


def test_a_dry_run_writes_nothing(weights: Path, tmp_path: Path):
    out = tmp_path / "out"
    args = ("--method", "slim", "--percent", 0.3, "--normalize", "mean", "--dry-run", "-o", out)
    result = ok("prune", "--cfg", CFG, "--weights", weights, *args)
    assert not out.exists()
    assert "nothing written (--dry-run)" in result.stdout
    assert re.search(r"^\s*layer\s+channels\s+kept\s+removed", result.stdout, flags=re.M)
    ok("prune", "--cfg", CFG, "--weights", weights, *args[:-3], "--no-verify", "-o", out)
    pruned = load(out / "pruned.cfg", out / "pruned.weights")
    assert f"-> {pruned.params:,} (" in result.stdout and f"-> {pruned.bflops:.3f} (" in result.stdout


def test_seen_is_reset_unless_kept(weights: Path, tmp_path: Path):
    args = ("--cfg", CFG, "--weights", weights, "--method", "slim", "--percent", 0.2, "--no-verify")
    result = ok("prune", *args, "-o", tmp_path / "reset")
    assert seen(tmp_path / "reset" / "pruned.weights") == 0
    assert "seen=0 (--keep-seen keeps the parent's)" in result.stdout
    ok("prune", *args, "--keep-seen", "-o", tmp_path / "kept")
    assert seen(tmp_path / "kept" / "pruned.weights") == 12345
    assert sorted(p.name for p in (tmp_path / "kept").iterdir()) == sorted(OUTPUTS)


def sensitivity_file(graph, path: Path) -> Path:
    rng = np.random.default_rng(0)
    units = []
    for unit in prunable_units(graph):
        weight = float(rng.random())
        rows = [
            {"rate": r, "map50": 0.5 - 0.1 * weight * r, "proxy": None, "params": 0, "bflops": 0.0}
            for r in (0.25, 0.5, 0.75)
        ]
        units.append({"key": unit.key, "results": rows})
    path.write_text(
        json.dumps(
            {
                "baseline": {"map50": 0.5, "proxy": 0.0},
                "rates": [0.25, 0.5, 0.75],
                "units": units,
                "criterion": "bn-gamma",
            }
        )
    )
    return path


def test_plan_then_prune_meets_the_target(weights: Path, tmp_path: Path):
    table = sensitivity_file(load(CFG, weights), tmp_path / "sensitivity.json")
    plan = tmp_path / "plan.json"
    result = ok(
        "plan", "--sensitivity", table, "--cfg", CFG, "--weights", weights, "--target-params", 0.5, "-o", plan
    )
    found = json.loads(plan.read_text())
    assert found["version"] == 1 and found["rates"]
    assert "predicted: BFLOPs" in result.stdout
    for key, rate in found["rates"].items():
        assert re.search(rf"^{re.escape(key)}\s+{rate:.3f}\s", result.stdout, flags=re.M)
    ok("prune", "--cfg", CFG, "--weights", weights, "--plan", plan, "--no-verify", "-o", tmp_path / "out")
    original = load(CFG, weights)
    pruned = load(tmp_path / "out" / "pruned.cfg", tmp_path / "out" / "pruned.weights")
    assert 0.5 * 0.99 <= pruned.params / original.params <= 0.5


def test_plan_needs_a_backend_for_latency(weights: Path, tmp_path: Path):
    table = sensitivity_file(load(CFG, weights), tmp_path / "sensitivity.json")
    result = run(
        "plan",
        "--sensitivity",
        table,
        "--cfg",
        CFG,
        "--weights",
        weights,
        "--target-latency",
        0.5,
        "-o",
        tmp_path / "plan.json",
    )
    one_error_line(result, "--target-latency and --backend go together")
