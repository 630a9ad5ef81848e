"""Softmax trees (``tree=`` in [region] and [softmax]) in the PyTorch backend: the tree file read as darknet's
``tree.c`` reads it, the grouped softmax of ``blas.c``, where the file is looked up, and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import quiet

from cfgsurgeon import CfgError, loads_cfg

torch = pytest.importorskip("torch")

from test_torch_layers import build, close, image, net, run, sigmoid  # noqa: E402

from cfgsurgeon.emit.torch import to_torch  # noqa: E402

# -- softmax trees (tree= in [region] and [softmax]; darknet's tree.c read_tree, blas.c softmax) -------------

# name parent: groups by darknet's rule (a new group where the parent differs from the line above):
# [r0 r1 r2] [a b] [c] [d e f] [g] (g's parent 0 repeats, not adjacently: its own group)
TREE = "r0\nr1 -1\nr2\na 0\nb 0\nc 1\nd 3\ne 3\nf 3x\ng 0\n"
TREE_GROUPS = [3, 2, 1, 3, 1]


def darknet_tree_groups(text: str) -> list[int]:
    """read_tree's group sizes, written from its loop: sscanf("%s %d") with parent −1 when absent."""
    sizes, last_parent, size = [], -1, 0
    for line in text.splitlines():
        fields = line.split()
        digits = ""
        if len(fields) > 1:
            for k, ch in enumerate(fields[1]):
                if ch.isdigit() or (k == 0 and ch in "+-"):
                    digits += ch
                else:
                    break
        parent = int(digits) if digits.lstrip("+-") else -1
        if parent != last_parent:
            sizes.append(size)
            size, last_parent = 0, parent
        size += 1
    return [*sizes, size]


def grouped_softmax(values: np.ndarray, groups: list[int], temperature: float = 1.0) -> np.ndarray:
    """softmax_tree: darknet's softmax (exp(x/T − max/T) / Σ) over each group, consecutively."""
    out, start = values.astype(np.float64).copy(), 0
    for size in groups:
        chunk = out[start : start + size]
        if size:
            e = np.exp(chunk / temperature - chunk.max() / temperature)
            out[start : start + size] = e / e.sum()
        start += size
    return out


@pytest.fixture
def tree_file(tmp_path):
    path = tmp_path / "small.tree"
    path.write_text(TREE)
    return path


def test_tree_file_reading(tree_file) -> None:
    from cfgsurgeon.tree import read_tree

    assert darknet_tree_groups(TREE) == TREE_GROUPS
    assert list(read_tree(tree_file).group_sizes) == TREE_GROUPS
    lead = "a 5\nb 5\n"  # a first line with a parent: darknet's group 0 is empty
    (tree_file.parent / "lead.tree").write_text(lead)
    assert list(read_tree(tree_file.parent / "lead.tree").group_sizes) == darknet_tree_groups(lead) == [0, 2]


def test_region_softmax_tree(tree_file) -> None:
    """[region] tree=: logistic objectness, then the tree's grouped softmax over each box's classes
    (forward_region_layer: softmax_tree at entry 5 of every flattened box); it wins over softmax=1."""
    n, classes, h, w = 2, 10, 3, 4
    e = 5 + classes
    text = net(n * e, h, w) + f"[region]\nclasses={classes}\nnum={n}\nsoftmax=1\ntree={tree_file}\n"
    graph, model = build(text)
    x = image(graph)
    (ours,) = run(model, x, [0])
    v = x[0].astype(np.float64)
    flat = np.zeros(v.size)
    for k in range(n * e):
        for y in range(h):
            for xx in range(w):
                flat[(y * w + xx) * n * e + k] = v[k, y, xx]
    for i in range(h * w * n):
        flat[i * e + 4] = sigmoid(flat[i * e + 4])
        flat[i * e + 5 : i * e + e] = grouped_softmax(flat[i * e + 5 : i * e + e], TREE_GROUPS)
    close(ours.reshape(-1), flat)


def test_softmax_layer_tree(tree_file) -> None:
    """[softmax] tree=: the groups over the flat input, with the temperature."""
    graph, model = build(net(10, 1, 1) + f"[softmax]\ntemperature=0.5\ntree={tree_file}\n")
    x = image(graph)
    (ours,) = run(model, x, [0])
    close(ours.reshape(-1), grouped_softmax(x[0].reshape(-1), TREE_GROUPS, 0.5))


def test_tree_file_is_found_beside_the_cfg_folder(tmp_path, monkeypatch) -> None:
    """A relative tree= (darknet's data/9k.tree) is looked up in the working directory, the cfg's folder and
    its parent (darknet's cfg/ and data/ side by side); --tree (tree=) overrides it."""
    (tmp_path / "cfg").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "small.tree").write_text(TREE)
    cfg = tmp_path / "cfg" / "t.cfg"
    cfg.write_text(net(10, 1, 1) + "[softmax]\ntree=data/small.tree\n")
    monkeypatch.chdir(tmp_path / "cfg")  # not where data/ is
    from cfgsurgeon import load_cfg

    graph = load_cfg(cfg, warn=quiet)
    to_torch(graph)
    (tmp_path / "data" / "small.tree").unlink()
    with pytest.raises(CfgError, match=r"t\.cfg:7: layer 0 \[softmax\] tree=data/small.tree: file not found"):
        to_torch(graph)
    other = tmp_path / "other.tree"
    other.write_text(TREE)
    assert len(list(to_torch(graph, tree=other).parameters())) == 0
    graph.tree_file = str(other)
    to_torch(graph)


@pytest.mark.parametrize(
    ("tree", "message"),
    [("a\nb\nc\n", "has 3 nodes, the layer softmaxes 10 values"), (None, "file not found")],
    ids=["wrong-size", "missing"],
)
def test_tree_errors_are_one_line(tmp_path, tree: str | None, message: str) -> None:
    path = tmp_path / "t.tree"
    if tree is not None:
        path.write_text(tree)
    text = net(30, 1, 1) + f"[region]\nclasses=10\nnum=2\nsoftmax=1\n\ntree={path}\n"
    graph = loads_cfg(text, "y.cfg", warn=quiet)
    with pytest.raises(CfgError, match=message) as caught:
        to_torch(graph)
    assert str(caught.value).startswith("y.cfg:") and "\n" not in str(caught.value)
