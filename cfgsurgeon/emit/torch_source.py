"""IR → a standalone, readable PyTorch source file: the network written out as code, layer by layer.

The file depends only on torch and numpy, so it can be shipped without cfgsurgeon. It defines ``Darknet``
(one attribute per parameterised cfg layer, named ``l<index>_<what>``, and a ``forward`` with one line per
layer), ``load_darknet_weights(model, path)`` for darknet ``.weights`` files, and a ``__main__`` that runs a
``.npy`` input and saves the outputs as ``.npz``.

It computes exactly what :mod:`cfgsurgeon.emit.torch`'s module computes: every expression below is the
same sequence of torch operations, so outputs are bit-identical. :class:`TorchSourceEmitter` is a visitor
with one ``visit_<LayerClass>`` per layer type; darknet-specific operations become helper functions that are
emitted only when a layer uses them.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

from .. import layers as L
from ..errors import CfgError
from ..files import atomic_output
from ..ir import Graph
from ..tree import has_tree, load_tree
from .darknet_rules import (
    binary_conv_activation,
    check_binary_conv,
    check_conv_geometry,
    is_binary_conv,
    xnor_bit_packed,
)
from .heads import HEAD_TYPES

BN_EPS = 1e-5  # darknet's normalize_cpu; the same value as cfgsurgeon.emit.torch

# -- helper functions of the generated file, emitted in this order when used --------------------------------
# Each is the same computation as the matching piece of cfgsurgeon.emit.torch (same torch calls, same order).

_ACTIVATION_HELPERS = {
    "leaky": "return torch.where(x > 0, x, 0.1 * x)",
    "revleaky": "return torch.where(x > 0, x, 0.1 * x)",
    "relu6": "return x.clamp(0.0, 6.0)",
    "relie": "return torch.where(x > 0, x, 0.01 * x)",
    "ramp": "return x * (x > 0) + 0.1 * x",
    "loggy": "return 2.0 * torch.sigmoid(x) - 1.0",
    "elu": "return torch.where(x >= 0, x, torch.expm1(x))",
    "selu": "return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))",
    "gelu": "return 0.5 * x * (1.0 + torch.tanh(0.797885 * x + 0.035677 * x**3))",
    "swish": "return x * torch.sigmoid(x)",
    "mish": (
        "e = torch.exp(x.clamp(max=20.0))\n"
        "    n = e * (e + 2)\n"
        "    return torch.where(x > 20, x, x * n / (n + 2))"
    ),
    "hard_mish": "return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))",
    "plse": (
        "return torch.where(\n"
        "        x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)\n"
        "    )"
    ),
    "hardtan": "return x.clamp(-1.0, 1.0)",
    "lhtan": "return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))",
    "stair": (
        "n = torch.floor(x)\n"
        "    half = torch.floor(x / 2)\n"
        "    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)"
    ),
    "normalize_channels": (
        "positive = x.clamp(min=0)\n    return positive / (1e-4 + positive.sum(dim=1, keepdim=True))"
    ),
    "normalize_channels_softmax": "e = torch.exp(x)\n    return e / (1e-4 + e.sum(dim=1, keepdim=True))",
    "normalize_channels_softmax_maxval": (
        "shifted = x - x.amax(dim=1, keepdim=True)\n"
        "    e = torch.exp(shifted)\n"
        "    return e / (1e-4 + e.sum(dim=1, keepdim=True))"
    ),
}

# Activations that are one torch function; "linear" is no call at all.
_ACTIVATION_INLINE = {"relu": "torch.relu", "logistic": "torch.sigmoid", "tanh": "torch.tanh"}

_HELPERS: dict[str, str] = {
    **{
        name: f'\ndef {name}(x: Tensor) -> Tensor:\n    """darknet activation {name!r}."""\n    {body}\n'
        for name, body in _ACTIVATION_HELPERS.items()
    },
    "antialiasing_blur": '''
def antialiasing_blur(channels: int, kind: int, stride: tuple[int, int]) -> nn.Conv2d:
    """Fixed depthwise blur after an antialiased convolution: 3x3 binomial (1) or 2x2 box (2)."""
    if kind == 1:
        kernel, pad = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16, 1
    else:
        kernel, pad = torch.full((2, 2), 0.25), 0
    size = kernel.shape[0]
    blur = nn.Conv2d(channels, channels, size, stride=stride, padding=pad, groups=channels, bias=False)
    blur.weight.data[:] = kernel
    blur.weight.requires_grad_(False)
    return blur
''',
    "maxpool_darknet": '''
def maxpool_darknet(
    x: Tensor, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int], out_hw: tuple[int, int]
) -> Tensor:
    """darknet's max pooling: the window starts at -padding//2 and taps outside the input are ignored."""
    y = F.max_pool2d(F.pad(x, pads, value=-math.inf), size, stride)
    return y[:, :, : out_hw[0], : out_hw[1]]
''',
    "local_avgpool_darknet": '''
def local_avgpool_darknet(
    x: Tensor, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int], out_hw: tuple[int, int]
) -> Tensor:
    """darknet's [local_avgpool]: the mean over the taps of each window that lie inside the input."""
    total = F.avg_pool2d(F.pad(x, pads), size, stride, divisor_override=1)
    ones = torch.ones_like(x[:1, :1])
    count = F.avg_pool2d(F.pad(ones, pads), size, stride, divisor_override=1)
    return (total / count)[:, :, : out_hw[0], : out_hw[1]]
''',
    "maxpool_depth": '''
def maxpool_depth(x: Tensor, out_channels: int) -> Tensor:
    """maxpool_depth=1: per pixel, the max over channels g, g + out_channels, g + 2*out_channels, ..."""
    b, c, h, w = x.shape
    groups = math.ceil(c / out_channels)
    padded = F.pad(x, (0, 0, 0, 0, 0, groups * out_channels - c), value=-math.inf)
    return padded.view(b, groups, out_channels, h, w).amax(dim=1)
''',
    "upsample_darknet": '''
def upsample_darknet(x: Tensor, stride: int, scale: float) -> Tensor:
    """Nearest-neighbour upsampling by stride; a negative stride sums stride x stride blocks instead.
    darknet runs that one backwards: it reads the input buffer with the output's geometry x s, so when the
    input size is not a multiple of s the blocks are taken from the flat buffer, not from the image."""
    if stride > 0:
        y = x.repeat_interleave(stride, dim=2).repeat_interleave(stride, dim=3)
    else:
        s = -stride
        b, c, h, w = x.shape
        oh, ow = h // s, w // s
        y = x.reshape(b, -1)[:, : c * oh * s * ow * s].reshape(b, c, oh, s, ow, s).sum(dim=(3, 5))
    return y * scale if scale != 1 else y
''',
    "route_group": '''
def route_group(x: Tensor, groups: int, group_id: int) -> Tensor:
    """[route] groups=/group_id=: take one of `groups` equal channel slices."""
    return x.chunk(groups, dim=1)[group_id]
''',
    "shortcut_darknet": '''
def shortcut_darknet(x: Tensor, others: list[Tensor], weights: Tensor | None, normalization: str) -> Tensor:
    """[shortcut]: w0*x + sum(wk*from_k) (weights optional); a from-layer with fewer channels adds to the
    first channels only, one with more channels is first cut to this layer's channels."""
    w = None if weights is None else shortcut_weights(weights, normalization)
    out = x * w[0].view(1, -1, 1, 1) if w is not None else x
    for k, other in enumerate(others, start=1):
        other = other[:, : out.shape[1]]  # darknet adds from[i] for the flat indices i both layers have
        term = other * w[k].view(1, -1, 1, 1)[:, : other.shape[1]] if w is not None else other
        n = min(out.shape[1], term.shape[1])
        out = (
            torch.cat([out[:, :n] + term[:, :n], out[:, n:]], dim=1)
            if n < out.shape[1]
            else out + term[:, :n]
        )
    return out


def shortcut_weights(w: Tensor, normalization: str) -> Tensor:
    """darknet's weights_normalization over the inputs (dim 0)."""
    if normalization in ("relu", "avg_relu"):
        positive = w.clamp(min=0)
        return positive / (1e-4 + positive.sum(dim=0, keepdim=True))
    if normalization == "softmax":
        e = torch.exp(w - w.amax(dim=0, keepdim=True))
        return e / (1e-4 + e.sum(dim=0, keepdim=True))
    return w
''',
    "lrn_darknet": '''
def lrn_darknet(x: Tensor, size: int, alpha: float, beta: float, kappa: float) -> Tensor:
    """[normalization]: x * (kappa + alpha*S_k)^-beta (alpha not divided by size), S_k darknet's running sum
    of squares: S_0 = channels 0 .. size/2 - 1, then channel k adds k + size/2 and drops k - (size-1)/2 - 1.
    Channel size/2 is never added but is dropped later: the textbook window minus x(size/2)^2."""
    squared = x * x
    c = x.shape[1]
    ahead, behind = size // 2, (size - 1) // 2 + 1
    first = squared[:, :ahead].sum(dim=1, keepdim=True)
    added = squared[:, ahead + 1 :]  # enters at channel k = 1 .. c - 1 - ahead
    dropped = squared[:, : max(0, c - behind)]  # leaves at channel k = behind ..
    step = F.pad(added, (0, 0, 0, 0, 1, c - 1 - added.shape[1])) - F.pad(
        dropped, (0, 0, 0, 0, c - dropped.shape[1], 0)
    )
    norms = kappa + alpha * (first + step.cumsum(dim=1))
    return x * norms.pow(-beta)
''',
    "reorg_darknet": '''
def reorg_darknet(x: Tensor, stride: int, out_shape: tuple[int, int, int], old: bool) -> Tensor:
    """Space-to-depth. old=True is [reorg] (YOLOv2): darknet reads the input buffer as (C/s^2, H*s, W*s),
    writes it as (C, H, W), then hands it on as (C*s^2, H/s, W/s); old=False is [reorg3d]."""
    b, c, h, w = x.shape
    s = stride
    if old:
        blocks = x.reshape(b, c // (s * s), h, s, w, s)
        return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, *out_shape)
    blocks = x.reshape(b, c, h // s, s, w // s, s)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, *out_shape)
''',
    "yolo_darknet": '''
def yolo_darknet(x: Tensor, anchors: int, entries: int, scale_x_y: float, new_coords: bool) -> Tensor:
    """[yolo] output as darknet leaves it: logistic on x, y, objectness and classes (not with new_coords),
    then x*scale_x_y - (scale_x_y - 1)/2 on x and y; w and h stay raw. Layout [anchors][entries][h][w]."""
    logistic = torch.ones(entries, dtype=torch.bool)
    logistic[2:4] = False
    b, _, h, w = x.shape
    y = x.view(b, anchors, entries, h, w)
    if not new_coords:
        y = torch.where(logistic.view(1, 1, -1, 1, 1), torch.sigmoid(y), y)
    if scale_x_y != 1:
        xy = y[:, :, :2] * scale_x_y - 0.5 * (scale_x_y - 1)
        y = torch.cat([xy, y[:, :, 2:]], dim=2)
    return y.reshape(b, -1, h, w)
''',
    "gaussian_yolo_darknet": '''
def gaussian_yolo_darknet(x: Tensor, anchors: int, entries: int, scale_x_y: float) -> Tensor:
    """[Gaussian_yolo]: entries x,sx,y,sy,w,sw,h,sh,obj,classes; logistic on all but w, h; scale on x, y."""
    logistic = torch.ones(entries, dtype=torch.bool)
    logistic[4] = False
    logistic[6] = False
    b, _, h, w = x.shape
    y = torch.where(
        logistic.view(1, 1, -1, 1, 1),
        torch.sigmoid(x.view(b, anchors, entries, h, w)),
        x.view(b, anchors, entries, h, w),
    )
    if scale_x_y != 1:
        scaled = y[:, :, [0, 2]] * scale_x_y - 0.5 * (scale_x_y - 1)
        y = y.clone()
        y[:, :, [0, 2]] = scaled
    return y.reshape(b, -1, h, w)
''',
    "region_darknet": '''
def region_darknet(x: Tensor, anchors: int, coords: int, classes: int, softmax: bool) -> Tensor:
    """YOLOv2's [region]: per box, logistic objectness and (with softmax=1) softmax over classes, in
    darknet's flat channels-last order; output (batch, h*w*anchors*(coords+1+classes), 1, 1)."""
    b, _, h, w = x.shape
    entries = coords + 1 + classes
    boxes = x.view(b, anchors, entries, h, w).permute(0, 3, 4, 1, 2)
    obj = torch.sigmoid(boxes[..., coords : coords + 1])
    cls = boxes[..., coords + 1 :]
    cls = torch.softmax(cls, dim=-1) if softmax else cls
    out = torch.cat([boxes[..., :coords], obj, cls], dim=-1)
    return out.reshape(b, -1, 1, 1)
''',
    "binary_conv_darknet": '''
def binary_conv_darknet(
    x: Tensor,
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d | None,
    xnor: bool,
    minus_one_pads: tuple[int, int, int, int] | None,
) -> Tensor:
    """xnor=1 / binary=1 convolution as darknet's detector test runs it, before the activation: batch norm
    folded into the weights, each filter binarised to +-mean|w| (w > 0); xnor also binarises the input to
    +-1 (x > 0) and, in darknet's bit-packed path (stride_x == stride_y), pads with -1."""
    if bn is None:
        weight, bias = conv.weight, conv.bias
    else:  # darknet's fuse_conv_batchnorm: w*g/sqrt(var+eps) and b - g*mean/sqrt(var+eps)
        factor = bn.weight / torch.sqrt(bn.running_var + BN_EPS)
        weight, bias = conv.weight * factor.view(-1, 1, 1, 1), bn.bias - factor * bn.running_mean
    scale = weight.abs().mean(dim=(1, 2, 3))  # mean |w| of each fused filter
    signs = torch.where(weight > 0, 1.0, -1.0)
    if xnor:
        x = torch.where(x > 0, 1.0, -1.0)
    if minus_one_pads is not None:
        x = F.pad(x, minus_one_pads, value=-1.0)
    y = F.conv2d(x, signs, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)
''',
    "GroupedSoftmax": '''
class GroupedSoftmax(nn.Module):
    """Softmax over consecutive groups of the last dimension (group_sizes tile it), divided by the
    temperature: darknet's softmax tree. Groups of equal size are gathered into one block each."""

    def __init__(self, group_sizes: tuple[int, ...], temperature: float = 1.0):
        super().__init__()
        self.temperature = temperature
        starts: dict[int, list[int]] = {}
        offset = 0
        for size in group_sizes:
            if size:
                starts.setdefault(size, []).append(offset)
            offset += size
        blocks = [torch.tensor(first)[:, None] + torch.arange(size) for size, first in sorted(starts.items())]
        for k, block in enumerate(blocks):
            self.register_buffer(f"block{k}", block, persistent=False)
        self.blocks = len(blocks)
        order = torch.cat([block.flatten() for block in blocks] or [torch.zeros(0, dtype=torch.long)])
        self.register_buffer("inverse", torch.argsort(order), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if self.temperature != 1:
            x = x / self.temperature
        parts = [torch.softmax(x[..., getattr(self, f"block{k}")], dim=-1) for k in range(self.blocks)]
        return torch.cat([part.flatten(-2) for part in parts], dim=-1)[..., self.inverse]
''',
    "region_tree_darknet": '''
def region_tree_darknet(x: Tensor, anchors: int, coords: int, classes: int, tree: nn.Module) -> Tensor:
    """YOLOv2's [region] with tree=: logistic objectness and a softmax within each group of the tree."""
    b, _, h, w = x.shape
    entries = coords + 1 + classes
    boxes = x.view(b, anchors, entries, h, w).permute(0, 3, 4, 1, 2)
    obj = torch.sigmoid(boxes[..., coords : coords + 1])
    cls = tree(boxes[..., coords + 1 :])
    out = torch.cat([boxes[..., :coords], obj, cls], dim=-1)
    return out.reshape(b, -1, 1, 1)
''',
    "detection_softmax": '''
def detection_softmax(x: Tensor, classes: int, side: int) -> Tensor:
    """YOLOv1 [detection] with softmax=1: softmax over each cell's classes (the first block of the buffer)."""
    flat = x.reshape(x.shape[0], -1)
    cells = side * side
    probs = torch.softmax(flat[:, : cells * classes].view(-1, cells, classes), dim=-1)
    return torch.cat([probs.reshape(x.shape[0], -1), flat[:, cells * classes :]], dim=1).view(x.shape)
''',
    "softmax_darknet": '''
def softmax_darknet(x: Tensor, groups: int, temperature: float) -> Tensor:
    """[softmax]: softmax over `groups` contiguous chunks of the flat input, divided by the temperature."""
    flat = x.reshape(x.shape[0], groups, -1)
    return torch.softmax(flat / temperature, dim=-1).reshape(x.shape)
''',
}


@dataclass
class LayerCode:
    """What one cfg layer contributes: ``__init__`` statements, the expression of its output (in terms of
    its inputs' names) and where each of its ``.weights`` tensors lives in the state_dict."""

    init: list[str]
    expr: str
    tensors: dict[str, str] = field(default_factory=dict)


class TorchSourceEmitter:
    """Visitor over the IR: ``visit_<LayerClass>(layer, inputs)`` returns the layer's :class:`LayerCode`."""

    def __init__(self, graph: Graph, tree: str | Path | None = None):
        self.graph = graph
        self.tree = tree if tree is not None else graph.tree_file  # for tree= layers (see cfgsurgeon.tree)
        self.helpers: set[str] = set()

    # -- driving -------------------------------------------------------------------------------------------
    def emit(self) -> str:
        codes = [self.visit(layer) for layer in self.graph.layers]
        heads = [i for i, layer in enumerate(self.graph.layers) if isinstance(layer, HEAD_TYPES)]
        heads = heads or [len(self.graph.layers) - 1]
        parts = [self._model_class(codes, heads), self._weights_order(codes), _LOADER, _MAIN]
        body = "\n".join([*self._helper_sources(), *parts])
        return self._preamble(body) + "\n" + body

    def visit(self, layer: L.Layer) -> LayerCode:
        method = getattr(self, f"visit_{type(layer).__name__}", None)
        if method is None:
            message = f"layer {layer.index} [{layer.header}] has no PyTorch implementation"
            raise CfgError(message, layer.where())
        inputs = [self.name(node) for node in layer.inputs]
        return method(layer, inputs)

    def name(self, node: L.Node) -> str:
        return "x" if isinstance(node, L.Net) else f"l{self.graph.index_of(node)}"

    def use(self, helper: str) -> str:
        self.helpers.add(helper)
        return helper

    def activation(self, name: str, expr: str) -> str:
        if name == "linear":
            return expr
        if name in _ACTIVATION_INLINE:
            return f"{_ACTIVATION_INLINE[name]}({expr})"
        return f"{self.use(name)}({expr})"

    # -- layers with parameters ----------------------------------------------------------------------------
    def visit_Convolutional(self, layer: L.Convolutional, ins: list[str]) -> LayerCode:
        binary = is_binary_conv(layer)
        if binary:
            check_binary_conv(layer)  # the backend's own refusals
        else:
            check_conv_geometry(layer)
        i, shared = layer.index, layer.shares
        # share_index: darknet shares the weights and BN tensors, not the geometry.
        owner = f"l{i}" if shared is None else f"l{self.graph.index_of(shared)}"
        init = self._conv_modules(layer)
        if shared is not None:
            init = init[:1] + [f"self.l{i}_conv.weight = self.{owner}_conv.weight"]
            if not layer.batch_normalize:
                init.append(f"self.l{i}_conv.bias = self.{owner}_conv.bias")
        if binary:
            expr = self._binary_conv(layer, ins[0], owner)
            expr = self.activation(binary_conv_activation(layer), expr)
        else:
            expr = f"self.l{i}_conv({ins[0]})"
            if layer.batch_normalize:
                expr = f"self.{owner}_bn({expr})"
            expr = self.activation(layer.activation, expr)
        if layer.antialiasing:
            sy, sx = layer.strides
            init.append(
                f"self.l{i}_blur = {self.use('antialiasing_blur')}"
                f"({layer.filters}, {layer.antialiasing}, stride=({sy}, {sx}))"
            )
            expr = f"self.l{i}_blur({expr})"
        if shared is not None:
            return LayerCode(init, expr)
        if layer.batch_normalize:
            return LayerCode(init, expr, {**_bn_tensors(f"l{i}_bn"), "weights": f"l{i}_conv.weight"})
        return LayerCode(init, expr, {"biases": f"l{i}_conv.bias", "weights": f"l{i}_conv.weight"})

    def _binary_conv(self, layer: L.Convolutional, x: str, owner: str) -> str:
        bn = f"self.{owner}_bn" if layer.batch_normalize else "None"
        pad = layer.effective_padding
        pads = (pad,) * 4 if xnor_bit_packed(layer) else None
        args = f"{x}, self.l{layer.index}_conv, {bn}, xnor={bool(layer.xnor)}, minus_one_pads={pads}"
        return f"{self.use('binary_conv_darknet')}({args})"

    def _conv_modules(self, layer: L.Convolutional) -> list[str]:
        i, dil = layer.index, layer.effective_dilation
        sy, sx = (1, 1) if layer.antialiasing else layer.strides
        pad = layer.effective_padding
        if xnor_bit_packed(layer):  # darknet's bit-packed xnor path: -1 padding done apart, no dilation
            dil, pad = 1, 0
        args = [str(layer.in_shape[0]), str(layer.filters), str(layer.size)]
        args.append(f"stride={sy}" if sy == sx else f"stride=({sy}, {sx})")
        args.append(f"padding={pad * dil}")
        if dil != 1:
            args.append(f"dilation={dil}")
        if layer.effective_groups != 1:
            args.append(f"groups={layer.effective_groups}")
        args.append(f"bias={not layer.batch_normalize}")
        init = [f"self.l{i}_conv = nn.Conv2d({', '.join(args)})"]
        if layer.batch_normalize:
            init.append(f"self.l{i}_bn = nn.BatchNorm2d({layer.filters}, eps=BN_EPS)")
        return init

    def visit_Connected(self, layer: L.Connected, ins: list[str]) -> LayerCode:
        i, bn = layer.index, bool(layer.batch_normalize)
        init = [f"self.l{i}_fc = nn.Linear({math.prod(layer.in_shape)}, {layer.output}, bias={not bn})"]
        expr = f"self.l{i}_fc({ins[0]}.flatten(1))"
        if bn:
            init.append(f"self.l{i}_bn = nn.BatchNorm1d({layer.output}, eps=BN_EPS)")
            expr = f"self.l{i}_bn({expr})"
        expr = f"{self.activation(layer.activation, expr)}[:, :, None, None]"
        if bn:
            return LayerCode(init, expr, {**_bn_tensors(f"l{i}_bn"), "weights": f"l{i}_fc.weight"})
        return LayerCode(init, expr, {"biases": f"l{i}_fc.bias", "weights": f"l{i}_fc.weight"})

    def visit_BatchNorm(self, layer: L.BatchNorm, ins: list[str]) -> LayerCode:
        i = layer.index
        init = [f"self.l{i}_bn = nn.BatchNorm2d({layer.in_shape[0]}, eps=BN_EPS)"]
        return LayerCode(init, f"self.l{i}_bn({ins[0]})", _bn_tensors(f"l{i}_bn"))

    def visit_Shortcut(self, layer: L.Shortcut, ins: list[str]) -> LayerCode:
        shape = dict(layer.weight_layout()).get("weights")
        channels = {node.out_shape[0] for node in layer.inputs}
        if shape is None and len(channels) == 1:
            return LayerCode([], self.activation(layer.activation, " + ".join(ins)))
        init, tensors, weights = [], {}, "None"
        if shape is not None:
            weights = f"self.l{layer.index}_weights"
            init.append(f"{weights} = nn.Parameter(torch.ones{shape})")
            tensors = {"weights": f"l{layer.index}_weights"}
        call = (
            f"{self.use('shortcut_darknet')}({ins[0]}, [{', '.join(ins[1:])}], {weights}, "
            f'"{layer.weights_normalization}")'
        )
        return LayerCode(init, self.activation(layer.activation, call), tensors)

    def visit_Implicit(self, layer: L.Implicit, ins: list[str]) -> LayerCode:
        i, (c, h, w) = layer.index, layer.out_shape
        init = [f"self.l{i}_implicit = nn.Parameter(torch.zeros({layer.filters * layer.atoms}))"]
        expr = f"self.l{i}_implicit.view(1, {c}, {h}, {w}).expand({ins[0]}.shape[0], {c}, {h}, {w})"
        return LayerCode(init, expr, {"weights": f"l{i}_implicit"})

    # -- layers without parameters -------------------------------------------------------------------------
    def visit_MaxPool(self, layer: L.MaxPool, ins: list[str]) -> LayerCode:
        if layer.maxpool_depth:
            return LayerCode([], f"{self.use('maxpool_depth')}({ins[0]}, {layer.out_channels})")
        return LayerCode([], self._pool("maxpool_darknet", layer, ins[0]))

    def visit_LocalAvgPool(self, layer: L.LocalAvgPool, ins: list[str]) -> LayerCode:
        return LayerCode([], self._pool("local_avgpool_darknet", layer, ins[0]))

    def _pool(self, helper: str, layer: L.MaxPool, x: str) -> str:
        if layer.antialiasing:  # as the backend: pooling at stride 1 then a blur has another output size
            raise CfgError(
                f"layer {layer.index} [{layer.header}] antialiasing is not supported",
                layer.where("antialiasing"),
            )
        _, h, w = layer.in_shape
        _, out_h, out_w = layer.out_shape
        top = left = layer.padding // 2
        bottom = max(0, (out_h - 1) * layer.stride_y + layer.size - h - top)
        right = max(0, (out_w - 1) * layer.stride_x + layer.size - w - left)
        stride = (layer.stride_y, layer.stride_x)
        pads = (left, right, top, bottom)
        return f"{self.use(helper)}({x}, {layer.size}, {stride}, {pads}, ({out_h}, {out_w}))"

    def visit_AvgPool(self, layer: L.AvgPool, ins: list[str]) -> LayerCode:
        return LayerCode([], f"{ins[0]}.mean(dim=(2, 3), keepdim=True)")

    def visit_Upsample(self, layer: L.Upsample, ins: list[str]) -> LayerCode:
        return LayerCode([], f"{self.use('upsample_darknet')}({ins[0]}, {layer.stride}, {layer.scale!r})")

    def visit_Route(self, layer: L.Route, ins: list[str]) -> LayerCode:
        if layer.groups > 1:
            ins = [f"{self.use('route_group')}({x}, {layer.groups}, {layer.group_id})" for x in ins]
        return LayerCode([], ins[0] if len(ins) == 1 else f"torch.cat([{', '.join(ins)}], dim=1)")

    def visit_ScaleChannels(self, layer: L.ScaleChannels, ins: list[str]) -> LayerCode:
        scale, target = ins
        factor = f"{scale}[:, :1]" if layer.scale_wh else scale
        return LayerCode([], self.activation(layer.activation, f"{target} * {factor}"))

    def visit_Sam(self, layer: L.Sam, ins: list[str]) -> LayerCode:
        return LayerCode([], self.activation(layer.activation, f"{ins[0]} * {ins[1]}"))

    def visit_Reorg3d(self, layer: L.Reorg3d, ins: list[str]) -> LayerCode:
        if layer.reverse:
            raise CfgError(
                f"layer {layer.index} [{layer.header}] reverse=1 is not supported", layer.where("reverse")
            )
        old = isinstance(layer, L.Reorg)
        call = f"{self.use('reorg_darknet')}({ins[0]}, {layer.stride}, {layer.out_shape}, old={old})"
        return LayerCode([], call)

    visit_Reorg = visit_Reorg3d

    def visit_Yolo(self, layer: L.Yolo, ins: list[str]) -> LayerCode:
        entries = layer.classes + layer.box_entries
        args = f"{ins[0]}, {len(layer.mask)}, {entries}, {layer.scale_x_y!r}, {bool(layer.new_coords)}"
        return LayerCode([], f"{self.use('yolo_darknet')}({args})")

    def visit_GaussianYolo(self, layer: L.GaussianYolo, ins: list[str]) -> LayerCode:
        entries = layer.classes + layer.box_entries
        args = f"{ins[0]}, {len(layer.mask)}, {entries}, {layer.scale_x_y!r}"
        return LayerCode([], f"{self.use('gaussian_yolo_darknet')}({args})")

    def visit_Region(self, layer: L.Region, ins: list[str]) -> LayerCode:
        if has_tree(layer):
            init = self._tree_module(layer, layer.classes, 1.0)
            args = f"{ins[0]}, {layer.num}, {layer.coords}, {layer.classes}, self.l{layer.index}_tree"
            return LayerCode(init, f"{self.use('region_tree_darknet')}({args})")
        args = f"{ins[0]}, {layer.num}, {layer.coords}, {layer.classes}, {bool(layer.softmax)}"
        return LayerCode([], f"{self.use('region_darknet')}({args})")

    def visit_Detection(self, layer: L.Detection, ins: list[str]) -> LayerCode:
        if layer.options.get("softmax") != "1":
            return LayerCode([], ins[0])
        classes, side = int(layer.options.get("classes", "1")), int(layer.options.get("side", "7"))
        return LayerCode([], f"{self.use('detection_softmax')}({ins[0]}, {classes}, {side})")

    def visit_Softmax(self, layer: L.Softmax, ins: list[str]) -> LayerCode:
        if has_tree(layer):
            init = self._tree_module(layer, math.prod(layer.in_shape), layer.temperature)
            x = ins[0]
            expr = f"self.l{layer.index}_tree({x}.reshape({x}.shape[0], -1)).reshape({x}.shape)"
            return LayerCode(init, expr)
        args = f"{ins[0]}, {layer.groups}, {layer.temperature!r}"
        return LayerCode([], f"{self.use('softmax_darknet')}({args})")

    def _tree_module(self, layer: L.Layer, entries: int, temperature: float) -> list[str]:
        """``self.l<i>_tree``, built from the tree's group sizes written into the file (no tree file needed
        at run time); the backend's checks and errors."""
        from .torch import Region  # the backend's own refusals (imported here: that module needs torch)

        tree = load_tree(layer, entries, self.tree)
        if isinstance(layer, L.Region):
            Region(layer, tree)
        self.use("GroupedSoftmax")
        sizes = textwrap.wrap(", ".join(map(str, tree.group_sizes)) + ",", width=90)
        head = f"self.l{layer.index}_tree = GroupedSoftmax("
        if len(sizes) == 1:
            return [f"{head}({sizes[0]}), {temperature!r})"]
        return [f"{head}", "    (", *(f"        {line}" for line in sizes), f"    ), {temperature!r}", ")"]

    def visit_Activation(self, layer: L.Activation, ins: list[str]) -> LayerCode:
        return LayerCode([], self.activation(layer.activation, ins[0]))

    def visit_Crop(self, layer: L.Crop, ins: list[str]) -> LayerCode:
        _, h, w = layer.in_shape
        top, left = (h - layer.crop_height) // 2, (w - layer.crop_width) // 2
        rows, cols = f"{top} : {top + layer.crop_height}", f"{left} : {left + layer.crop_width}"
        expr = f"{ins[0]}[:, :, {rows}, {cols}]"
        return LayerCode([], expr if layer.noadjust else f"{expr} * 2 - 1")

    def visit_Normalization(self, layer: L.Normalization, ins: list[str]) -> LayerCode:
        args = f"{ins[0]}, {layer.size}, alpha={layer.alpha!r}, beta={layer.beta!r}, kappa={layer.kappa!r}"
        return LayerCode([], f"{self.use('lrn_darknet')}({args})")

    def _identity(self, layer: L.Layer, ins: list[str]) -> LayerCode:
        return LayerCode([], ins[0])

    visit_Dropout = visit_Empty = visit_Cost = visit_Contrastive = _identity

    # -- the file's parts ----------------------------------------------------------------------------------
    def _preamble(self, body: str) -> str:
        """The docstring and the imports the ``body`` uses."""
        from .. import __version__

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
            bn_eps=repr(BN_EPS),
        )

    def _helper_sources(self) -> list[str]:
        return [source for name, source in _HELPERS.items() if name in self.helpers]

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


def _bn_tensors(bn: str) -> dict[str, str]:
    return {
        "biases": f"{bn}.bias",
        "scales": f"{bn}.weight",
        "rolling_mean": f"{bn}.running_mean",
        "rolling_variance": f"{bn}.running_var",
    }


def _assignment(name: str, expr: str) -> list[str]:
    """``name = expr`` in forward; a long ``torch.cat([...], dim=1)`` is wrapped over several lines."""
    head, tail = "torch.cat([", "], dim=1)"
    if expr.startswith(head) and expr.endswith(tail):
        return _bracketed(f"        {name} = {head}", expr[len(head) : -len(tail)], tail, "        ")
    return [f"        {name} = {expr}"]


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
