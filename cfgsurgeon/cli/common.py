"""What the command modules share: the model options, loading a model with the root's --quiet/--tree, and
showing library errors with the flags the user typed (the library names its parameters in backquotes)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from ..ir import Graph, load_cfg

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


def load(cfg: Path, weights: Path | None = None) -> Graph:
    from ..weights import read_weights

    graph = with_tree(load_cfg(cfg, warn=warn))
    if weights is not None:
        read_weights(graph, weights)
    return graph


def with_tree(graph: Graph) -> Graph:
    tree = click.get_current_context().find_root().obj.get("tree")
    graph.tree_file = None if tree is None else str(tree)
    return graph


# The flag of each library parameter that a UsageError names (as `name`); a name not listed stays as it is.
FLAGS = {
    "backend": "--backend",
    "block": "--block-size",
    "calibration": "--calibration",
    "cfg_path": "--cfg",
    "fine_tune": "--fine-tune",
    "format": "--format",
    "model": "--model",
    "quantize": "--quantize",
    "size": "--size",
    "skip": "--skip-layers",
    "specs": "--cfg",
    "threads": "--threads",
    "tree": "--tree",
    "weights": "--weights",
}
_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def with_flags(message: str) -> str:
    """``message`` with each parameter the library names in backquotes shown as its command-line flag."""
    return _PARAMETER.sub(lambda found: FLAGS.get(found.group(1), found.group(0)), message)
