"""IR → a standalone, readable PyTorch source file: the network written out as code, layer by layer.

The file depends only on torch and numpy, so it can be shipped without cfgsurgeon. It defines ``Darknet``
(one attribute per parameterised cfg layer, named ``l<index>_<what>``, and a ``forward`` with one line per
layer), ``load_darknet_weights(model, path)`` for darknet ``.weights`` files, and a ``__main__`` that runs a
``.npy`` input and saves the outputs as ``.npz``.

It computes exactly what :mod:`cfgsurgeon.emit.torch`'s module computes, by construction: each layer is
written from its lowering (:mod:`.lower`), the functions it calls are the text of :mod:`.torch_ops` (copied
from that file, only those a layer uses), and each module is built from the same :class:`Call` that the
in-memory model evaluates. Reading ``torch_ops.py`` as text keeps this module free of a torch import.
"""

from __future__ import annotations

import ast
import functools
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import layers as L
from ..files import atomic_output
from ..ir import Graph
from . import lower as lo
from .heads import head_layers

OPS_FILE = Path(__file__).with_name("torch_ops.py")


# -- module constructors, shared with the in-memory model ----------------------------------------------------
@dataclass(frozen=True)
class Name:
    """A name in :mod:`.torch_ops`' namespace (dotted: ``nn.Conv2d``), which the generated file also has."""

    text: str


@dataclass(frozen=True)
class Call:
    """``callee(*args, **kwargs)``: written into the file as text, evaluated by :mod:`.torch`."""

    callee: str
    args: tuple[Any, ...] = ()
    kwargs: tuple[tuple[str, Any], ...] = ()


def _pair(value: tuple[int, int]) -> int | tuple[int, int]:
    return value[0] if value[0] == value[1] else value


def module_call(op: lo.ModuleOp) -> Call:
    """The constructor of the module (or parameter) that holds ``op``'s tensors."""
    if isinstance(op, lo.Conv2d):
        kwargs: list[tuple[str, Any]] = [("stride", _pair(op.stride)), ("padding", _pair(op.padding))]
        kwargs += [("dilation", op.dilation)] if op.dilation != 1 else []
        kwargs += [("groups", op.groups)] if op.groups != 1 else []
        return Call("nn.Conv2d", (op.in_channels, op.filters, op.size), (*kwargs, ("bias", op.bias)))
    if isinstance(op, lo.BatchNorm):
        eps = Name("BN_EPS") if op.eps == lo.BN_EPS else op.eps
        return Call("nn.BatchNorm2d" if op.spatial else "nn.BatchNorm1d", (op.channels,), (("eps", eps),))
    if isinstance(op, lo.Linear):
        return Call("nn.Linear", (op.inputs, op.outputs), (("bias", op.bias),))
    if isinstance(op, lo.Blur):
        return Call("antialiasing_blur", (op.channels, op.kind), (("stride", op.stride),))
    if isinstance(op, lo.Parameter):
        fill = {0.0: Call("torch.zeros", op.shape), 1.0: Call("torch.ones", op.shape)}
        return Call("nn.Parameter", (fill.get(op.value, Call("torch.full", (op.shape, op.value))),))
    if isinstance(op, lo.TreeGroups):
        return Call("GroupedSoftmax", (op.group_sizes, op.temperature))
    raise TypeError(f"{type(op).__name__} holds no tensors")


def render(value: Any) -> str:
    """Python text of a value in a generated file."""
    if isinstance(value, Name):
        return value.text
    if isinstance(value, Call):
        parts = [render(arg) for arg in value.args] + [f"{key}={render(v)}" for key, v in value.kwargs]
        return f"{value.callee}({', '.join(parts)})"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, tuple):
        return f"({', '.join(map(render, value))}{',' if len(value) == 1 else ''})"
    return repr(value)


# -- the text of torch_ops -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class OpsSource:
    """``torch_ops.py`` read as text: its definitions (in file order) with the definitions each one uses,
    and its two tables as names (activation → its expression, op type name → function name)."""

    definitions: dict[str, str]
    uses: dict[str, set[str]]
    activations: dict[str, str]
    functions: dict[str, str]

    def needed(self, names: set[str]) -> list[str]:
        """The texts of ``names`` and of every definition they use, in file order."""
        wanted, pending = set(), list(names)
        while pending:
            name = pending.pop()
            if name not in wanted:
                wanted.add(name)
                pending.extend(self.uses[name])
        return [text for name, text in self.definitions.items() if name in wanted]


@functools.cache
def ops_source(path: Path = OPS_FILE) -> OpsSource:
    """The ops module at ``path`` (``torch_ops.py``; ``tf_ops.py`` has the same shape) read as text."""
    text = path.read_text(encoding="utf-8")
    module = ast.parse(text)
    definitions, nodes, tables = {}, {}, {}
    for node in module.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            definitions[node.name] = ast.get_source_segment(text, node) or ""
            nodes[node.name] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Dict):
            keys = [ast.unparse(k).split(".")[-1].strip("\"'") for k in node.value.keys if k is not None]
            tables[ast.unparse(node.target)] = dict(
                zip(keys, map(ast.unparse, node.value.values), strict=True)
            )
    uses = {
        name: {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in definitions} - {name}
        for name, node in nodes.items()
    }
    return OpsSource(definitions, uses, tables["ACTIVATIONS"], tables["FUNCTIONS"])


@dataclass
class LayerCode:
    """What one cfg layer contributes: ``__init__`` statements, the expression of its output (in terms of
    its inputs' names) and where each of its ``.weights`` tensors lives in the state_dict."""

    init: list[str]
    expr: str
    tensors: dict[str, str] = field(default_factory=dict)


class TorchSourceEmitter:
    """Writes each layer's lowering as code: modules in ``__init__``, one expression in ``forward``."""

    def __init__(self, graph: Graph, tree: str | Path | None = None):
        self.graph = graph
        self.tree = tree if tree is not None else graph.tree_file  # for tree= layers (see cfgsurgeon.tree)
        self.helpers: set[str] = set()

    # -- driving -------------------------------------------------------------------------------------------
    def emit(self) -> str:
        codes = [self.visit(layer) for layer in self.graph.layers]
        heads = [layer.index for layer in head_layers(self.graph)]
        parts = [self._model_class(codes, heads), self._weights_order(codes), _LOADER, _MAIN]
        body = "\n".join([*self._helper_sources(), *parts])
        return self._preamble(body) + "\n" + body

    def visit(self, layer: L.Layer) -> LayerCode:
        lowered = lo.lower(layer, self.tree)
        inputs = [self.name(node) for node in layer.inputs]
        expr = self._expression(layer, lowered, inputs, wrap=False)
        if len(f"        l{layer.index} = {expr}") > 110:
            expr = self._expression(layer, lowered, inputs, wrap=True)
        return LayerCode(self._init(layer, lowered), expr, self._tensors(layer, lowered))

    def name(self, node: L.Node) -> str:
        return "x" if isinstance(node, L.Net) else f"l{self.graph.index_of(node)}"

    def use(self, helper: str) -> str:
        self.helpers.add(helper)
        return helper

    # -- one layer -----------------------------------------------------------------------------------------
    def _attribute(self, layer: L.Layer, lowered: lo.Lowered, op: lo.ModuleOp) -> str:
        """``l<i>_<slot>``; a layer with share_index uses its owner's batch norm."""
        if isinstance(op, lo.Parameter):
            return f"l{layer.index}_{op.name}"
        owner = lowered.shares if lowered.shares is not None and op.slot == "bn" else layer.index
        return f"l{owner}_{op.slot}"

    def _init(self, layer: L.Layer, lowered: lo.Lowered) -> list[str]:
        lines = []
        for op in lowered.modules():
            if lowered.shares is not None and isinstance(op, lo.BatchNorm):
                continue  # share_index: darknet shares the weights and BN tensors, not the geometry
            call = module_call(op)
            if call.callee in ops_source().definitions:
                self.use(call.callee)
            lines += _statement(f"self.{self._attribute(layer, lowered, op)}", call)
            if lowered.shares is not None and isinstance(op, lo.Conv2d):
                mine, owner = f"self.l{layer.index}_conv", f"self.l{lowered.shares}_conv"
                lines.append(f"{mine}.weight = {owner}.weight")
                lines += [f"{mine}.bias = {owner}.bias"] if op.bias else []
        return lines

    def _expression(self, layer: L.Layer, lowered: lo.Lowered, inputs: list[str], wrap: bool) -> str:
        """The layer's output in terms of its inputs; ``wrap``: calls with arguments get one a line."""
        ops, join = lowered.ops, lowered.join
        mapped = len(ops) if join is None else join
        values = inputs
        for op in ops[:mapped]:
            values = [self._apply(layer, lowered, op, value, wrap) for value in values]
        expr = f"[{', '.join(values)}]" if join is not None else values[0]
        for op in ops[mapped:]:
            expr = self._apply(layer, lowered, op, expr, wrap)
        return expr

    def _apply(self, layer: L.Layer, lowered: lo.Lowered, op: lo.Op, x: str, wrap: bool) -> str:
        if isinstance(op, lo.MODULE_OPS):
            return f"self.{self._attribute(layer, lowered, op)}({x})"
        source = ops_source()
        if isinstance(op, lo.Act):
            call = source.activations[op.name]
            return f"{self.use(call) if call in source.definitions else call}({x})"
        arguments = [x]
        for key, value in lo.arguments(op):
            text = (
                f"self.{self._attribute(layer, lowered, value)}"
                if isinstance(value, lo.MODULE_OPS)
                else render(value)
            )
            arguments.append(f"{key}={text}")
        function = self.use(source.functions[type(op).__name__])
        if not wrap or len(arguments) == 1:
            return f"{function}({', '.join(arguments)})"
        return "\n".join(
            [f"{function}(", *(f"            {argument}," for argument in arguments), "        )"]
        )

    def _tensors(self, layer: L.Layer, lowered: lo.Lowered) -> dict[str, str]:
        """Where each ``.weights`` tensor of the layer lives in the generated model's state_dict."""
        modules = {op.slot: op for op in lowered.modules()}
        tensors = {}
        for name, path in lowered.params.items():
            slot, _, rest = path.partition(".")
            attribute = self._attribute(layer, lowered, modules[slot])
            tensors[name] = f"{attribute}.{rest}" if rest else attribute
        return tensors

    # -- the file's parts ----------------------------------------------------------------------------------
    def _preamble(self, body: str) -> str:
        """The docstring and the imports the ``body`` uses."""
        from ..version import __version__

        graph = self.graph
        c, h, w = graph.input_shape
        imports = ["import argparse", *(["import math"] if "math." in body else []), ""]
        imports += ["import numpy as np", "import torch"]
        imports += ["import torch.nn.functional as F"] if re.search(r"\bF\.", body) else []
        imports.append("from torch import Tensor, nn")
        return _PREAMBLE.format(
            source=Path(graph.source).name,
            layers=len(graph.layers),
            shape=f"{c}x{h}x{w}",
            version=__version__,
            imports="\n".join(imports),
            bn_eps=repr(lo.BN_EPS),
        )

    def _helper_sources(self) -> list[str]:
        """The used definitions of torch_ops and those they use, in that file's order."""
        return [f"\n{text}\n" for text in ops_source().needed(self.helpers)]

    def _model_class(self, codes: list[LayerCode], heads: list[int]) -> str:
        graph = self.graph
        lines = [
            "class Darknet(nn.Module):",
            f'    """The network of {Path(graph.source).name}, layer by layer.',
            "",
            f"    forward(x) takes (batch, {_csv(graph.input_shape)}) and returns the outputs of layers",
            f'    {_csv(tuple(heads))}."""',
            "",
            f"    input_shape = {graph.input_shape}",
            "",
            "    def __init__(self) -> None:",
            "        super().__init__()",
        ]
        lines += [f"        {stmt}" for code in codes for stmt in code.init]
        lines.append("        self.eval()  # inference semantics: batch norm uses its running statistics")
        lines += ["", "    def forward(self, x: Tensor) -> list[Tensor]:", *_INPUT_CHECK]
        for layer, code in zip(graph.layers, codes, strict=True):
            lines.append(f"        # {_describe(layer)}")
            lines += _assignment(f"l{layer.index}", code.expr)
        lines.append(f"        return [{', '.join(f'l{i}' for i in heads)}]")
        names = ", ".join(f'"l{i}_{_ident(graph.layers[i].kind)}"' for i in heads)
        return "\n".join(["", *lines, "", "", *_bracketed("OUTPUT_NAMES = [", names, "]", ""), ""])

    def _weights_order(self, codes: list[LayerCode]) -> str:
        lines = ["", "# The tensors of a darknet .weights file in file order, one row per layer with any."]
        lines.append("DARKNET_ORDER = [")
        for layer, code in zip(self.graph.layers, codes, strict=True):
            row = [code.tensors[name] for name, _ in layer.weight_layout()]
            if row:
                lines.append("    " + " ".join(f'"{name}",' for name in row))
        lines.append("]")
        return "\n".join(lines) + "\n"


# The emitter's entry point per layer type, one for each type the lowering knows (all write the lowering).
for _kind in lo.LOWER:
    setattr(TorchSourceEmitter, f"visit_{_kind.__name__}", TorchSourceEmitter.visit)


def _statement(target: str, call: Call) -> list[str]:
    """``target = call`` for ``__init__``; a long call gets one argument a line, a long tuple filled."""
    line = f"{target} = {render(call)}"
    if len(line) <= 110 - 8:
        return [line]
    lines = [f"{target} = {call.callee}("]
    for arg in call.args:
        if isinstance(arg, tuple) and len(render(arg)) > 90:
            filled = textwrap.wrap(", ".join(map(render, arg)) + ",", width=90)
            lines += ["    (", *(f"        {text}" for text in filled), "    ),"]
        else:
            lines.append(f"    {render(arg)},")
    lines += [f"    {key}={render(value)}," for key, value in call.kwargs]
    return [*lines, ")"]


def _assignment(name: str, expr: str) -> list[str]:
    """``name = expr`` in forward (``expr`` may span lines); a long ``concat([...])`` is filled over lines."""
    head, tail = "concat([", "])"
    if expr.startswith(head) and expr.endswith(tail):
        return _bracketed(f"        {name} = {head}", expr[len(head) : -len(tail)], tail, "        ")
    return f"        {name} = {expr}".split("\n")


def _bracketed(head: str, inner: str, tail: str, indent: str) -> list[str]:
    """``head + inner + tail`` if it fits in 110 columns, else ``inner`` filled on its own lines between."""
    if len(head + inner + tail) <= 110:
        return [head + inner + tail]
    filled = textwrap.wrap(
        inner + ",", width=110, initial_indent=indent + "    ", subsequent_indent=indent + "    "
    )
    return [head, *filled, indent + tail]


def _csv(values: tuple[int, ...]) -> str:
    return ", ".join(map(str, values))


def _ident(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).lower()


def _describe(layer: L.Layer) -> str:
    c, h, w = layer.in_shape if layer.inputs else (0, 0, 0)
    oc, oh, ow = layer.out_shape
    geometry = f" {layer.describe()}" if layer.describe() else ""
    return f"{layer.index} [{layer.header}]{geometry}: {c}x{h}x{w} -> {oc}x{oh}x{ow} (cfg line {layer.line})"


def torch_source(graph: Graph, tree: str | Path | None = None) -> str:
    """The standalone PyTorch source of ``graph`` (it loads weights at run time from a ``.weights`` file).
    ``tree``: the softmax-tree file for ``tree=`` layers, as in :func:`cfgsurgeon.emit.torch.to_torch`."""
    return TorchSourceEmitter(graph, tree).emit()


def write_torch_source(graph: Graph, path: str | Path, tree: str | Path | None = None) -> None:
    text = torch_source(graph, tree)  # before opening the output: an unsupported layer leaves no file behind
    with atomic_output(path, "w") as out:
        out.write(text)


_PREAMBLE = '''"""{source}: {layers} layers, input {shape} (CxHxW). Generated by cfgsurgeon {version}.

Standalone: needs only torch and numpy. Computes what darknet computes at inference time (batch norm with its
running statistics, darknet's pooling windows, raw [yolo] outputs before box decoding).

    python THIS_FILE.py MODEL.weights INPUT.npy OUTPUT.npz

or from Python:

    model = Darknet()
    load_darknet_weights(model, "MODEL.weights")
    outputs = model(x)  # x: float32 tensor (batch, C, H, W)
"""

from __future__ import annotations

{imports}

BN_EPS = {bn_eps}  # darknet's batch-norm epsilon
'''

_INPUT_CHECK = [
    "        if tuple(x.shape[1:]) != self.input_shape:",
    "            shape = (*x.shape[:1], *self.input_shape)",
    '            raise ValueError(f"input shape {tuple(x.shape)}; this network takes {shape}")',
]

_LOADER = '''
def load_darknet_weights(model: Darknet, path: str) -> tuple[int, int, int, int]:
    """Read a darknet .weights file into `model`; returns its header (major, minor, revision, seen).

    The header is three int32 and `seen` (uint64 from version 0.2 on, uint32 before); then every tensor of
    DARKNET_ORDER as float32, with nothing else: the file size must match exactly.
    """
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 16:
        raise ValueError(f"{path}: not a darknet .weights file ({len(data)} bytes)")
    major, minor, revision = (int(v) for v in np.frombuffer(data, dtype="<i4", count=3))
    wide = major * 10 + minor >= 2
    header = 20 if wide else 16
    seen = int(np.frombuffer(data, dtype="<u8" if wide else "<u4", count=1, offset=12)[0])
    transposed = major > 1000 or minor > 1000  # very old files store connected weights as [inputs][outputs]
    state = model.state_dict(keep_vars=True)
    needed = sum(state[name].numel() for name in DARKNET_ORDER)
    if len(data) != header + 4 * needed:
        raise ValueError(f"{path}: {len(data)} bytes, this network needs {header + 4 * needed}")
    floats = np.frombuffer(data, dtype="<f4", offset=header)
    offset = 0
    with torch.no_grad():
        for name in DARKNET_ORDER:
            target = state[name]
            values = torch.from_numpy(floats[offset : offset + target.numel()].copy())
            if transposed and name.endswith("_fc.weight"):
                values = values.view(target.shape[1], target.shape[0]).t()
            target.copy_(values.reshape(target.shape))
            offset += target.numel()
    return major, minor, revision, seen
'''

_MAIN = """
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the network on a .npy input and save its outputs.")
    parser.add_argument("weights", help="darknet .weights file for this network")
    parser.add_argument("input", help=".npy array, (C, H, W) or (batch, C, H, W), converted to float32")
    parser.add_argument("output", help=".npz to write, one array per output (named after its layer)")
    args = parser.parse_args(argv)
    model = Darknet().eval()
    load_darknet_weights(model, args.weights)
    x = torch.from_numpy(np.ascontiguousarray(np.load(args.input), dtype=np.float32))
    if x.dim() == 3:
        x = x[None]
    with torch.no_grad():
        outputs = model(x)
    np.savez(args.output, **{name: out.numpy() for name, out in zip(OUTPUT_NAMES, outputs, strict=True)})


if __name__ == "__main__":
    main()
"""
