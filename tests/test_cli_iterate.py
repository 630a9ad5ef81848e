"""cfgsurgeon iterate end to end on the nano model: the table printed is the library's iterate.md, the state
and step files are written, a second run continues instead of starting over, and bad settings are refused in
one line naming the flag."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from cfgsurgeon.cli import main
from cfgsurgeon.ir import load_cfg
from cfgsurgeon.randinit import random_weights
from cfgsurgeon.weights import write_weights

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def files(nano, tmp_path_factory) -> tuple[Path, Path, Path]:
    cfg, data = nano
    graph = load_cfg(cfg, warn=lambda m: None)
    random_weights(graph, seed=3)
    weights = tmp_path_factory.mktemp("cli-iterate") / "nano.weights"
    write_weights(graph, weights)
    return cfg, weights, data


def run(files, out: Path, *extra: str):
    cfg, weights, data = files
    args = ["iterate", "--cfg", str(cfg), "--weights", str(weights), "--data", str(data), "-o", str(out)]
    quick = ["--target-bflops", "0.7", "--step", "0.3", "--epochs-per-step", "0", "--images", "4"]
    return CliRunner().invoke(main, [*args, *quick, *extra])


def test_prints_the_table_and_continues_a_finished_run(files, tmp_path):
    out = tmp_path / "out"
    done = run(files, out, "--max-drop", "1")
    assert done.exit_code == 0, done.output
    table = (out / "iterate.md").read_text()
    assert done.stdout.startswith(table)
    assert "final model (step 1)" in done.stdout
    assert "step 1/1: BFLOPs" in done.stderr and "analysis" in done.stderr
    state = json.loads((out / "iterate.json").read_text())
    assert [s["step"] for s in state["steps"]] == [0, 1]
    assert 0.69 <= state["steps"][1]["bflops"] / state["steps"][0]["bflops"] <= 0.7 + 1e-9
    again = run(files, out, "--max-drop", "1")
    assert again.exit_code == 0, again.output
    assert "step 1: done before" in again.stderr and "analysis" not in again.stderr
    assert again.stdout == done.stdout


@pytest.mark.parametrize(
    "extra, flag",
    [
        (["--step", "1.5"], "--step"),
        (["--target-bflops", "0"], "--target-bflops"),
        (["--round-to", "x"], "--round-to"),
    ],
)
def test_bad_settings_are_one_line_naming_the_flag(files, tmp_path, extra, flag):
    result = run(files, tmp_path / "bad", *extra)
    assert result.exit_code != 0
    assert result.stderr.count("\n") == 1 and flag in result.stderr and "Traceback" not in result.output


def test_a_folder_of_other_settings_is_refused(files, tmp_path):
    out = tmp_path / "out"
    assert run(files, out, "--max-drop", "1").exit_code == 0
    other = run(files, out, "--max-drop", "0.5")
    assert other.exit_code != 0 and "max_drop" in other.stderr and "another output folder" in other.stderr
