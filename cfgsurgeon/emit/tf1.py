"""IR → a standalone, readable TF1-style Python file (``tf.compat.v1`` graph code) that freezes to a .pb.

The file depends only on tensorflow and numpy. It defines ``build_network()`` (a placeholder ``images`` and
one ``with tf1.variable_scope("l<index>_<type>"):`` block per cfg layer, whose variables and ops are named
after it), ``load_darknet_weights(session, path)`` for darknet ``.weights`` files, ``freeze(session)``,
``export(path)`` (those three in a new graph) and a ``__main__`` that writes the frozen graph
(``python FILE.py MODEL.weights MODEL.pb``), optionally runs it on a ``.npy`` input and saves the outputs as
``.npz``.

Layout: the input placeholder is NCHW (float32 ``N×C×H×W``, RGB in [0, 1], as for every other runtime) and is
transposed once to NHWC, the layout TensorFlow's CPU kernels need; each output (named like
:func:`cfgsurgeon.emit.heads.output_names`, e.g. ``yolo_16``) is transposed back, so it equals the torch
backend's head tensor. Darknet's OIHW filters become HWIO when loaded.

It computes what :mod:`cfgsurgeon.emit.torch` computes, by construction: each layer is written from its
lowering (:mod:`.lower`), one statement per op, and the functions those statements call are the text of
:mod:`.tf_ops` (copied from that file, only those a layer uses), which the Keras model runs too. The
variables of each layer are those its lowering binds to ``.weights`` tensors (``Lowered.params``), named
after the darknet tensors. Reading ``tf_ops.py`` as text keeps this module free of a TensorFlow import.
"""

from __future__ import annotations

import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path

from .. import layers as L
from ..errors import UsageError
from ..files import atomic_output
from ..ir import Graph
from . import lower as lo
from .heads import INPUT_NAME, head_layers, output_names
from .torch_source import OpsSource, _describe, _ident, ops_source, render

__all__ = ["TF1Emitter", "output_names", "tf1_runner", "tf1_source", "write_tf1"]

OPS_FILE = Path(__file__).with_name("tf_ops.py")
VARIABLE_OPS = (lo.Conv2d, lo.BatchNorm, lo.Linear)  # module ops whose tensors are variables of the layer
Arguments = list[str | list[str]]  # arguments as text; a list: a Python list (wrapped one item a line)


def tf_ops_source() -> OpsSource:
    return ops_source(OPS_FILE)


@dataclass
class LayerCode:
    """What one cfg layer contributes: statements (inside its variable scope) that assign ``l<index>``, and
    for each of its ``.weights`` tensors the variable holding it and how the file's layout maps onto it."""

    lines: list[str]
    tensors: dict[str, tuple[str, str]] = field(default_factory=dict)  # darknet name → (variable, layout)


class TF1Emitter:
    """Writes each layer's lowering as code: its variables, then one statement per op."""

    def __init__(self, graph: Graph, tree: str | Path | None = None):
        self.graph = graph
        self.tree = tree if tree is not None else graph.tree_file  # for tree= layers (see cfgsurgeon.tree)
        self.helpers: set[str] = set()

    # -- driving -------------------------------------------------------------------------------------------
    def emit(self) -> str:
        codes = [self.visit(layer) for layer in self.graph.layers]
        parts = [self._builder(codes), self._weights_order(codes), _LOADER, _MAIN]
        body = "\n".join([*self._helper_sources(), _COMMON, *parts])
        return self._preamble() + "\n" + body

    def visit(self, layer: L.Layer) -> LayerCode:
        lowered = lo.lower(layer, self.tree)
        lines, tensors = self._declarations(layer, lowered)
        inputs = [self.name(node) for node in layer.inputs]
        return LayerCode(lines + self._statements(layer, lowered, inputs), tensors)

    def name(self, node: L.Node) -> str:
        return "x" if isinstance(node, L.Net) else f"l{self.graph.index_of(node)}"

    def use(self, helper: str) -> str:
        self.helpers.add(helper)
        return helper

    def activation(self, name: str, expr: str) -> str:
        """``expr`` through darknet's activation ``name``."""
        if name == "linear":
            return expr
        source = tf_ops_source()
        call = source.activations[name]
        return f"{self.use(call) if call in source.definitions else call}({expr})"

    # -- one layer -----------------------------------------------------------------------------------------
    def _slot(self, layer: L.Layer, lowered: lo.Lowered, op: lo.ModuleOp) -> str:
        """The Python name of an op's tensors: ``l<i>_<slot>``; with share_index the owner's."""
        if isinstance(op, lo.Parameter):
            return f"l{layer.index}_{op.name}"
        owner = lowered.shares if lowered.shares is not None else layer.index
        return f"l{owner}_{op.slot}"

    def _declarations(self, layer: L.Layer, lowered: lo.Lowered) -> tuple[list[str], dict]:
        """The layer's variables, one dict per slot (keyed like ``Lowered.params``), and softmax trees."""
        if lowered.shares is not None:
            return [f"# share_index: layer {lowered.shares}'s tensors, this layer's geometry"], {}
        modules = {op.slot: op for op in lowered.modules()}
        trees = [op for op in modules.values() if isinstance(op, lo.TreeGroups)]
        lines = [line for op in trees for line in _tree(layer, op)]
        scope, stored = f"l{layer.index}_{_ident(layer.kind)}", dict(layer.weight_layout())
        entries: dict[str, list[str]] = {}
        tensors = {}
        for name, path in lowered.params.items():
            slot, _, key = path.partition(".")
            shape, layout = _variable_shape(modules[slot], key, stored[name])
            call = f'variable("{name}", {shape})'
            entries.setdefault(slot, []).append(f'"{key}": {call}' if key else call)
            tensors[name] = (f"{scope}/{name}", layout)
        for slot, values in entries.items():
            target = self._slot(layer, lowered, modules[slot])
            if isinstance(modules[slot], lo.Parameter):
                lines.append(f"{target} = {values[0]}")
            elif len(f"        {target} = {{{', '.join(values)}}}") <= 110:
                lines.append(f"{target} = {{{', '.join(values)}}}")
            else:
                lines += [f"{target} = {{", *(f"    {value}," for value in values), "}"]
        return lines, tensors

    def _statements(self, layer: L.Layer, lowered: lo.Lowered, inputs: list[str]) -> list[str]:
        """``l<i> = …`` once per op; the ops before the joining one are applied to each input inside it."""
        out, ops, join = f"l{layer.index}", lowered.ops, lowered.join
        if not ops:
            return [f"{out} = {inputs[0]}"]
        lines, value = [], inputs[0]
        if join is not None:
            values = inputs
            for op in ops[:join]:
                values = [_inline(*self._call(layer, lowered, op, value)) for value in values]
            lines += _assignment(out, *self._call(layer, lowered, ops[join], values))
            ops, value = ops[join + 1 :], out
        for op in ops:
            lines += _assignment(out, *self._call(layer, lowered, op, value))
            value = out
        return lines

    def _call(
        self, layer: L.Layer, lowered: lo.Lowered, op: lo.Op, x: str | list[str]
    ) -> tuple[str, Arguments]:
        """The tf_ops function of ``op`` and its arguments: the value, the op's tensors, its fields."""
        if isinstance(op, lo.Act):
            return self.activation(op.name, "").removesuffix("()"), [x]
        arguments: Arguments = [x]
        if isinstance(op, VARIABLE_OPS):
            arguments.append(self._slot(layer, lowered, op))
        arguments += [f"{key}={self._field(layer, lowered, value)}" for key, value in lo.arguments(op)]
        return self.use(tf_ops_source().functions[type(op).__name__]), arguments

    def _field(self, layer: L.Layer, lowered: lo.Lowered, value: object) -> str:
        """A field's value as text; an op with variables in a field (xnor's convolution): its fields and
        ``tensors``."""
        if not isinstance(value, lo.MODULE_OPS):
            return render(value)
        slot = self._slot(layer, lowered, value)
        if not isinstance(value, VARIABLE_OPS):
            return slot
        fields = "".join(f"{key}={render(v)}, " for key, v in lo.arguments(value))
        return f"dict({fields}tensors={slot})"

    # -- the file's parts ----------------------------------------------------------------------------------
    def _preamble(self) -> str:
        from ..version import __version__

        graph = self.graph
        c, h, w = graph.input_shape
        names = ", ".join(f'"{name}"' for name in output_names(graph))
        return _PREAMBLE.format(
            source=Path(graph.source).name,
            layers=len(graph.layers),
            shape=f"{c}x{h}x{w}",
            version=__version__,
            input_name=INPUT_NAME,
            input_shape=graph.input_shape,
            outputs="\n".join(_wrapped("OUTPUT_NAMES = [", names, "]", indent="")),
        )

    def _helper_sources(self) -> list[str]:
        """The used definitions of tf_ops and those they use, in that file's order."""
        return [f"\n{text}\n" for text in tf_ops_source().needed(self.helpers)]

    def _builder(self, codes: list[LayerCode]) -> str:
        c, h, w = self.graph.input_shape
        lines = [
            "",
            "def build_network():",
            '    """Create the network in the default graph; returns the input placeholder and the outputs',
            "    (NCHW, named OUTPUT_NAMES). Layer i is the block `l<i>_<type>`: its variables and ops",
            '    carry that name, and its output (NHWC) is the Python variable l<i>."""',
            f"    images = tf1.placeholder(tf.float32, [None, {c}, {h}, {w}], name=INPUT_NAME)",
            "    x = tf.transpose(images, [0, 2, 3, 1])  # NCHW -> NHWC: every layer below computes in NHWC",
        ]
        for layer, code in zip(self.graph.layers, codes, strict=True):
            lines += ["", f"    # {_describe(layer)}"]
            lines.append(f'    with tf1.variable_scope("l{layer.index}_{_ident(layer.kind)}"):')
            lines += [f"        {line}" for line in code.lines]
        lines += ["", "    # the outputs, back in NCHW: the torch backend's head tensors", "    outputs = ["]
        for layer, name in zip(head_layers(self.graph), output_names(self.graph), strict=True):
            lines.append(f'        tf.transpose(l{layer.index}, [0, 3, 1, 2], name="{name}"),')
        lines += ["    ]", "    return images, outputs", ""]
        return "\n".join(lines)

    def _weights_order(self, codes: list[LayerCode]) -> str:
        lines = [
            "",
            "# The tensors of a darknet .weights file in file order: (variable, shape in the file, layout);",
            '# layout "oihw": convolution filters (TF wants HWIO), "fc": connected weights (TF: in x out).',
            "DARKNET_ORDER = [",
        ]
        for layer, code in zip(self.graph.layers, codes, strict=True):
            for name, shape in layer.weight_layout():
                variable, layout = code.tensors[name]
                lines.append(f'    ("{variable}", {shape}, "{layout}"),')
        lines.append("]")
        return "\n".join(lines) + "\n"


# The emitter's entry point per layer type, one for each type the lowering knows (all write the lowering).
for _kind in lo.LOWER:
    setattr(TF1Emitter, f"visit_{_kind.__name__}", TF1Emitter.visit)


def _variable_shape(op: lo.ModuleOp, key: str, stored: tuple[int, ...]) -> tuple[list[int], str]:
    """A tensor's variable shape and how the ``.weights`` layout maps onto it: convolution filters HWIO,
    connected weights (inputs, outputs), the rest as stored."""
    if isinstance(op, lo.Conv2d) and key == "weight":
        return [op.size, op.size, op.in_channels // op.groups, op.filters], "oihw"
    if isinstance(op, lo.Linear) and key == "weight":
        return [op.inputs, op.outputs], "fc"
    return list(op.shape if isinstance(op, lo.Parameter) else stored), "vector"


def _tree(layer: L.Layer, op: lo.TreeGroups) -> list[str]:
    """``l<i>_tree``: the softmax tree's group sizes written into the file (no tree file needed to run)."""
    sizes = ", ".join(map(str, op.group_sizes))
    head = f"l{layer.index}_tree = dict(temperature={op.temperature!r}, group_sizes=["
    comment = "# the softmax tree: the sizes of its runs of siblings, in file order"
    return [comment, *_wrapped(head, sizes, "])")]


def _inline(function: str, arguments: Arguments) -> str:
    return f"{function}({', '.join(_text(argument) for argument in arguments)})"


def _text(argument: str | list[str]) -> str:
    return argument if isinstance(argument, str) else f"[{', '.join(argument)}]"


def _assignment(target: str, function: str, arguments: Arguments) -> list[str]:
    """``target = function(arguments)``; past 110 columns the arguments filled on lines of their own (a long
    list one item a line)."""
    line = f"{target} = {_inline(function, arguments)}"
    if len(line) <= 110 - 8:
        return [line]
    lines, row = [f"{target} = {function}("], ""
    for argument in arguments:
        if isinstance(argument, list) and len(_text(argument)) > 90:
            lines += [row.rstrip()] if row else []
            lines += ["    [", *(f"        {item}," for item in argument), "    ],"]
            row = ""
        elif len(f"{row}{_text(argument)},") > 110 - 8 - 4:
            lines.append(row.rstrip())
            row = f"{_text(argument)}, "
        else:
            row += f"{_text(argument)}, "
    lines += [row.rstrip()] if row else []
    return [lines[0], *(line if line.startswith("    ") else f"    {line}" for line in lines[1:]), ")"]


def _wrapped(head: str, inner: str, tail: str, indent: str = "        ") -> list[str]:
    """``head + inner + tail`` if it fits in 110 columns (after ``indent``), else ``inner`` filled on its own
    lines between (relative to the block's indentation)."""
    if len(indent + head + inner + tail) <= 110:
        return [head + inner + tail]
    filled = textwrap.wrap(inner + ",", width=110 - len(indent) - 4, break_long_words=False)
    return [head, *(f"    {line}" for line in filled), tail.lstrip()]


def tf1_source(graph: Graph, tree: str | Path | None = None) -> str:
    """The standalone TF1-style source of ``graph`` (it reads a ``.weights`` file at run time). ``tree``: the
    softmax-tree file for ``tree=`` layers, as in :func:`cfgsurgeon.emit.torch.to_torch`."""
    return TF1Emitter(graph, tree).emit()


def write_tf1(graph: Graph, path: str | Path, tree: str | Path | None = None) -> None:
    text = tf1_source(graph, tree)  # before opening the output: an unsupported layer leaves no file behind
    with atomic_output(path, "w") as out:
        out.write(text)


# -- running: the `tf1` backend of cfgsurgeon.runtimes ------------------------------------------------------


def load_module(source: str, name: str = "cfgsurgeon_tf1_generated") -> types.ModuleType:
    """Execute generated source as a module (in this process)."""
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def frozen_graph_def(graph: Graph):
    """Generate the file for ``graph`` (weights loaded) and run its ``export`` in this process on the
    graph's tensors: the frozen GraphDef that its ``main`` would write to a ``.pb``."""
    import tensorflow as tf

    from ..weights import WeightsHeader, stored_floats

    module = load_module(tf1_source(graph))
    floats = stored_floats(graph, WeightsHeader())  # the default header: connected weights not transposed
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # TF1 deprecation notes
    try:
        return module.export(floats)
    finally:
        logger.setLevel(level)


def tf1_runner(graph: Graph, model: Path | None = None, threads: int | None = None):
    """A runner (float32 N×C×H×W batch → head outputs) over the frozen TF1 graph: ``model`` (a ``.pb`` made
    by running the exported file) or, without it, the graph exported from ``graph`` in memory."""
    import numpy as np
    import tensorflow as tf

    tf1 = tf.compat.v1
    if model is None:
        graph_def = frozen_graph_def(graph)
    else:
        graph_def = tf1.GraphDef()
        try:
            graph_def.ParseFromString(model.read_bytes())
        except Exception:  # protobuf's DecodeError
            raise UsageError(f"{model}: not a frozen TensorFlow graph (.pb)") from None
    names = output_names(graph)
    nodes = {node.name: node for node in graph_def.node}
    missing = [name for name in [INPUT_NAME, *names] if name not in nodes]
    if missing:
        raise UsageError(
            f"{model or 'the exported model'} has no node {', '.join(missing)}; the cfg's heads are "
            f"{names} (input '{INPUT_NAME}'): was it exported from this cfg?"
        )
    dims = [d.size for d in nodes[INPUT_NAME].attr["shape"].shape.dim]
    if dims[1:] != list(graph.input_shape):
        raise UsageError(
            f"{model}: input '{INPUT_NAME}' is {dims[1:]} (C, H, W), the cfg's is {list(graph.input_shape)}"
        )
    tf_graph = tf.Graph()
    with tf_graph.as_default():
        tf1.import_graph_def(graph_def, name="")
    del graph_def, nodes  # the weights: only the graph's copy is needed now
    config = tf1.ConfigProto()
    if threads:
        config.intra_op_parallelism_threads = threads
        config.inter_op_parallelism_threads = 1
    session = tf1.Session(graph=tf_graph, config=config)
    fetches = [f"{name}:0" for name in names]

    def run(batch: np.ndarray) -> list[np.ndarray]:
        return session.run(fetches, {f"{INPUT_NAME}:0": np.ascontiguousarray(batch, dtype=np.float32)})

    return run


_PREAMBLE = '''"""{source}: {layers} layers, input {shape} (CxHxW). Generated by cfgsurgeon {version}.

Standalone TF1-style graph code (tf.compat.v1): needs only tensorflow and numpy. Computes what darknet
computes at inference time (batch norm with its running statistics, darknet's pooling windows, raw [yolo]
outputs before box decoding). The input placeholder "images" is float32 (batch, C, H, W), RGB in [0, 1]; the
layers compute in NHWC; the outputs OUTPUT_NAMES are transposed back to (batch, C, H, W).

    python THIS_FILE.py MODEL.weights MODEL.pb [INPUT.npy OUTPUT.npz]

writes the frozen graph MODEL.pb (and runs it on INPUT.npy, saving the outputs to OUTPUT.npz), or in Python:

    graph_def = export("MODEL.weights")  # build_network(), load_darknet_weights(), freeze() in a new graph
    outputs = run_frozen(graph_def, x)  # x: float32 (batch, C, H, W)
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before tensorflow is imported: no C++ info lines

import numpy as np
import tensorflow as tf

tf1 = tf.compat.v1

INPUT_NAME = "{input_name}"
INPUT_SHAPE = {input_shape}  # (C, H, W)
{outputs}
'''

_COMMON = '''
def variable(name, shape):
    """A float32 variable of the current layer's scope (zeros until load_darknet_weights fills it)."""
    return tf1.get_variable(name, shape, tf.float32, tf1.zeros_initializer())
'''

_LOADER = '''
def load_darknet_weights(session, path):
    """Read a darknet .weights file into the variables of the session's graph (made by build_network);
    returns the file's header (major, minor, revision, seen).

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
    needed = sum(int(np.prod(shape)) for _, shape, _ in DARKNET_ORDER)
    if len(data) != header + 4 * needed:
        raise ValueError(f"{path}: {len(data)} bytes, this network needs {header + 4 * needed}")
    assign_darknet_weights(session, np.frombuffer(data, dtype="<f4", offset=header), transposed)
    return major, minor, revision, seen


def assign_darknet_weights(session, floats, transposed=False):
    """Set the variables from the float32 tensors of a .weights file (all of DARKNET_ORDER, in order)."""
    variables = {v.op.name: v for v in session.graph.get_collection(tf1.GraphKeys.GLOBAL_VARIABLES)}
    feeds, offset = {}, 0
    for name, shape, layout in DARKNET_ORDER:
        count = int(np.prod(shape))
        values = floats[offset : offset + count]
        offset += count
        if layout == "oihw":  # (out, in/g, kh, kw) -> (kh, kw, in/g, out); depthwise: (kh, kw, in, k)
            values = values.reshape(shape).transpose(2, 3, 1, 0)
        elif layout == "fc":  # (out, in) -> (in, out)
            values = values.reshape(shape[::-1]) if transposed else values.reshape(shape).T
        target = variables[name]
        feeds[target.initial_value] = values.reshape(target.shape)
    if offset != len(floats):
        raise ValueError(f"{len(floats)} floats given, this network needs {offset}")
    session.run([variables[name].initializer for name, _, _ in DARKNET_ORDER], feeds)


def freeze(session):
    """The session's graph with its variables turned into constants, cut down to the outputs."""
    graph_def = session.graph.as_graph_def()
    return tf1.graph_util.convert_variables_to_constants(session, graph_def, OUTPUT_NAMES)


def export(weights):
    """Build the network in a new graph, load the weights (a .weights file, or the float32 tensors that
    follow its header) and return the frozen GraphDef."""
    with tf.Graph().as_default():
        build_network()
        with tf1.Session() as session:
            if isinstance(weights, np.ndarray):
                assign_darknet_weights(session, weights)
            else:
                load_darknet_weights(session, weights)
            return freeze(session)


def run_frozen(graph_def, x):
    """Run a frozen graph on x (float32, (C, H, W) or (batch, C, H, W)); returns the outputs (numpy)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    x = x[None] if x.ndim == 3 else x
    with tf.Graph().as_default() as graph:
        tf1.import_graph_def(graph_def, name="")
        with tf1.Session(graph=graph) as session:
            return session.run([f"{name}:0" for name in OUTPUT_NAMES], {f"{INPUT_NAME}:0": x})
'''

_MAIN = """
def main(argv=None):
    parser = argparse.ArgumentParser(description="Freeze the network with darknet weights into a .pb file.")
    parser.add_argument("weights", help="darknet .weights file for this network")
    parser.add_argument("pb", help="frozen graph to write (.pb)")
    parser.add_argument("input", nargs="?", help="optional .npy input, (C, H, W) or (batch, C, H, W)")
    parser.add_argument("output", nargs="?", help=".npz to write the outputs of INPUT to, one per output")
    args = parser.parse_args(argv)
    if (args.input is None) != (args.output is None):
        parser.error("give both INPUT.npy and OUTPUT.npz, or neither")
    graph_def = export(args.weights)
    partial = args.pb + ".partial"
    with open(partial, "wb") as f:
        f.write(graph_def.SerializeToString())
    os.replace(partial, args.pb)
    if args.input is not None:
        outputs = run_frozen(graph_def, np.load(args.input))
        np.savez(args.output, **dict(zip(OUTPUT_NAMES, outputs)))


if __name__ == "__main__":
    tf.get_logger().setLevel("ERROR")  # TF1 deprecation notes
    main()
"""
