"""cfgsurgeon sensitivity end to end (small model, synthetic images): the three files, the JSON equal to the
library's, a second run that continues instead of starting over, progress, and one-line refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import quiet
from test_sensitivity import SMALL_CFG, random_model

from cfgsurgeon import load_cfg, read_weights, write_weights
from cfgsurgeon.cli import main
from cfgsurgeon.cli.sensitivity import _Progress
from cfgsurgeon.train.synthetic import make_synthetic_dataset
from cfgsurgeon.workflow import sensitivity as sens


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("cli-sensitivity")
    cfg = root / "small.cfg"
    cfg.write_text(SMALL_CFG)
    write_weights(random_model(SMALL_CFG), root / "small.weights")
    data = make_synthetic_dataset(root / "data", classes=1, train=1, valid=3, size=32, seed=0)
    return cfg, root / "small.weights", data


def run(files, out: Path, *extra: str):
    cfg, weights, data = files
    args = ["sensitivity", "--cfg", str(cfg), "--weights", str(weights), "--data", str(data), "-o", str(out)]
    return CliRunner().invoke(main, [*args, *extra])


def test_writes_json_table_and_plot_and_continues_a_finished_run(files, tmp_path, monkeypatch):
    out = tmp_path / "out"
    done = run(files, out, "--rates", "0.25,0.5", "--proxy")
    assert done.exit_code == 0, done.output
    assert (
        "sensitivity 4/4: " in done.stderr and "ETA" in done.stderr
    )  # a line per unit × rate off a terminal
    assert (
        f"wrote {out / 'sensitivity.json'}, {out / 'sensitivity.md'}, {out / 'sensitivity.png'}"
        in done.stdout
    )
    cfg, weights, data = files
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)
    expected = sens.sensitivity(graph, data, rates=(0.25, 0.5), proxy=True, warn=quiet, weights=weights)
    written = (out / "sensitivity.json").read_text()
    assert written == sens.to_json(expected)
    assert (out / "sensitivity.md").read_text() == sens.markdown_table(expected)
    assert (out / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert "| unit | channels | 0.25 | 0.5 |" in done.stdout

    monkeypatch.setattr(
        sens, "prune_units", lambda *a, **k: pytest.fail("a finished entry was measured again")
    )
    again = run(files, out, "--rates", "0.25,0.5", "--proxy")
    assert again.exit_code == 0, again.output
    assert (out / "sensitivity.json").read_text() == written


def test_with_map(files, tmp_path):
    done = run(files, tmp_path, "--rates", "0.5", "--images", "2")
    assert done.exit_code == 0, done.output
    result = json.loads((tmp_path / "sensitivity.json").read_text())
    assert result["images"] == 2 and result["inputs"]["proxy_only"] is False
    assert all(isinstance(u["results"][0]["map50"], float) for u in result["units"])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--rates", "0.5,x"], "Error: --rates '0.5,x': expected rates in [0, 1) separated by commas"),
        (["--rates", "0.5,1"], "Error: --rates: 1 is not a share of a unit's channels in [0, 1)"),
        (
            ["--criterion", "l3"],
            "Error: --criterion 'l3' is unknown (one of: bn-gamma, l1, l2, bn-gamma-l1, ",
        ),
        (["--images", "4"], "Error: --images is 4, but the valid split has 3 images (1 or more)"),
    ],
)
def test_mistakes_are_one_line(files, tmp_path, extra, message):
    done = run(files, tmp_path / "out", "--proxy", *extra)
    assert done.exit_code == 1 and "Traceback" not in done.output
    assert done.output.startswith(message) and done.output.count("\n") == 1, done.output


def test_other_settings_on_a_second_run_are_refused(files, tmp_path):
    assert run(files, tmp_path, "--rates", "0.5", "--proxy").exit_code == 0
    done = run(files, tmp_path, "--rates", "0.25", "--proxy")
    assert done.exit_code == 1 and done.output.count("\n") == 1
    assert done.output.startswith(
        f"Error: {tmp_path / 'sensitivity.json'}: was made with --rates [0.5], this run"
    )
    assert "delete it" in done.output


def test_refuses_to_write_over_an_input(files, tmp_path):
    cfg, weights, data = files
    (tmp_path / "sensitivity.md").write_bytes(cfg.read_bytes())
    done = run((tmp_path / "sensitivity.md", weights, data), tmp_path, "--proxy")
    assert done.exit_code == 1 and "refusing to overwrite the input file" in done.output
    assert (tmp_path / "sensitivity.md").read_bytes() == cfg.read_bytes()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_with_its_total_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    progress = _Progress()
    for done, what in [(1, "baseline"), (2, "0 at 0.5"), (3, "1 at 0.5"), (4, "2 at 0.5")]:
        progress(done, 4, what)
    progress.close()
    assert "/4 [" in terminal.getvalue() and "sensitivity" in terminal.getvalue()


def test_taylor_measures_importance_on_the_images_asked_for(files, tmp_path):
    cfg, weights, _ = files
    data = make_synthetic_dataset(tmp_path / "data", classes=1, train=3, valid=2, size=32, seed=1)
    done = run((cfg, weights, data), tmp_path / "out", "--rates", "0.5", "--proxy", "--criterion", "taylor",
               "--importance-images", "1")  # fmt: skip
    assert done.exit_code == 0, done.output
    graph = load_cfg(cfg, warn=quiet)
    read_weights(graph, weights)

    def analysis(images: int) -> str:
        found = sens.sensitivity(graph, data, rates=(0.5,), criterion="taylor", proxy=True, warn=quiet,
                                 weights=weights, importance_images=images)  # fmt: skip
        return sens.to_json(found)

    written = (tmp_path / "out" / "sensitivity.json").read_text()
    assert written == analysis(1) != analysis(3)
