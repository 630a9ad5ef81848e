"""IR (+ weights) → ``torch.nn.Module`` computing exactly what darknet computes (CPU inference semantics).

One small module per IR layer; :class:`DarknetModel` wires them along the graph's explicit edges and frees
each intermediate output after its last reader. Building dispatches on the layer type through ``BUILDERS``
(one function per type), so an unsupported type fails with its name.

Where darknet's CPU build has a bug (``relu6`` in a convolution, swish/mish in ``[scale_channels]`` give
zeros, ``binary=1`` is ignored) we compute the intended function, as darknet's GPU build does. Layers with a
softmax tree (``tree=``) need the tree file: :mod:`cfgsurgeon.tree` says where it is looked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import layers as L
from ..errors import CfgError
from ..ir import Graph
from ..tree import SoftmaxTree, has_tree, load_tree
from .darknet_rules import binary_conv_activation, is_binary_conv, xnor_bit_packed
from .darknet_rules import check_binary_conv as _check_binary_conv
from .darknet_rules import check_conv_geometry as _check_conv_geometry

BN_EPS = 1e-5  # darknet's normalize_cpu

# -- activations (darknet's activations.c / gemm.c) ------------------------------------------------------


def _mish(x: Tensor) -> Tensor:
    """x·tanh(softplus(x)) (darknet: softplus is x above 20) as x·n/(n + 2), n = eˣ(eˣ + 2): an identity.
    Exported graphs keep its accuracy: ONNX has no log1p, and log(1 + eˣ) loses it for negative x (measured:
    5e-4 relative in ONNX Runtime, 9e-3 in OpenVINO; this form ≤ 4e-7 in torch, ONNX Runtime and OpenVINO)."""
    e = torch.exp(x.clamp(max=20.0))
    n = e * (e + 2)
    return torch.where(x > 20, x, x * n / (n + 2))


def _stair(x: Tensor) -> Tensor:
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


def _normalize_channels(x: Tensor) -> Tensor:
    positive = x.clamp(min=0)
    return positive / (1e-4 + positive.sum(dim=1, keepdim=True))


def _normalize_channels_softmax(x: Tensor, use_max: bool) -> Tensor:
    shifted = x - x.amax(dim=1, keepdim=True) if use_max else x
    e = torch.exp(shifted)
    return e / (1e-4 + e.sum(dim=1, keepdim=True))


ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": lambda x: x,
    "leaky": lambda x: torch.where(x > 0, x, 0.1 * x),
    "revleaky": lambda x: torch.where(x > 0, x, 0.1 * x),
    "relu": torch.relu,
    "relu6": lambda x: x.clamp(0.0, 6.0),
    "relie": lambda x: torch.where(x > 0, x, 0.01 * x),
    "ramp": lambda x: x * (x > 0) + 0.1 * x,
    "logistic": torch.sigmoid,
    "loggy": lambda x: 2.0 * torch.sigmoid(x) - 1.0,
    "tanh": torch.tanh,
    "elu": lambda x: torch.where(x >= 0, x, torch.expm1(x)),
    "selu": lambda x: torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x)),
    "gelu": lambda x: 0.5 * x * (1.0 + torch.tanh(0.797885 * x + 0.035677 * x**3)),
    "swish": lambda x: x * torch.sigmoid(x),
    "mish": _mish,
    "hard_mish": lambda x: torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x))),
    "plse": lambda x: torch.where(
        x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5)
    ),
    "hardtan": lambda x: x.clamp(-1.0, 1.0),
    "lhtan": lambda x: torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x)),
    "stair": _stair,
    "normalize_channels": _normalize_channels,
    "normalize_channels_softmax": lambda x: _normalize_channels_softmax(x, use_max=False),
    "normalize_channels_softmax_maxval": lambda x: _normalize_channels_softmax(x, use_max=True),
}


class Activation(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.fn = ACTIVATIONS[name]

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return self.name


# -- layer modules ---------------------------------------------------------------------------------------


class Conv(nn.Module):
    """Convolution → batch norm (darknet's inference formula) or bias → activation [→ antialiasing blur]."""

    def __init__(self, layer: L.Convolutional):
        super().__init__()
        c = layer.in_shape[0]
        pad, dil = layer.effective_padding, layer.effective_dilation
        _check_conv_geometry(layer)
        self.conv = nn.Conv2d(
            c,
            layer.filters,
            layer.size,
            stride=(1, 1) if layer.antialiasing else layer.strides,
            padding=pad * dil,
            dilation=dil,
            groups=layer.effective_groups,
            bias=not layer.batch_normalize,
        )
        self.bn = nn.BatchNorm2d(layer.filters, eps=BN_EPS) if layer.batch_normalize else None
        self.act = Activation(layer.activation)
        self.blur = _blur(layer) if layer.antialiasing else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x)
        if self.bn is not None:
            y = self.bn(y)
        y = self.act(y)
        return self.blur(y) if self.blur is not None else y


class BinaryConv(nn.Module):
    """``xnor=1`` / ``binary=1`` convolutions as ``darknet detector test`` runs them: batch norm is first
    folded into the weights (``fuse_conv_batchnorm``), then each filter is binarised to ``±mean|w|``
    (``w > 0``; ``binary_align_weights``). ``xnor`` also binarises the input to ``±1`` (``x > 0``) and, where
    ``stride_x == stride_y``, runs darknet's bit-packed GEMM: ``(2·agreeing bits − K)·mean|w|``, in which a
    padded tap is a 0 bit, i.e. −1, and dilation is not used; with unequal strides the float path pads with 0.
    ``bin_output=1`` makes an xnor layer's activation linear (``calculate_binary_weights``).
    ``binary=1`` alone: darknet's CPU forward ignores it (a plain float convolution) while its GPU forward
    binarises the weights; we compute the binarised one, the intended function, as the GPU does."""

    def __init__(self, layer: L.Convolutional):
        super().__init__()
        _check_binary_conv(layer)
        c, pad = layer.in_shape[0], layer.effective_padding
        self.xnor = bool(layer.xnor)
        bit_packed = xnor_bit_packed(layer)
        dil = 1 if bit_packed else layer.effective_dilation
        self.conv = nn.Conv2d(
            c,
            layer.filters,
            layer.size,
            stride=(1, 1) if layer.antialiasing else layer.strides,
            padding=0 if bit_packed else pad * dil,
            dilation=dil,
            groups=layer.effective_groups,
            bias=not layer.batch_normalize,
        )
        self.minus_one_pads = (pad, pad, pad, pad) if bit_packed else None
        self.bn = nn.BatchNorm2d(layer.filters, eps=BN_EPS) if layer.batch_normalize else None
        self.act = Activation(binary_conv_activation(layer))
        self.blur = _blur(layer) if layer.antialiasing else None

    def forward(self, x: Tensor) -> Tensor:
        y = self.act(binary_conv_darknet(x, self.conv, self.bn, self.xnor, self.minus_one_pads))
        return self.blur(y) if self.blur is not None else y


def binary_conv_darknet(
    x: Tensor,
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d | None,
    xnor: bool,
    minus_one_pads: tuple[int, int, int, int] | None,
) -> Tensor:
    """The binarised convolution before its activation (see :class:`BinaryConv`)."""
    if bn is None:
        weight, bias = conv.weight, conv.bias
    else:  # darknet's fuse_conv_batchnorm: w·γ/√(var+ε) and β − γ·mean/√(var+ε)
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


def _blur(layer: L.Convolutional) -> nn.Conv2d:
    n = layer.filters
    sy, sx = layer.strides
    if layer.antialiasing == 1:
        kernel, pad = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16, 1
    else:
        kernel, pad = torch.full((2, 2), 0.25), 0
    blur = nn.Conv2d(n, n, kernel.shape[0], stride=(sy, sx), padding=pad, groups=n, bias=False)
    blur.weight.data[:] = kernel
    blur.weight.requires_grad_(False)
    return blur


class Connected(nn.Module):
    def __init__(self, layer: L.Connected):
        super().__init__()
        inputs = math.prod(layer.in_shape)
        self.fc = nn.Linear(inputs, layer.output, bias=not layer.batch_normalize)
        self.bn = nn.BatchNorm1d(layer.output, eps=BN_EPS) if layer.batch_normalize else None
        self.act = Activation(layer.activation)

    def forward(self, x: Tensor) -> Tensor:
        y = self.fc(x.flatten(1))
        if self.bn is not None:
            y = self.bn(y)
        return self.act(y)[:, :, None, None]


class BatchNorm(nn.Module):
    def __init__(self, layer: L.BatchNorm):
        super().__init__()
        self.bn = nn.BatchNorm2d(layer.in_shape[0], eps=BN_EPS)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x)


class Pool(nn.Module):
    """Darknet's max / local-average pooling: window origin at ``-padding // 2``, taps outside are ignored."""

    def __init__(self, layer: L.MaxPool, average: bool):
        super().__init__()
        if layer.antialiasing:  # pooling at stride 1 then a blur: a different output size than the IR's
            raise CfgError(
                f"layer {layer.index} [{layer.header}] antialiasing is not supported",
                layer.where("antialiasing"),
            )
        _, h, w = layer.in_shape
        _, out_h, out_w = layer.out_shape
        self.size, self.stride = layer.size, (layer.stride_y, layer.stride_x)
        self.out_hw = (out_h, out_w)
        top = left = layer.padding // 2
        bottom = max(0, (out_h - 1) * layer.stride_y + layer.size - h - top)
        right = max(0, (out_w - 1) * layer.stride_x + layer.size - w - left)
        self.pads = (left, right, top, bottom)
        self.average = average

    def forward(self, x: Tensor) -> Tensor:
        out_h, out_w = self.out_hw
        if self.average:
            total = F.avg_pool2d(F.pad(x, self.pads), self.size, self.stride, divisor_override=1)
            ones = torch.ones_like(x[:1, :1])
            count = F.avg_pool2d(F.pad(ones, self.pads), self.size, self.stride, divisor_override=1)
            return (total / count)[:, :, :out_h, :out_w]
        y = F.max_pool2d(F.pad(x, self.pads, value=-math.inf), self.size, self.stride)
        return y[:, :, :out_h, :out_w]


class MaxPoolDepth(nn.Module):
    """``maxpool_depth=1``: per pixel, the max over channels ``g, g + out_c, g + 2·out_c, …``."""

    def __init__(self, layer: L.MaxPool):
        super().__init__()
        self.out_c = layer.out_channels

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        groups = math.ceil(c / self.out_c)
        padded = F.pad(x, (0, 0, 0, 0, 0, groups * self.out_c - c), value=-math.inf)
        return padded.view(b, groups, self.out_c, h, w).amax(dim=1)


class GlobalAvgPool(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


class Upsample(nn.Module):
    def __init__(self, layer: L.Upsample):
        super().__init__()
        self.stride, self.scale = layer.stride, layer.scale

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 0:
            y = x.repeat_interleave(self.stride, dim=2).repeat_interleave(self.stride, dim=3)
        else:  # darknet runs upsample_cpu backwards: the input buffer is read with the output's geometry × s
            s = -self.stride
            b, c, h, w = x.shape
            oh, ow = h // s, w // s
            y = x.reshape(b, -1)[:, : c * oh * s * ow * s].reshape(b, c, oh, s, ow, s).sum(dim=(3, 5))
        return y * self.scale if self.scale != 1 else y


class Route(nn.Module):
    def __init__(self, layer: L.Route):
        super().__init__()
        self.groups, self.group_id = layer.groups, layer.group_id

    def forward(self, *xs: Tensor) -> Tensor:
        if self.groups > 1:
            xs = tuple(x.chunk(self.groups, dim=1)[self.group_id] for x in xs)
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)


class Shortcut(nn.Module):
    """``w0·x + Σ wk·from_k`` (weights optional, normalised per darknet), channel counts may differ."""

    def __init__(self, layer: L.Shortcut):
        super().__init__()
        self.weights_type = layer.weights_type
        self.normalization = layer.weights_normalization
        shape = dict(layer.weight_layout()).get("weights")
        self.weight = nn.Parameter(torch.ones(shape)) if shape else None
        self.act = Activation(layer.activation)

    def forward(self, x: Tensor, *others: Tensor) -> Tensor:
        w = self._normalised_weights()
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
        return self.act(out)

    def _normalised_weights(self) -> Tensor | None:
        if self.weight is None:
            return None
        w = self.weight
        if self.normalization in ("relu", "avg_relu"):
            positive = w.clamp(min=0)
            return positive / (1e-4 + positive.sum(dim=0, keepdim=True))
        if self.normalization == "softmax":
            e = torch.exp(w - w.amax(dim=0, keepdim=True))
            return e / (1e-4 + e.sum(dim=0, keepdim=True))
        return w


class ScaleChannels(nn.Module):
    def __init__(self, layer: L.ScaleChannels):
        super().__init__()
        self.per_pixel = bool(layer.scale_wh)
        self.act = Activation(layer.activation)

    def forward(self, scale: Tensor, target: Tensor) -> Tensor:
        factor = scale[:, :1] if self.per_pixel else scale
        return self.act(target * factor)


class Sam(nn.Module):
    def __init__(self, layer: L.Sam):
        super().__init__()
        self.act = Activation(layer.activation)

    def forward(self, x: Tensor, other: Tensor) -> Tensor:
        return self.act(x * other)


class Reorg(nn.Module):
    """Space-to-depth. ``old=True`` is ``[reorg]`` (YOLOv2): darknet reads the input buffer as
    ``(C/s², H·s, W·s)`` and writes it as ``(C, H, W)``, then hands it on as ``(C·s², H/s, W/s)``."""

    def __init__(self, layer: L.Reorg3d, old: bool):
        super().__init__()
        if layer.reverse:
            raise CfgError(
                f"layer {layer.index} [{layer.header}] reverse=1 is not supported", layer.where("reverse")
            )
        self.s, self.old = layer.stride, old
        self.out_shape = layer.out_shape

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        s = self.s
        if self.old:
            blocks = x.reshape(b, c // (s * s), h, s, w, s)  # (c2, j, dy, i, dx) of the reinterpreted buffer
            return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, *self.out_shape)
        blocks = x.reshape(b, c, h // s, s, w // s, s)  # (cc, j, dy, i, dx)
        return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, *self.out_shape)


class Yolo(nn.Module):
    """darknet's [yolo] output: logistic on x, y, objectness and classes (unless ``new_coords``), then
    ``x·scale_x_y − (scale_x_y − 1)/2`` on x and y. Width and height stay raw.
    Layout ``[n][5+classes][h][w]``."""

    def __init__(self, layer: L.Yolo):
        super().__init__()
        self.n, self.entries = len(layer.mask), layer.classes + layer.box_entries
        self.scale, self.new_coords = layer.scale_x_y, bool(layer.new_coords)
        logistic = torch.ones(self.entries, dtype=torch.bool)
        logistic[2:4] = False
        self.register_buffer("logistic", logistic, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        y = x.view(b, self.n, self.entries, h, w)
        if not self.new_coords:
            y = torch.where(self.logistic.view(1, 1, -1, 1, 1), torch.sigmoid(y), y)
        if self.scale != 1:
            xy = y[:, :, :2] * self.scale - 0.5 * (self.scale - 1)
            y = torch.cat([xy, y[:, :, 2:]], dim=2)
        return y.reshape(b, -1, h, w)


class GaussianYolo(Yolo):
    """Entries x,σx,y,σy,w,σw,h,σh,obj,classes: logistic on 0–3, 5, 7 and 8…; scale on 0 and 2."""

    def __init__(self, layer: L.GaussianYolo):
        super().__init__(layer)
        self.logistic[:] = True
        self.logistic[4] = False
        self.logistic[6] = False

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        y = torch.where(
            self.logistic.view(1, 1, -1, 1, 1),
            torch.sigmoid(x.view(b, self.n, self.entries, h, w)),
            x.view(b, self.n, self.entries, h, w),
        )
        if self.scale != 1:
            scaled = y[:, :, [0, 2]] * self.scale - 0.5 * (self.scale - 1)
            y = y.clone()
            y[:, :, [0, 2]] = scaled
        return y.reshape(b, -1, h, w)


class Region(nn.Module):
    """YOLOv2's [region], per box: channels-last copy, logistic objectness, class softmax (``softmax=1``),
    or with ``tree=`` a softmax within each group of the tree (darknet's ``softmax_tree``, which takes
    precedence). Output ``(batch, h·w·n·(coords+1+classes), 1, 1)`` in darknet's flat order."""

    def __init__(self, layer: L.Region, tree: SoftmaxTree | None = None):
        super().__init__()
        self.n, self.coords, self.classes = layer.num, layer.coords, layer.classes
        self.softmax = bool(layer.softmax)
        if tree is not None and layer.coords != 4:  # darknet's tree softmax starts at entry 5 of each box
            raise CfgError(
                f"layer {layer.index} [region] tree= with coords={layer.coords}: darknet applies the tree "
                "at entry 5 of each box whatever coords is (undefined result); use coords=4",
                layer.where("tree"),
            )
        self.tree = GroupedSoftmax(tree.group_sizes) if tree is not None else None

    def forward(self, x: Tensor) -> Tensor:
        b, _, h, w = x.shape
        entries = self.coords + 1 + self.classes
        boxes = x.view(b, self.n, entries, h, w).permute(0, 3, 4, 1, 2)  # (b, y, x, n, entries)
        obj = torch.sigmoid(boxes[..., self.coords : self.coords + 1])
        cls = boxes[..., self.coords + 1 :]
        if self.tree is not None:
            cls = self.tree(cls)
        elif self.softmax:
            cls = torch.softmax(cls, dim=-1)
        out = torch.cat([boxes[..., : self.coords], obj, cls], dim=-1)
        return out.reshape(b, -1, 1, 1)


class Softmax(nn.Module):
    """Softmax over ``groups`` contiguous chunks of the flat input (divided by ``temperature``), or with
    ``tree=`` over each group of the tree."""

    def __init__(self, layer: L.Softmax, tree: SoftmaxTree | None = None):
        super().__init__()
        self.groups, self.temperature = layer.groups, layer.temperature
        self.tree = GroupedSoftmax(tree.group_sizes, layer.temperature) if tree is not None else None

    def forward(self, x: Tensor) -> Tensor:
        if self.tree is not None:
            return self.tree(x.reshape(x.shape[0], -1)).reshape(x.shape)
        flat = x.reshape(x.shape[0], self.groups, -1)
        return torch.softmax(flat / self.temperature, dim=-1).reshape(x.shape)


class GroupedSoftmax(nn.Module):
    """Softmax over consecutive groups of the last dimension (``group_sizes`` tile it), divided by
    ``temperature``. Groups of equal size are gathered into one ``(groups, size)`` block each, so the work
    is one softmax per distinct size (YOLO9000's 9418 classes: 3k groups, a few dozen sizes)."""

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


class Crop(nn.Module):
    def __init__(self, layer: L.Crop):
        super().__init__()
        _, h, w = layer.in_shape
        self.top, self.left = (h - layer.crop_height) // 2, (w - layer.crop_width) // 2
        self.size = (layer.crop_height, layer.crop_width)
        self.adjust = not layer.noadjust

    def forward(self, x: Tensor) -> Tensor:
        y = x[:, :, self.top : self.top + self.size[0], self.left : self.left + self.size[1]]
        return y * 2 - 1 if self.adjust else y


class Implicit(nn.Module):
    def __init__(self, layer: L.Implicit):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(layer.filters * layer.atoms))
        self.shape = layer.out_shape

    def forward(self, x: Tensor) -> Tensor:
        return self.weight.view(1, *self.shape).expand(x.shape[0], *self.shape)


class LRN(nn.Module):
    """darknet: ``x · (kappa + alpha·S_k)^-beta`` (alpha not divided by size), S_k the running sum of squares
    forward_normalization_layer keeps: S_0 = channels 0 … size/2 − 1, then channel k adds ``k + size/2`` and
    drops ``k − (size−1)/2 − 1``. Channel size/2 is never added but is dropped later, so S_k is the textbook
    window ``[k − (size−1)/2, k + size/2]`` minus x²(size/2); we compute what darknet computes."""

    def __init__(self, layer: L.Normalization):
        super().__init__()
        self.size, self.alpha, self.beta, self.kappa = layer.size, layer.alpha, layer.beta, layer.kappa

    def forward(self, x: Tensor) -> Tensor:
        squared = x * x
        c = x.shape[1]
        ahead, behind = self.size // 2, (self.size - 1) // 2 + 1
        first = squared[:, :ahead].sum(dim=1, keepdim=True)
        added = squared[:, ahead + 1 :]  # enters at channel k = 1 … c − 1 − ahead
        dropped = squared[:, : max(0, c - behind)]  # leaves at channel k = behind …
        step = F.pad(added, (0, 0, 0, 0, 1, c - 1 - added.shape[1])) - F.pad(
            dropped, (0, 0, 0, 0, c - dropped.shape[1], 0)
        )
        norms = self.kappa + self.alpha * (first + step.cumsum(dim=1))
        return x * norms.pow(-self.beta)


class Identity(nn.Module):
    def forward(self, x: Tensor, *rest: Tensor) -> Tensor:
        return x


class DetectionSoftmax(nn.Module):
    """YOLOv1 [detection] with softmax=1: softmax over each cell's classes (first block of the buffer)."""

    def __init__(self, layer: L.Detection):
        super().__init__()
        self.classes = int(layer.options.get("classes", "1"))
        self.side = int(layer.options.get("side", "7"))

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        cells = self.side * self.side
        probs = torch.softmax(flat[:, : cells * self.classes].view(-1, cells, self.classes), dim=-1)
        return torch.cat([probs.reshape(x.shape[0], -1), flat[:, cells * self.classes :]], dim=1).view(
            x.shape
        )


BUILDERS: dict[type[L.Layer], Callable[[L.Layer], nn.Module]] = {
    L.Convolutional: lambda layer: BinaryConv(layer) if is_binary_conv(layer) else Conv(layer),
    L.Connected: Connected,
    L.BatchNorm: BatchNorm,
    L.MaxPool: lambda layer: MaxPoolDepth(layer) if layer.maxpool_depth else Pool(layer, average=False),
    L.LocalAvgPool: lambda layer: Pool(layer, average=True),
    L.AvgPool: lambda layer: GlobalAvgPool(),
    L.Upsample: Upsample,
    L.Route: Route,
    L.Shortcut: Shortcut,
    L.ScaleChannels: ScaleChannels,
    L.Sam: Sam,
    L.Reorg3d: lambda layer: Reorg(layer, old=False),
    L.Reorg: lambda layer: Reorg(layer, old=True),
    L.Yolo: Yolo,
    L.GaussianYolo: GaussianYolo,
    L.Region: Region,
    L.Detection: lambda layer: DetectionSoftmax(layer) if layer.options.get("softmax") == "1" else Identity(),
    L.Softmax: Softmax,
    L.Activation: lambda layer: Activation(layer.activation),
    L.Crop: Crop,
    L.Implicit: Implicit,
    L.Normalization: LRN,
    L.Dropout: lambda layer: Identity(),
    L.Empty: lambda layer: Identity(),
    L.Cost: lambda layer: Identity(),
    L.Contrastive: lambda layer: Identity(),
}

HEADS = (L.Yolo, L.Region, L.Detection)


class DarknetModel(nn.Module):
    """The whole network. ``forward(x)`` returns the outputs of the detection heads (or of the last layer
    when there is none); ``forward(x, keep=[i, …])`` returns those layers' outputs instead."""

    def __init__(self, graph: Graph, tree: str | Path | None = None):
        super().__init__()
        self.graph = graph
        tree = tree if tree is not None else graph.tree_file
        self.blocks = nn.ModuleList(_build(layer, tree) for layer in graph.layers)
        self.sources = [[graph.index_of(node) for node in layer.inputs] for layer in graph.layers]
        self.shares = {
            i: graph.index_of(layer.shares)
            for i, layer in enumerate(graph.layers)
            if isinstance(layer, L.Convolutional) and layer.shares is not None
        }
        for i, j in self.shares.items():  # share_index: the same tensors, each layer its own geometry
            self.blocks[i].conv.weight = self.blocks[j].conv.weight
            self.blocks[i].conv.bias = self.blocks[j].conv.bias
            self.blocks[i].bn = self.blocks[j].bn
        heads = [i for i, layer in enumerate(graph.layers) if isinstance(layer, HEADS)]
        self.heads = heads or [len(graph.layers) - 1]
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


# Layers with ``tree=``: built with their softmax tree, over the values it covers.
TREE_BUILDERS: dict[type[L.Layer], tuple[Callable[[L.Layer], int], Callable[..., nn.Module]]] = {
    L.Region: (lambda layer: layer.classes, Region),
    L.Softmax: (lambda layer: math.prod(layer.in_shape), Softmax),
}


def _build(layer: L.Layer, tree: str | Path | None = None) -> nn.Module:
    if has_tree(layer):
        entries, builder = TREE_BUILDERS[type(layer)]
        return builder(layer, load_tree(layer, entries(layer), tree))
    builder = BUILDERS.get(type(layer))
    if builder is None:
        raise CfgError(f"layer {layer.index} [{layer.header}] has no PyTorch implementation", layer.where())
    return builder(layer)


# -- weights between the IR and the module ---------------------------------------------------------------

# For each module kind: IR tensor name → parameter / buffer path inside the block.
_CONV_BN = {
    "biases": "bn.bias",
    "scales": "bn.weight",
    "rolling_mean": "bn.running_mean",
    "rolling_variance": "bn.running_var",
    "weights": "conv.weight",
}
_CONV = {"biases": "conv.bias", "weights": "conv.weight"}
_FC_BN = {
    "biases": "bn.bias",
    "scales": "bn.weight",
    "rolling_mean": "bn.running_mean",
    "rolling_variance": "bn.running_var",
    "weights": "fc.weight",
}
_FC = {"biases": "fc.bias", "weights": "fc.weight"}
_BN = {
    "biases": "bn.bias",
    "scales": "bn.weight",
    "rolling_mean": "bn.running_mean",
    "rolling_variance": "bn.running_var",
}


def tensor_paths(layer: L.Layer) -> dict[str, str]:
    """Where each of the layer's ``.weights`` tensors lives in its block."""
    if isinstance(layer, L.Convolutional):
        return _CONV_BN if layer.batch_normalize else _CONV
    if isinstance(layer, L.Connected):
        return _FC_BN if layer.batch_normalize else _FC
    if isinstance(layer, L.BatchNorm):
        return _BN
    if isinstance(layer, L.Shortcut | L.Implicit):
        return {"weights": "weight"}
    return {}


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
