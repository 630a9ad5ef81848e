"""cfgsurgeon sweep end to end (the nano model, synthetic images): the table printed and the files written,
a second run that continues instead of starting over, and one-line refusals naming the flags."""

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
    weights = tmp_path_factory.mktemp("cli-sweep") / "nano.weights"
    write_weights(graph, weights)
    return cfg, weights, data


def run(files, out: Path, *extra: str):
    cfg, weights, data = files
    args = ["sweep", "--cfg", str(cfg), "--weights", str(weights), "--data", str(data), "-o", str(out)]
    return CliRunner().invoke(main, [*args, "--latency-runs", "0", *extra])


def test_prints_the_table_writes_the_files_and_continues(files, tmp_path):
    out = tmp_path / "out"
    first = run(files, out, "--ratios", "0.2:0.4:0.2")
    assert first.exit_code == 0, first.output
    table = [line for line in first.stdout.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[0].removesuffix(" (chosen)") for line in table[1:]] == [
        "| baseline",
        "| 0.2",
        "| 0.4",
    ]
    assert f"wrote {out / 'sweep.json'}, {out / 'sweep.md'}, {out / 'sweep.png'}" in first.stdout
    assert "ratio 0.4: " in first.stderr and "ETA" in first.stderr  # a line per ratio off a terminal
    saved = (out / "sweep.json").read_text()
    assert [row["ratio"] for row in json.loads(saved)["rows"]] == [0.2, 0.4]
    again = run(files, out, "--ratios", "0.2:0.4:0.2")
    assert again.exit_code == 0, again.output
    assert "ratio 0.2: " not in again.stderr and "ratio 0.4: " not in again.stderr  # nothing measured again
    assert (out / "sweep.json").read_text() == saved


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--ratios", "0.1:0.9"], "Error: --ratios '0.1:0.9': expected START:STOP:STEP"),
        (["--ratios", "0.5,1.5"], "Error: --ratios: 1.5 is not a share of the channels in (0, 1)"),
        (["--images", "99"], "Error: "),
    ],
)
def test_mistakes_are_one_line_naming_the_flag(files, tmp_path, extra, expected):
    result = run(files, tmp_path / "out", *extra)
    assert result.exit_code == 1
    assert result.output.startswith(expected) and result.output.count("\n") == 1, result.output
    if extra[0] == "--images":
        assert "--images is 99, but the valid split has 4" in result.output


def test_other_settings_in_the_folder_are_refused_with_the_flag(files, tmp_path):
    out = tmp_path / "out"
    assert run(files, out, "--ratios", "0.2").exit_code == 0
    result = run(files, out, "--ratios", "0.2", "--criterion", "l1")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert "was made with --criterion 'bn-gamma', this run has 'l1'" in result.output


def test_an_unknown_method_is_one_line_listing_the_choices(files, tmp_path):
    result = run(files, tmp_path / "out", "--method", "layer")
    assert result.exit_code == 1 and result.output.count("\n") == 1
    assert result.output.startswith("Error: --method layer cannot be swept by ratio (one of: normal, ")
