"""The README's "Python API" example runs as written (the shared zoo and vehicles data in place of
``../shared``) and prints what the commands print for the same steps, writing the same bytes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import SHARED, need_shared

from cfgsurgeon.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.shared


def readme_example() -> str:
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def cli(*args: object) -> str:
    result = CliRunner().invoke(main, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def cli_steps(zoo: Path, vehicles: Path) -> str:
    """The example's steps as commands, writing under cli/ where the example writes under out/."""
    model = ["--cfg", "cli/pruned/pruned.cfg", "--weights", "cli/pruned/pruned.weights"]
    return "".join(
        [
            cli(
                "retarget",
                *("--cfg", zoo / "models/yolov3-tiny.cfg", "--weights", zoo / "models/yolov3-tiny.weights"),
                *("--names", vehicles / "vehicles.names", "--old-names", zoo / "models/coco.names"),
                *("-o", "cli/vehicles"),
            ),
            cli(
                "prune",
                *("--cfg", "cli/vehicles/yolov3-tiny.cfg", "--weights", "cli/vehicles/yolov3-tiny.weights"),
                *("--method", "slim", "--percent", "0.05", "-o", "cli/pruned"),
            ),
            cli("detect", *model, "--names", vehicles / "vehicles.names", zoo / "images/dog.jpg"),
            cli("eval", *model, "--data", vehicles / "vehicles.data"),
            cli("export", *model, "--format", "onnx", "-o", "cli/pruned.onnx"),
        ]
    )


def without_timing(text: str) -> str:
    return re.sub(r"Predicted in [0-9.]+ ms", "Predicted in … ms", text)


def test_readme_api_example_prints_what_the_commands_print(tmp_path, monkeypatch, capsys):
    need_shared(SHARED / "data" / "vehicles")
    zoo, vehicles = SHARED / "zoo", SHARED / "data" / "vehicles"
    code = readme_example()
    assert '"../shared/zoo", "../shared/data/vehicles"' in code
    monkeypatch.chdir(tmp_path)
    exec(compile(code.replace("../shared", str(SHARED)), str(README), "exec"), {})  # noqa: S102
    printed = capsys.readouterr().out
    expected = cli_steps(zoo, vehicles)
    assert without_timing(printed) == without_timing(expected.replace("cli/", "out/"))
    for name in ("vehicles/yolov3-tiny.weights", "pruned/pruned.cfg", "pruned/pruned.weights", "pruned.onnx"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "cli" / name).read_bytes(), name
