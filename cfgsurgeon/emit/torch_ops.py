"""The primitive ops of :mod:`.lower` in PyTorch: one function (or module factory) per op, plus darknet's
activations, all computing what darknet's CPU inference computes.

The in-memory model (:mod:`.torch`) calls these functions; the standalone source (:mod:`.torch_source`)
copies their text into the file it writes, so both run the same code. Hence the rules for what lies above
the tables at the end: module-level functions and classes that use only ``math``, ``torch``, ``F``, ``nn``,
``Tensor`` and each other, with ASCII text.

Where darknet's CPU build has a bug (``relu6`` in a convolution, swish/mish in ``[scale_channels]`` give
zeros, ``binary=1`` is ignored) we compute the intended function, as darknet's GPU build does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import lower as lo

# -- darknet's activations (activations.c / gemm.c) ----------------------------------------------------------


def linear(x: Tensor) -> Tensor:
    return x


def leaky(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.1 * x)


def revleaky(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.1 * x)


def relu6(x: Tensor) -> Tensor:
    return x.clamp(0.0, 6.0)


def relie(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, 0.01 * x)


def ramp(x: Tensor) -> Tensor:
    return x * (x > 0) + 0.1 * x


def loggy(x: Tensor) -> Tensor:
    return 2.0 * torch.sigmoid(x) - 1.0


def elu(x: Tensor) -> Tensor:
    return torch.where(x >= 0, x, torch.expm1(x))


def selu(x: Tensor) -> Tensor:
    return torch.where(x >= 0, 1.0507 * x, 1.0507 * 1.6732 * torch.expm1(x))


def gelu(x: Tensor) -> Tensor:
    return 0.5 * x * (1.0 + torch.tanh(0.797885 * x + 0.035677 * x**3))


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def mish(x: Tensor) -> Tensor:
    """x*tanh(softplus(x)) (darknet: softplus is x above 20) as x*n/(n + 2), n = e^x (e^x + 2), an identity.
    Exported graphs keep its accuracy: ONNX has no log1p, and log(1 + e^x) loses it for negative x (measured:
    5e-4 relative in ONNX Runtime, 9e-3 in OpenVINO; this form <= 4e-7 in torch, ONNX Runtime, OpenVINO)."""
    e = torch.exp(x.clamp(max=20.0))
    n = e * (e + 2)
    return torch.where(x > 20, x, x * n / (n + 2))


def hard_mish(x: Tensor) -> Tensor:
    return torch.where(x > 0, x, torch.where(x > -2, x * x / 2 + x, torch.zeros_like(x)))


def plse(x: Tensor) -> Tensor:
    return torch.where(x < -4, 0.01 * (x + 4), torch.where(x > 4, 0.01 * (x - 4) + 1, 0.125 * x + 0.5))


def hardtan(x: Tensor) -> Tensor:
    return x.clamp(-1.0, 1.0)


def lhtan(x: Tensor) -> Tensor:
    return torch.where(x < 0, 0.001 * x, torch.where(x > 1, 0.001 * (x - 1) + 1, x))


def stair(x: Tensor) -> Tensor:
    n = torch.floor(x)
    half = torch.floor(x / 2)
    return torch.where(torch.remainder(n, 2) == 0, half, (x - n) + half)


def normalize_channels(x: Tensor) -> Tensor:
    positive = x.clamp(min=0)
    return positive / (1e-4 + positive.sum(dim=1, keepdim=True))


def normalize_channels_softmax(x: Tensor) -> Tensor:
    e = torch.exp(x)
    return e / (1e-4 + e.sum(dim=1, keepdim=True))


def normalize_channels_softmax_maxval(x: Tensor) -> Tensor:
    return normalize_channels_softmax(x - x.amax(dim=1, keepdim=True))


# -- modules with fixed or structural contents ---------------------------------------------------------------


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


class GroupedSoftmax(nn.Module):
    """Softmax over consecutive groups of the last dimension (group_sizes tile it), divided by the
    temperature: darknet's softmax tree. Groups of equal size are gathered into one (groups, size) block
    each, so the work is one softmax per distinct size (YOLO9000's 9418 classes: 3k groups, a few dozen)."""

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


# -- one function per op -------------------------------------------------------------------------------------


def binary_conv_darknet(
    x: Tensor, conv: nn.Conv2d, bn: nn.BatchNorm2d | None, xnor: bool, minus_one_pad: int | None
) -> Tensor:
    """xnor=1 / binary=1 convolution as darknet's detector test runs it, before the activation: batch norm
    first folded into the weights (fuse_conv_batchnorm), then each filter binarised to +-mean|w| (w > 0;
    binary_align_weights). xnor also binarises the input to +-1 (x > 0) and, in darknet's bit-packed GEMM,
    pads it with -1: (2*agreeing bits - K)*mean|w|. binary=1 alone: darknet's CPU forward ignores it, its
    GPU forward binarises the weights; we compute the binarised one, the intended function."""
    if bn is None:
        weight, bias = conv.weight, conv.bias
    else:  # darknet's fuse_conv_batchnorm: w*g/sqrt(var+eps) and b - g*mean/sqrt(var+eps)
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        weight, bias = conv.weight * factor.view(-1, 1, 1, 1), bn.bias - factor * bn.running_mean
    scale = weight.abs().mean(dim=(1, 2, 3))  # mean |w| of each fused filter
    signs = torch.where(weight > 0, 1.0, -1.0)
    if xnor:
        x = torch.where(x > 0, 1.0, -1.0)
    if minus_one_pad is not None:
        x = F.pad(x, (minus_one_pad,) * 4, value=-1.0)
    y = F.conv2d(x, signs, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def local_darknet(x: Tensor, weights: Tensor, biases: Tensor, size: int, stride: int, padding: int) -> Tensor:
    """[local] before its activation: at each output position, darknet's im2col column (zero padding, order
    channel, kernel row, kernel column) times that position's filters weights[y, x] (filters, c, size, size),
    plus one bias per output value. The column is gathered by strided slices, one per kernel tap."""
    out_h, out_w = biases.shape[1:]
    padded = F.pad(x, (padding,) * 4)
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    taps = [
        padded[:, :, i : i + rows : stride, j : j + cols : stride] for i in range(size) for j in range(size)
    ]
    columns = torch.stack(taps, dim=2).flatten(1, 2)  # (batch, c*size*size, out_h, out_w)
    return torch.einsum("bkhw,hwnk->bnhw", columns, weights.flatten(3)) + biases


def maxpool_darknet(
    x: Tensor, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int], out_hw: tuple[int, int]
) -> Tensor:
    """darknet's max pooling: pads (top, bottom, left, right) of -inf, so taps outside the input never win."""
    top, bottom, left, right = pads
    y = F.max_pool2d(F.pad(x, (left, right, top, bottom), value=-math.inf), size, stride)
    return y[:, :, : out_hw[0], : out_hw[1]]


def local_avgpool_darknet(
    x: Tensor, size: int, stride: tuple[int, int], pads: tuple[int, int, int, int], out_hw: tuple[int, int]
) -> Tensor:
    """darknet's [local_avgpool]: the mean over the taps of each window that lie inside the input."""
    top, bottom, left, right = pads
    total = F.avg_pool2d(F.pad(x, (left, right, top, bottom)), size, stride, divisor_override=1)
    ones = torch.ones_like(x[:1, :1])
    count = F.avg_pool2d(F.pad(ones, (left, right, top, bottom)), size, stride, divisor_override=1)
    return (total / count)[:, :, : out_hw[0], : out_hw[1]]


def maxpool_depth(x: Tensor, out_channels: int) -> Tensor:
    """maxpool_depth=1: per pixel, the max over channels g, g + out_channels, g + 2*out_channels, ..."""
    b, c, h, w = x.shape
    groups = math.ceil(c / out_channels)
    padded = F.pad(x, (0, 0, 0, 0, 0, groups * out_channels - c), value=-math.inf)
    return padded.view(b, groups, out_channels, h, w).amax(dim=1)


def global_avgpool(x: Tensor) -> Tensor:
    return x.mean(dim=(2, 3), keepdim=True)


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


def route_group(x: Tensor, groups: int, group_id: int) -> Tensor:
    """[route] groups=/group_id=: take one of `groups` equal channel slices."""
    return x.chunk(groups, dim=1)[group_id]


def concat(xs: list[Tensor]) -> Tensor:
    return torch.cat(xs, dim=1)


def shortcut_darknet(xs: list[Tensor], weights: Tensor | None, normalization: str) -> Tensor:
    """[shortcut]: w0*x0 + sum(wk*xk) (weights optional); an input with fewer channels adds to the first
    channels only, one with more channels is first cut to the first input's channels."""
    w = None if weights is None else shortcut_weights(weights, normalization)
    out = xs[0] * w[0].view(1, -1, 1, 1) if w is not None else xs[0]
    for k, other in enumerate(xs[1:], start=1):
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
    """darknet's weights_normalization over the inputs (dim 0): relu or softmax, each plus 1e-4 below."""
    if normalization == "relu":
        positive = w.clamp(min=0)
        return positive / (1e-4 + positive.sum(dim=0, keepdim=True))
    if normalization == "softmax":
        e = torch.exp(w - w.amax(dim=0, keepdim=True))
        return e / (1e-4 + e.sum(dim=0, keepdim=True))
    return w


def scale_darknet(xs: list[Tensor], first_channel: bool) -> Tensor:
    """[scale_channels] / [sam]: xs[1] times xs[0] (per channel), or times channel 0 of xs[0]."""
    return xs[1] * (xs[0][:, :1] if first_channel else xs[0])


def reorg_darknet(x: Tensor, stride: int, out_shape: tuple[int, int, int], old: bool) -> Tensor:
    """Space-to-depth. old=True is [reorg] (YOLOv2): darknet reads the input buffer as (C/s^2, H*s, W*s),
    writes it as (C, H, W), then hands it on as (C*s^2, H/s, W/s); old=False is [reorg3d]."""
    b, c, h, w = x.shape
    s = stride
    if old:
        blocks = x.reshape(b, c // (s * s), h, s, w, s)  # (c2, j, dy, i, dx) of the reinterpreted buffer
        return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, *out_shape)
    blocks = x.reshape(b, c, h // s, s, w // s, s)  # (cc, j, dy, i, dx)
    return blocks.permute(0, 3, 5, 1, 2, 4).reshape(b, *out_shape)


def yolo_darknet(
    x: Tensor,
    anchors: int,
    entries: int,
    logistic: tuple[tuple[int, int], ...],
    scaled: tuple[int, ...],
    scale_x_y: float,
) -> Tensor:
    """[yolo] output as darknet leaves it, layout [anchors][entries][h][w]: the entries in the logistic
    ranges [start, stop) squashed, then the scaled ones (x, y) mapped to v*scale_x_y - (scale_x_y - 1)/2."""
    b, _, h, w = x.shape
    y = x.view(b, anchors, entries, h, w)
    squashed = torch.sigmoid(y) if logistic else y  # on the whole tensor: a slice may round differently
    cuts = {0, entries, *(k for run in logistic for k in run)}
    if scale_x_y != 1:
        cuts |= {*scaled, *(k + 1 for k in scaled)}
    bounds = sorted(cuts)
    parts = []
    for start, stop in zip(bounds, bounds[1:], strict=False):
        inside = any(first <= start < end for first, end in logistic)
        part = (squashed if inside else y)[:, :, start:stop]
        if scale_x_y != 1 and start in scaled:
            part = part * scale_x_y - 0.5 * (scale_x_y - 1)
        parts.append(part)
    return torch.cat(parts, dim=2).reshape(b, -1, h, w)


def gaussian_yolo_darknet(
    x: Tensor,
    anchors: int,
    entries: int,
    logistic: tuple[tuple[int, int], ...],
    scaled: tuple[int, ...],
    scale_x_y: float,
) -> Tensor:
    """[Gaussian_yolo]: yolo_darknet on its entries x, sx, y, sy, w, sw, h, sh, obj, classes."""
    return yolo_darknet(x, anchors, entries, logistic, scaled, scale_x_y)


def region_darknet(
    x: Tensor, anchors: int, coords: int, classes: int, softmax: bool, tree: nn.Module | None
) -> Tensor:
    """YOLOv2's [region]: per box, logistic objectness and a softmax over the classes (softmax=1) or within
    each group of the tree (which takes precedence), in darknet's flat channels-last order; output
    (batch, h*w*anchors*(coords+1+classes), 1, 1)."""
    b, _, h, w = x.shape
    entries = coords + 1 + classes
    boxes = x.view(b, anchors, entries, h, w).permute(0, 3, 4, 1, 2)
    obj = torch.sigmoid(boxes[..., coords : coords + 1])
    cls = boxes[..., coords + 1 :]
    if tree is not None:
        cls = tree(cls)
    elif softmax:
        cls = torch.softmax(cls, dim=-1)
    out = torch.cat([boxes[..., :coords], obj, cls], dim=-1)
    return out.reshape(b, -1, 1, 1)


def distribution_head(x: Tensor, reg_max: int, classes: int) -> Tensor:
    """[anchor_free], one level: each side's expected distance over its reg_max softmaxed bins (in grid
    cells), then the class scores through the logistic; output (batch, 4 + classes, h, w)."""
    b, _, h, w = x.shape
    bins = torch.softmax(x[:, : 4 * reg_max].reshape(b, 4, reg_max, h, w), dim=2)
    steps = torch.arange(reg_max, dtype=x.dtype, device=x.device).view(1, 1, reg_max, 1, 1)
    return torch.cat([(bins * steps).sum(dim=2), torch.sigmoid(x[:, 4 * reg_max :])], dim=1)


def anchor_free_boxes(xs: list[Tensor], strides: tuple[int, ...]) -> Tensor:
    """[anchor_free], levels joined: distances (l, t, r, b) around each cell centre (column + 0.5, row + 0.5)
    become the box centre and size in input pixels; output (batch, 4 + classes, cells, 1)."""
    levels = []
    for x, stride in zip(xs, strides, strict=True):
        b, c, h, w = x.shape
        cx = (torch.arange(w, dtype=x.dtype, device=x.device) + 0.5).view(1, 1, w).expand(1, h, w)
        cy = (torch.arange(h, dtype=x.dtype, device=x.device) + 0.5).view(1, h, 1).expand(1, h, w)
        x1, y1, x2, y2 = cx - x[:, 0], cy - x[:, 1], cx + x[:, 2], cy + x[:, 3]
        box = torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=1) * stride
        levels.append(torch.cat([box, x[:, 4:]], dim=1).reshape(b, c, h * w))
    return torch.cat(levels, dim=2)[..., None]


def softmax_darknet(x: Tensor, groups: int, temperature: float) -> Tensor:
    """[softmax]: softmax over `groups` contiguous chunks of the flat input, divided by the temperature."""
    flat = x.reshape(x.shape[0], groups, -1)
    return torch.softmax(flat / temperature, dim=-1).reshape(x.shape)


def softmax_tree_darknet(x: Tensor, tree: nn.Module) -> Tensor:
    """[softmax] tree=: the tree's grouped softmax over the flat input."""
    return tree(x.reshape(x.shape[0], -1)).reshape(x.shape)


def detection_softmax(x: Tensor, classes: int, side: int) -> Tensor:
    """YOLOv1 [detection] with softmax=1: softmax over each cell's classes (the first block of the buffer)."""
    flat = x.reshape(x.shape[0], -1)
    cells = side * side
    probs = torch.softmax(flat[:, : cells * classes].view(-1, cells, classes), dim=-1)
    return torch.cat([probs.reshape(x.shape[0], -1), flat[:, cells * classes :]], dim=1).view(x.shape)


def crop_darknet(x: Tensor, top: int, left: int, height: int, width: int, adjust: bool) -> Tensor:
    """[crop]: the window at (top, left); adjust: then 2x - 1 (darknet's default, noadjust=0)."""
    y = x[:, :, top : top + height, left : left + width]
    return y * 2 - 1 if adjust else y


def lrn_darknet(x: Tensor, size: int, alpha: float, beta: float, kappa: float) -> Tensor:
    """[normalization]: x * (kappa + alpha*S_k)^-beta (alpha not divided by size), S_k the running sum of
    squares forward_normalization_layer keeps: S_0 = channels 0 .. size/2 - 1, then channel k adds
    k + size/2 and drops k - (size-1)/2 - 1. Channel size/2 is never added but is dropped later, so S_k is
    the textbook window [k - (size-1)/2, k + size/2] minus x(size/2)^2; we compute what darknet computes."""
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


def implicit(x: Tensor, weights: Tensor, shape: tuple[int, int, int]) -> Tensor:
    """[implicit]: the learned tensor as a (C, H, W) map for each batch item (x gives only the batch)."""
    return weights.view(1, *shape).expand(x.shape[0], *shape)


def flatten(x: Tensor) -> Tensor:
    return x.flatten(1)


def unflatten(x: Tensor) -> Tensor:
    return x[:, :, None, None]


# -- tables: darknet name / op type -> the function above ----------------------------------------------------

BN_EPS = lo.BN_EPS  # the constant the generated file defines under this name

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "linear": linear,
    "leaky": leaky,
    "revleaky": revleaky,
    "relu": torch.relu,
    "relu6": relu6,
    "relie": relie,
    "ramp": ramp,
    "logistic": torch.sigmoid,
    "loggy": loggy,
    "tanh": torch.tanh,
    "elu": elu,
    "selu": selu,
    "gelu": gelu,
    "swish": swish,
    "mish": mish,
    "hard_mish": hard_mish,
    "plse": plse,
    "hardtan": hardtan,
    "lhtan": lhtan,
    "stair": stair,
    "normalize_channels": normalize_channels,
    "normalize_channels_softmax": normalize_channels_softmax,
    "normalize_channels_softmax_maxval": normalize_channels_softmax_maxval,
}

FUNCTIONS: dict[type, Callable[..., Tensor]] = {
    lo.BinaryConv: binary_conv_darknet,
    lo.LocallyConnected: local_darknet,
    lo.MaxPool: maxpool_darknet,
    lo.LocalAvgPool: local_avgpool_darknet,
    lo.MaxPoolDepth: maxpool_depth,
    lo.GlobalAvgPool: global_avgpool,
    lo.Upsample: upsample_darknet,
    lo.Slice: route_group,
    lo.Concat: concat,
    lo.WeightedSum: shortcut_darknet,
    lo.Scale: scale_darknet,
    lo.Reorg: reorg_darknet,
    lo.HeadAct: yolo_darknet,
    lo.GaussianHeadAct: gaussian_yolo_darknet,
    lo.RegionAct: region_darknet,
    lo.DistributionHeadAct: distribution_head,
    lo.AnchorFreeBoxes: anchor_free_boxes,
    lo.Softmax: softmax_darknet,
    lo.TreeSoftmax: softmax_tree_darknet,
    lo.DetectionSoftmax: detection_softmax,
    lo.Crop: crop_darknet,
    lo.LRN: lrn_darknet,
    lo.Implicit: implicit,
    lo.Flatten: flatten,
    lo.Unflatten: unflatten,
}
