"""What the command modules share: the model options, loading a model with the root's --quiet/--tree, and
showing library errors with the flags the user typed (the library names its parameters in backquotes)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from ..api import Model

CFG = click.option(
    "--cfg",
    "cfg",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet model description (.cfg).",
)
WEIGHTS = click.option(
    "--weights",
    "weights",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg.",
)
WEIGHTS_REQUIRED = click.option(
    "--weights",
    "weights",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Darknet weights (.weights) matching the cfg.",
)
JSON_TABLE = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object instead of the table."
)


def warn(message: str) -> None:
    if not click.get_current_context().find_root().obj.get("quiet"):
        click.echo(f"warning: {message}", err=True)


def load_model(cfg: Path | None, weights: Path | None = None, checkpoint: bool | None = None) -> Model:
    """``Model.load`` with the root's --quiet (cfg warnings on stderr unless given) and --tree."""
    from ..api import Model

    tree = click.get_current_context().find_root().obj.get("tree")
    return Model.load(cfg, weights, tree=tree, warn=warn, checkpoint=checkpoint)


# The flag of each library parameter that a UsageError names (as `name`); a name not listed stays as it is.
FLAGS = {
    "accuracy_control": "--accuracy-control",
    "backend": "--backend",
    "amp": "--amp",
    "block": "--block-size",
    "calibration": "--calibration",
    "cfg_path": "--cfg",
    "classes": "--classes",
    "data": "--data",
    "ema": "--ema",
    "fine_tune": "--fine-tune",
    "format": "--format",
    "importance_images": "--importance-images",
    "keep_float": "--keep-float",
    "max_drop": "--max-drop",
    "method": "--method",
    "model": "--model",
    "names": "--names",
    "old_names": "--old-names",
    "percent": "--percent",
    "plan": "--plan",
    "qat": "--qat",
    "qat_bits": "--bits",
    "qat_calibration": "--qat-calibration",
    "qat_freeze_bn": "--qat-freeze-bn",
    "qat_freeze_ranges": "--qat-freeze-ranges",
    "quantize": "--quantize",
    "size": "--size",
    "skip": "--skip-layers",
    "specs": "--cfg",
    "subset": "--subset",
    "target_bflops": "--target-bflops",
    "target_params": "--target-params",
    "threads": "--threads",
    "threshold": "--threshold",
    "tree": "--tree",
    "weights": "--weights",
}
_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def with_flags(message: str) -> str:
    """``message`` with each parameter the library names in backquotes shown as its command-line flag."""
    return _PARAMETER.sub(lambda found: FLAGS.get(found.group(1), found.group(0)), message)
