"""IR (+ weights) → ``torch.nn.Module`` computing exactly what darknet computes (CPU inference semantics).

Each IR layer becomes one :class:`Block`: the modules its lowering (:mod:`.lower`) declares, under the names
of their slots (``conv``, ``bn``, ``fc``, ``blur``, ``weight``, ``tree``: the state_dict keys checkpoints
use), and its ops, run by the functions of :mod:`.torch_ops` (which the standalone source copies).
:class:`DarknetModel` wires the blocks along the graph's explicit edges and frees each intermediate output
after its last reader. Layers with a softmax tree (``tree=``) need the tree file: :mod:`cfgsurgeon.tree`
says where it is looked for.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import layers as L
from ..errors import CfgError
from ..ir import Graph
from . import lower as lo
from . import torch_ops
from .darknet_rules import binary_conv_activation  # noqa: F401  (re-exported: tests compare it with darknet)
from .heads import head_layers
from .torch_source import Call, Name, module_call

BN_EPS = lo.BN_EPS
ACTIVATIONS = torch_ops.ACTIVATIONS


def _evaluate(value: Any) -> Any:
    """A :class:`Call` (as the standalone file writes it) made real in :mod:`.torch_ops`' namespace."""
    if isinstance(value, Name):
        found: Any = torch_ops
        for part in value.text.split("."):
            found = getattr(found, part)
        return found
    if isinstance(value, Call):
        args = [_evaluate(arg) for arg in value.args]
        return _evaluate(Name(value.callee))(*args, **{key: _evaluate(v) for key, v in value.kwargs})
    return value


class Block(nn.Module):
    """One cfg layer: its lowering's modules, then its ops in order (the ops before the joining op run on
    each input). Steps name their modules by slot, looked up when they run: share_index rebinds modules, and
    a deep copy of the model must run its own."""

    def __init__(self, lowered: lo.Lowered):
        super().__init__()
        for op in lowered.modules():
            setattr(self, op.slot, _evaluate(module_call(op)))
        self.ops = lowered.ops
        self.join = lowered.join
        self.steps = [_step(op) for op in lowered.ops]

    def forward(self, *xs: Tensor) -> Tensor:
        values: list[Tensor] = list(xs)
        mapped = len(self.steps) if self.join is None else self.join
        for step in self.steps[:mapped]:
            values = [self._run(step, x) for x in values]
        y: Any = values if self.join is not None else values[0]
        for step in self.steps[mapped:]:
            y = self._run(step, y)
        return y

    def _run(self, step: Step, x: Any) -> Tensor:
        function, constants, modules = step
        if isinstance(function, str):  # a module op: the module itself
            return getattr(self, function)(x)
        return function(x, **constants, **{name: getattr(self, slot) for name, slot in modules.items()})

    def extra_repr(self) -> str:
        return ", ".join(type(op).__name__ for op in self.ops)


# How a Block runs an op: a torch_ops function, its constant arguments, and its module arguments by slot
# (or, for an op that is a module, that module's slot).
Step = tuple[Callable[..., Tensor] | str, dict[str, Any], dict[str, str]]


def _step(op: lo.Op) -> Step:
    if isinstance(op, lo.MODULE_OPS):
        return op.slot, {}, {}
    if isinstance(op, lo.Act):
        return ACTIVATIONS[op.name], {}, {}
    fields = lo.arguments(op)
    modules = {name: value.slot for name, value in fields if isinstance(value, lo.MODULE_OPS)}
    return torch_ops.FUNCTIONS[type(op)], {k: v for k, v in fields if k not in modules}, modules


# Kept for callers that look a layer type up: every type the lowering knows builds a Block.
BUILDERS: dict[type[L.Layer], Callable[..., nn.Module]] = {
    kind: lambda layer, tree=None: Block(lo.lower(layer, tree)) for kind in lo.LOWER
}


class DarknetModel(nn.Module):
    """The whole network. ``forward(x)`` returns the outputs of the detection heads (or of the last layer
    when there is none); ``forward(x, keep=[i, …])`` returns those layers' outputs instead."""

    def __init__(self, graph: Graph, tree: str | Path | None = None):
        super().__init__()
        self.graph = graph
        tree = tree if tree is not None else graph.tree_file
        lowered = [lo.lower(layer, tree) for layer in graph.layers]
        self.blocks = nn.ModuleList(Block(low) for low in lowered)
        self.sources = [[graph.index_of(node) for node in layer.inputs] for layer in graph.layers]
        self.shares = {i: low.shares for i, low in enumerate(lowered) if low.shares is not None}
        for i, j in self.shares.items():  # share_index: the same tensors, each layer its own geometry
            self.blocks[i].conv.weight = self.blocks[j].conv.weight
            self.blocks[i].conv.bias = self.blocks[j].conv.bias
            if hasattr(self.blocks[j], "bn"):
                self.blocks[i].bn = self.blocks[j].bn
        self.heads = [layer.index for layer in head_layers(graph)] if graph.layers else []
        if graph.layers and any(layer.weights is not None for layer in graph.layers):
            load_darknet_weights(self, graph)
        self.eval()

    def forward(self, x: Tensor, keep: list[int] | None = None) -> list[Tensor]:
        wanted = list(self.heads if keep is None else keep)
        last_use = _last_use(self.sources, wanted)
        outputs: dict[int, Tensor] = {-1: x}
        for i, (block, sources) in enumerate(zip(self.blocks, self.sources, strict=True)):
            outputs[i] = block(*(outputs[j] for j in sources))
            for j in set(sources):  # a route may list the same layer twice
                if last_use.get(j) == i:
                    del outputs[j]
        return [outputs[i] for i in wanted]


def _last_use(sources: list[list[int]], wanted: list[int]) -> dict[int, int]:
    last: dict[int, int] = {}
    for i, srcs in enumerate(sources):
        for j in srcs:
            last[j] = i
    for j in wanted:
        last[j] = len(sources)  # never freed
    return last


# -- weights between the IR and the module ---------------------------------------------------------------


def tensor_paths(layer: L.Layer) -> dict[str, str]:
    """Where each of the layer's ``.weights`` tensors lives in its block."""
    return lo.lower(layer).params if layer.weight_layout() else {}


def load_darknet_weights(model: DarknetModel, graph: Graph) -> None:
    """Copy ``layer.weights`` (numpy) into the module's parameters and buffers."""
    state = model.state_dict()
    with torch.no_grad():
        for i, layer in enumerate(graph.layers):
            if not layer.weight_layout():
                continue
            if layer.weights is None:
                raise CfgError(f"layer {i} [{layer.header}] has no weights loaded", layer.where())
            for name, path in tensor_paths(layer).items():
                target = state[f"blocks.{i}.{path}"]
                source = torch.tensor(np.asarray(layer.weights[name]))  # a copy: the arrays may be read-only
                target.copy_(source.reshape(target.shape))


def store_darknet_weights(model: DarknetModel, graph: Graph) -> None:
    """Copy the module's parameters back into ``layer.weights`` (float32 numpy, shapes of the cfg)."""
    state = model.state_dict()
    for i, layer in enumerate(graph.layers):
        layout = dict(layer.weight_layout())
        if not layout:
            continue
        paths = tensor_paths(layer)
        layer.weights = {
            name: state[f"blocks.{i}.{paths[name]}"].detach().cpu().numpy().astype(np.float32).reshape(shape)
            for name, shape in layout.items()
        }


def to_torch(graph: Graph, tree: str | Path | None = None) -> DarknetModel:
    """Build the module for ``graph`` (with its weights, if loaded). ``tree``: the softmax-tree file for
    layers with ``tree=`` (default ``graph.tree_file``, else looked up as :mod:`cfgsurgeon.tree` says)."""
    return DarknetModel(graph, tree)


# -- inference ---------------------------------------------------------------------------------------------


def inference_model(graph: Graph, tree: str | Path | None = None) -> DarknetModel:
    """The module for running ``graph`` (weights loaded), not for training: batch norms folded into their
    convolutions (:func:`fold_batch_norms`), weights in channels-last layout, and where torch has oneDNN
    each convolution a :class:`PackedConv` with its activation fused. Feed it :func:`channels_last` input.
    Each step measured against OpenCV's DNN in ``benchmarks/bench_infer.py``."""
    model = fold_batch_norms(to_torch(graph, tree))
    model.requires_grad_(False)
    model = model.to(memory_format=torch.channels_last)
    if torch.backends.mkldnn.is_available():
        for block, layer in zip(model.blocks, graph.layers, strict=True):
            _pack_conv(block, layer.in_shape)
    return model


def channels_last(x: Tensor) -> Tensor:
    """An N×C×H×W batch in the layout :func:`inference_model` runs fastest on (same values and shape)."""
    return x.contiguous(memory_format=torch.channels_last)


def fold_batch_norms(model: DarknetModel) -> DarknetModel:
    """Fold every batch norm that directly follows a convolution into it, in place, and return ``model``:
    ``w·s`` and ``β − mean·s`` (plus the convolution's own bias·s) with ``s = γ/√(var + ε)``, computed in
    float64 and rounded once. Equal to the unfolded forward up to float32 rounding; for inference only,
    since training, sparsity and pruning read γ and the running statistics. New tensors are assigned, never
    written in place, so layers sharing weights (``share_index``) each fold the originals alike."""
    for block in model.blocks:
        _fold_block(block)
    return model


def _fold_block(block: Block) -> None:
    ops = block.ops
    at = next((k for k in range(len(ops) - 1) if isinstance(ops[k], lo.Conv2d)), None)
    if at is None or block.join is not None or not isinstance(ops[at + 1], lo.BatchNorm):
        return
    if not ops[at + 1].spatial:
        return
    conv, bn = block.conv, block.bn
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        bias = bn.bias.double() - bn.running_mean.double() * scale
        if conv.bias is not None:
            bias += conv.bias.double() * scale
        weight = conv.weight.double() * scale.view(-1, *[1] * (conv.weight.dim() - 1))
    conv.weight = nn.Parameter(weight.float(), requires_grad=False)
    conv.bias = nn.Parameter(bias.float(), requires_grad=False)
    del block.bn
    _drop_step(block, at + 1)


def _drop_step(block: Block, k: int) -> None:
    block.ops = block.ops[:k] + block.ops[k + 1 :]
    block.steps = block.steps[:k] + block.steps[k + 1 :]


# darknet activations oneDNN computes inside the convolution (its post-op name and arguments): the same
# functions, so the fused output equals conv-then-activation up to float32 rounding.
FUSED_ACTIVATIONS: dict[str, tuple[str, list[float]]] = {
    "leaky": ("leaky_relu", [0.1]),
    "relu": ("relu", []),
    "logistic": ("sigmoid", []),
    "tanh": ("tanh", []),
    "swish": ("swish", []),
}


class PackedConv(nn.Module):
    """A 2-D convolution for inference through oneDNN, its weights reordered once for the layer's input
    shape (unpacked, oneDNN reorders them on every call) and an activation of :data:`FUSED_ACTIVATIONS`
    applied in the same pass. Measured on yolov4-tiny at 416, one thread: 0.90× the CPU time of the plain
    convolutions followed by the activations."""

    def __init__(self, conv: nn.Conv2d, in_shape: tuple[int, ...], activation: str = "none"):
        super().__init__()
        geometry = (list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups)
        weight = conv.weight.detach().contiguous().to_mkldnn()
        self.weight = torch._C._nn.mkldnn_reorder_conv2d_weight(weight, *geometry, [1, *in_shape])
        self.bias = None if conv.bias is None else conv.bias.detach().contiguous()
        post_op, scalars = FUSED_ACTIVATIONS.get(activation, ("none", []))
        self.arguments = (*geometry, post_op, scalars, "")

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, *self.arguments)


def _pack_conv(block: Block, in_shape: tuple[int, ...]) -> None:
    ops = block.ops
    at = next((k for k, op in enumerate(ops) if isinstance(op, lo.Conv2d)), None)
    if at is None or block.join is not None:
        return
    after = ops[at + 1] if at + 1 < len(ops) else None
    fused = isinstance(after, lo.Act) and after.name in FUSED_ACTIVATIONS
    block.conv = PackedConv(block.conv, in_shape, after.name if fused else "none")
    if fused:
        _drop_step(block, at + 1)
    elif isinstance(after, lo.Act) and after.name == "mish":  # the convolution's fresh output: in place
        block.steps[at + 1] = (functools.partial(F.mish, inplace=True), {}, {})
