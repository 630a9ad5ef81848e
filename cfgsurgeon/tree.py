"""Softmax trees (``tree=`` in ``[region]`` and ``[softmax]``, YOLO9000's WordTree): reading darknet's tree
file and finding it.

A tree file has one node a line, ``name parent`` (``parent`` an earlier line's 0-based index, -1 or missing
for a root). darknet (``tree.c: read_tree``) forms the softmax groups from *runs of consecutive lines with the
same parent*: the softmax is taken over each run, in file order, and the runs tile the class vector. A node
whose parent repeats later, not adjacently, starts a new group, as in darknet.

The cfg names the file relative to darknet's working directory (``data/9k.tree``); such files are not part
of a cfg collection, so a relative name is looked up in the working directory, next to the cfg and in the
cfg's parent folder (darknet keeps ``cfg/`` and ``data/`` side by side), unless a file is given explicitly
(``--tree FILE``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from . import layers as L
from .errors import CfgError, UsageError

_LEADING_INT = re.compile(r"[-+]?\d+")


@dataclass(frozen=True)
class SoftmaxTree:
    path: Path
    group_sizes: tuple[int, ...]  # in file order; the first may be 0 (darknet's, when line 1 has a parent)

    @property
    def nodes(self) -> int:
        return sum(self.group_sizes)


def read_tree(path: str | Path) -> SoftmaxTree:
    """darknet's grouping of a tree file: a new group wherever a line's parent differs from the line above
    (the first group is the run of parent -1 at the top). ``parent`` is read as sscanf's ``%d`` does."""
    sizes: list[int] = []
    last_parent, run = -1, 0
    for line in Path(path).read_text(encoding="utf-8", errors="replace").splitlines():
        parent = _parent(line)
        if parent != last_parent:
            sizes.append(run)
            last_parent, run = parent, 0
        run += 1
    sizes.append(run)
    return SoftmaxTree(Path(path), tuple(sizes))


def _parent(line: str) -> int:
    fields = line.split()
    match = _LEADING_INT.match(fields[1]) if len(fields) > 1 else None
    return int(match.group()) if match else -1


def has_tree(layer: L.Layer) -> bool:
    return isinstance(layer, L.Region | L.Softmax) and bool(layer.options.get("tree"))


def tree_candidates(layer: L.Layer) -> list[Path]:
    """Where the layer's ``tree=`` file may be, in the order tried."""
    name = Path(layer.options["tree"])
    if name.is_absolute():
        return [name]
    cfg_dir = Path(layer.file).parent
    found: list[Path] = []
    for folder in (Path.cwd(), cfg_dir, cfg_dir.parent):
        if folder / name not in found:
            found.append(folder / name)
    return found


def load_tree(layer: L.Layer, entries: int, override: str | Path | None = None) -> SoftmaxTree:
    """The softmax tree of a ``tree=`` layer, checked to cover exactly its ``entries`` values."""
    if override is not None:
        if not Path(override).is_file():
            raise UsageError(f"`tree` {override}: no such file")
        path = Path(override)
    else:
        candidates = tree_candidates(layer)
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            looked = ", ".join(str(p) for p in candidates)
            raise CfgError(
                f"layer {layer.index} [{layer.header}] tree={layer.options['tree']}: file not found "
                f"(looked for {looked}); give the tree file with `tree` FILE",
                layer.where("tree"),
            )
    tree = read_tree(path)
    if tree.nodes != entries:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] tree {path} has {tree.nodes} nodes, the layer softmaxes "
            f"{entries} values",
            layer.where("tree"),
        )
    return tree
