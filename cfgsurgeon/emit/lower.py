"""What each darknet layer computes, decided once and framework-free: every layer becomes a short chain of
primitive ops (frozen dataclasses) whose fields leave no darknet rule to re-derive, plus the binding of its
``.weights`` tensors to the ops that consume them.

``layers.py`` says what a section *is* (options, shape, ``.weights`` layout); this module says what it
*computes*: explicit padding (darknet's pool windows included), strides, dilation, groups, crops, which head
entries go through the logistic, the shortcut weights' normalisation, batch-norm epsilon, and the refusals
(:mod:`.darknet_rules`). A backend maps each op type to one function of its framework
(:mod:`.torch_ops` for PyTorch) and needs no knowledge of darknet beyond that.

A layer's ops run in order. With several inputs, the ops before the first *joining* op (:class:`Concat`,
:class:`WeightedSum`, :class:`Scale`) run on each input separately and the joining op takes the list; no
op at all means the layer passes its (first) input on. Ops that own tensors (:class:`Conv2d`,
:class:`BatchNorm`, :class:`Linear`, :class:`Blur`, :class:`Parameter`, :class:`TreeGroups`) occupy one
``slot`` of the layer each; inside another op's fields (:class:`BinaryConv`, :class:`WeightedSum`, …) they
are that op's tensors, in the chain they are applied to the running value.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .. import layers as L
from .. import registry
from ..errors import CfgError
from ..tree import has_tree, load_tree
from . import darknet_rules as rules

BN_EPS = 1e-5  # darknet's normalize_cpu

TreePath = str | Path | None


# -- ops that own tensors ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv2d:
    """Cross-correlation; explicit symmetric zero padding ``(pad_h, pad_w)`` each side (dilation counted)."""

    slot: ClassVar[str] = "conv"
    in_channels: int
    filters: int
    size: int
    stride: tuple[int, int]  # (y, x)
    padding: tuple[int, int]  # (h, w), each side
    dilation: int
    groups: int
    bias: bool


@dataclass(frozen=True)
class BatchNorm:
    """``(x − mean)/√(var + eps)·scale + bias`` per channel; ``spatial=False``: over a (batch, n) matrix."""

    slot: ClassVar[str] = "bn"
    channels: int
    eps: float = BN_EPS
    spatial: bool = True


@dataclass(frozen=True)
class Linear:
    """``[connected]``'s matrix product on a flattened input."""

    slot: ClassVar[str] = "fc"
    inputs: int
    outputs: int
    bias: bool


@dataclass(frozen=True)
class Blur:
    """The fixed depthwise blur after an antialiased convolution: 3×3 binomial (``kind=1``, pad 1) or 2×2
    box (``kind=2``, pad 0), at the layer's stride."""

    slot: ClassVar[str] = "blur"
    channels: int
    kind: int
    stride: tuple[int, int]  # (y, x)


@dataclass(frozen=True)
class Parameter:
    """A learned tensor of ``shape``, initially ``value`` everywhere; ``name``: its name in generated code,
    ``slot``: in the layer's module (an op with two parameters gives the second another slot)."""

    shape: tuple[int, ...]
    value: float
    name: str
    slot: str = "weight"


@dataclass(frozen=True)
class TreeGroups:
    """A softmax over each group of a softmax tree (``group_sizes`` tile the values), inputs ÷ temperature."""

    slot: ClassVar[str] = "tree"
    group_sizes: tuple[int, ...]
    temperature: float


ModuleOp = Conv2d | BatchNorm | Linear | Blur | Parameter | TreeGroups
MODULE_OPS = (Conv2d, BatchNorm, Linear, Blur, Parameter, TreeGroups)


# -- computing ops -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Act:
    """A darknet activation by name (never ``linear``: that is no op)."""

    name: str


@dataclass(frozen=True)
class BinaryConv:
    """``xnor=1`` / ``binary=1`` convolution before its activation: ``bn`` folded into ``conv``'s weights,
    each filter binarised to ±mean|w|; ``xnor`` binarises the input to ±1 too, and ``minus_one_pad`` pads it
    with −1 on every side where darknet's bit-packed GEMM runs (``conv`` then has no padding, no dilation)."""

    conv: Conv2d
    bn: BatchNorm | None
    xnor: bool
    minus_one_pad: int | None


@dataclass(frozen=True)
class LocallyConnected:
    """darknet's ``[local]`` before its activation: at output position (y, x), the im2col column of the input
    (zero padding ``padding``, channel-major then kernel row and column, darknet's order) times that
    position's ``weights[y, x]`` (filters × channels·size²), plus ``biases`` (one per output value)."""

    weights: Parameter
    biases: Parameter
    size: int
    stride: int
    padding: int


@dataclass(frozen=True)
class MaxPool:
    """darknet's max pooling: ``pads`` (top, bottom, left, right) put the window origin at −padding/2, padded
    taps never win; the output is cut to ``out_hw``."""

    size: int
    stride: tuple[int, int]  # (y, x)
    pads: tuple[int, int, int, int]
    out_hw: tuple[int, int]


@dataclass(frozen=True)
class LocalAvgPool:
    """darknet's ``[local_avgpool]``: :class:`MaxPool`'s windows, the mean over the taps inside the input."""

    size: int
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]
    out_hw: tuple[int, int]


@dataclass(frozen=True)
class MaxPoolDepth:
    """``maxpool_depth=1``: per pixel, the max over channels ``g, g + out_channels, …``."""

    out_channels: int


@dataclass(frozen=True)
class GlobalAvgPool:
    """``[avgpool]``: the mean over height and width."""


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour ×``stride``; a negative stride sums |stride|² blocks read from the flat buffer."""

    stride: int
    scale: float


@dataclass(frozen=True)
class Slice:
    """``[route] groups=``: channel slice ``group_id`` of ``groups`` equal ones (of each input)."""

    groups: int
    group_id: int


@dataclass(frozen=True)
class Concat:
    """Join the inputs along channels."""

    joins: ClassVar[bool] = True


@dataclass(frozen=True)
class WeightedSum:
    """``[shortcut]``: ``w0·x0 + Σ wk·xk`` with ``weights`` (one row per input) normalised by
    ``normalization`` (``none``, ``relu`` or ``softmax``, over the inputs); no weights: a plain sum. A
    narrower input adds to the first channels only, a wider one is cut to the first input's channels."""

    joins: ClassVar[bool] = True
    weights: Parameter | None
    normalization: str


@dataclass(frozen=True)
class Scale:
    """``inputs[1] × inputs[0]``: per channel, or with ``first_channel`` by channel 0 of ``inputs[0]``."""

    joins: ClassVar[bool] = True
    first_channel: bool


@dataclass(frozen=True)
class Reorg:
    """Space-to-depth by ``stride`` to ``out_shape``; ``old``: ``[reorg]``'s memory order (YOLOv2)."""

    stride: int
    out_shape: tuple[int, int, int]
    old: bool


@dataclass(frozen=True)
class HeadAct:
    """A ``[yolo]`` head's output as darknet leaves it: the input read as ``anchors × entries`` maps, the
    entries in the ``logistic`` ranges [start, stop) squashed, then the ``scaled`` entries mapped to
    ``v·scale_x_y − (scale_x_y − 1)/2``."""

    anchors: int
    entries: int
    logistic: tuple[tuple[int, int], ...]
    scaled: tuple[int, ...]
    scale_x_y: float


@dataclass(frozen=True)
class GaussianHeadAct(HeadAct):
    """:class:`HeadAct` on ``[Gaussian_yolo]``'s entry order (x, σx, y, σy, w, σw, h, σh, obj, classes)."""


@dataclass(frozen=True)
class RegionAct:
    """YOLOv2's ``[region]``: per box, channels-last, logistic objectness, then a softmax over the classes
    (``softmax``) or within each group of ``tree``; output flat ``(h·w·anchors·entries, 1, 1)``."""

    anchors: int
    coords: int
    classes: int
    softmax: bool
    tree: TreeGroups | None


@dataclass(frozen=True)
class Softmax:
    """``[softmax]``: softmax of ``groups`` contiguous chunks of the flat input ÷ ``temperature``."""

    groups: int
    temperature: float


@dataclass(frozen=True)
class TreeSoftmax:
    """``[softmax] tree=``: ``tree`` over the flat input."""

    tree: TreeGroups


@dataclass(frozen=True)
class DetectionSoftmax:
    """YOLOv1 ``[detection] softmax=1``: a softmax over each of ``side²`` cells' ``classes`` (first block)."""

    classes: int
    side: int


@dataclass(frozen=True)
class Crop:
    """Rows ``top … top + height``, columns ``left … left + width``; ``adjust``: then ``2x − 1``."""

    top: int
    left: int
    height: int
    width: int
    adjust: bool


@dataclass(frozen=True)
class LRN:
    """darknet's ``[normalization]``: ``x·(kappa + alpha·S)^−beta``, S its running window of squares."""

    size: int
    alpha: float
    beta: float
    kappa: float


@dataclass(frozen=True)
class Implicit:
    """``[implicit]``: the learned ``weights`` as a ``shape`` map per batch item (the input is unused)."""

    weights: Parameter
    shape: tuple[int, int, int]


@dataclass(frozen=True)
class DistributionHeadAct:
    """One level of an anchor-free head (``[anchor_free]``): the input read as 4 sides × ``reg_max`` bins,
    then ``classes`` scores; each side becomes its expected distance ``Σ k·softmax(bins)_k`` (grid cells),
    the scores go through the logistic. Output ``(4 + classes, H, W)``."""

    reg_max: int
    classes: int


@dataclass(frozen=True)
class AnchorFreeBoxes:
    """The levels of :class:`DistributionHeadAct` joined: at each cell centre ``c = (column + 0.5, row +
    0.5)`` the distances (l, t, r, b) become ``((c − lt) + (c + rb))/2 · stride`` (centre) and ``((c + rb) −
    (c − lt)) · stride`` (size), level ``k`` at ``strides[k]``; the cells of every level, row-major, in one
    ``(4 + classes, cells, 1)`` output."""

    joins: ClassVar[bool] = True
    strides: tuple[int, ...]


@dataclass(frozen=True)
class Flatten:
    """(batch, C, H, W) → (batch, C·H·W)."""


@dataclass(frozen=True)
class Unflatten:
    """(batch, n) → (batch, n, 1, 1)."""


Op = Any  # one of the dataclasses above


def joins(op: Op) -> bool:
    return bool(getattr(op, "joins", False))


def arguments(op: Op) -> list[tuple[str, Any]]:
    """The op's fields in order, as (name, value)."""
    return [(f.name, getattr(op, f.name)) for f in dataclasses.fields(op)]


# -- a lowered layer -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Lowered:
    """One layer: its ``ops`` in order; ``params``: each ``.weights`` tensor → ``slot.tensor`` it fills
    (``weight`` for a :class:`Parameter`); ``shares``: ``share_index``'s layer, whose convolution weights and
    batch norm these ops use (the layer keeps its own geometry and stores no tensors)."""

    ops: tuple[Op, ...]
    params: dict[str, str] = field(default_factory=dict)
    shares: int | None = None

    def modules(self) -> Iterator[ModuleOp]:
        """The ops that own tensors, in order (those inside other ops' fields included)."""
        for op in self.ops:
            if isinstance(op, MODULE_OPS):
                yield op
            else:
                yield from (value for _, value in arguments(op) if isinstance(value, MODULE_OPS))

    @property
    def join(self) -> int | None:
        """Index of the op that joins the inputs; the ops before it run on each input."""
        return next((k for k, op in enumerate(self.ops) if joins(op)), None)


def _bn_params() -> dict[str, str]:
    """darknet's batch-norm tensors → the :class:`BatchNorm` slot's."""
    return {
        "biases": "bn.bias",
        "scales": "bn.weight",
        "rolling_mean": "bn.running_mean",
        "rolling_variance": "bn.running_var",
    }


def _act(name: str) -> tuple[Op, ...]:
    return () if name == "linear" else (Act(name),)


# -- one lowering per layer type -----------------------------------------------------------------------------
LOWER: dict[type[L.Layer], Any] = registry.table("lowering")  # the registry's stage, filled below


def lowering(*kinds: type[L.Layer]) -> Callable[[Callable[[Any, TreePath], Lowered]], Callable]:
    """Register the decorated function as the lowering of ``kinds``."""
    return registry.register("lowering", *kinds)


def lower(layer: L.Layer, tree: TreePath = None) -> Lowered:
    """The ops of ``layer`` (refusals raise :class:`CfgError` naming its cfg line). ``tree``: the softmax-tree
    file for ``tree=`` layers (default: looked up as :mod:`cfgsurgeon.tree` says)."""
    function = LOWER.get(type(layer))
    if function is None:
        raise CfgError(
            f"layer {layer.index} [{layer.header}] has no implementation in any backend", layer.where()
        )
    return function(layer, tree)


def conv_geometry(layer: L.Convolutional, bit_packed: bool = False) -> Conv2d:
    """The convolution itself: before an antialiasing blur it runs at stride 1; darknet's bit-packed xnor
    GEMM pads apart (with −1) and ignores dilation."""
    dilation = 1 if bit_packed else layer.effective_dilation
    padding = 0 if bit_packed else layer.effective_padding * dilation
    return Conv2d(
        in_channels=layer.in_shape[0],
        filters=layer.filters,
        size=layer.size,
        stride=(1, 1) if layer.antialiasing else layer.strides,
        padding=(padding, padding),
        dilation=dilation,
        groups=layer.effective_groups,
        bias=not layer.batch_normalize,
    )


@lowering(L.Convolutional)
def _convolutional(layer: L.Convolutional, tree: TreePath) -> Lowered:
    bn = BatchNorm(layer.filters) if layer.batch_normalize else None
    if rules.is_binary_conv(layer):
        rules.check_binary_conv(layer)
        bit_packed = rules.xnor_bit_packed(layer)
        pad = layer.effective_padding if bit_packed else None
        ops: tuple[Op, ...] = (BinaryConv(conv_geometry(layer, bit_packed), bn, bool(layer.xnor), pad),)
        ops += _act(rules.binary_conv_activation(layer))
    else:
        rules.check_conv_geometry(layer)
        ops = (conv_geometry(layer), *([bn] if bn else []), *_act(layer.activation))
    if layer.antialiasing:
        ops += (Blur(layer.filters, layer.antialiasing, layer.strides),)
    if layer.shares is not None:
        return Lowered(ops, {}, layer.shares.index)
    params = (
        {**_bn_params(), "weights": "conv.weight"}
        if bn
        else {"biases": "conv.bias", "weights": "conv.weight"}
    )
    return Lowered(ops, params)


@lowering(L.Connected)
def _connected(layer: L.Connected, tree: TreePath) -> Lowered:
    bn = bool(layer.batch_normalize)
    fc = Linear(math.prod(layer.in_shape), layer.output, bias=not bn)
    norm = (BatchNorm(layer.output, spatial=False),) if bn else ()
    ops = (Flatten(), fc, *norm, *_act(layer.activation), Unflatten())
    params = {**_bn_params(), "weights": "fc.weight"} if bn else {"biases": "fc.bias", "weights": "fc.weight"}
    return Lowered(ops, params)


@lowering(L.Local)
def _local(layer: L.Local, tree: TreePath) -> Lowered:
    rules.check_local(layer)
    shapes = dict(layer.weight_layout())
    weights = Parameter(shapes["weights"], 0.0, "weights")
    biases = Parameter(shapes["biases"], 0.0, "biases", slot="bias")
    op = LocallyConnected(weights, biases, layer.size, layer.stride, rules.local_padding(layer))
    return Lowered((op, *_act(layer.activation)), {"biases": "bias", "weights": "weight"})


@lowering(L.BatchNorm)
def _batchnorm(layer: L.BatchNorm, tree: TreePath) -> Lowered:
    return Lowered((BatchNorm(layer.in_shape[0]),), _bn_params())


def pool_pads(layer: L.MaxPool) -> tuple[int, int, int, int]:
    """darknet's pooling window starts at ``-padding // 2`` (top and left); (top, bottom, left, right) pads
    so every output's window lies in the padded input (padded taps are ignored by the pool)."""
    _, h, w = layer.in_shape
    _, out_h, out_w = layer.out_shape
    top = left = layer.padding // 2
    bottom = max(0, (out_h - 1) * layer.stride_y + layer.size - h - top)
    right = max(0, (out_w - 1) * layer.stride_x + layer.size - w - left)
    return top, bottom, left, right


@lowering(L.MaxPool, L.LocalAvgPool)
def _pool(layer: L.MaxPool, tree: TreePath) -> Lowered:
    if isinstance(layer, L.MaxPool) and layer.maxpool_depth:
        return Lowered((MaxPoolDepth(layer.out_channels),))
    rules.check_pool(layer)
    kind = LocalAvgPool if isinstance(layer, L.LocalAvgPool) else MaxPool
    stride = (layer.stride_y, layer.stride_x)
    return Lowered((kind(layer.size, stride, pool_pads(layer), layer.out_shape[1:]),))


@lowering(L.AvgPool)
def _avgpool(layer: L.AvgPool, tree: TreePath) -> Lowered:
    return Lowered((GlobalAvgPool(),))


@lowering(L.Upsample)
def _upsample(layer: L.Upsample, tree: TreePath) -> Lowered:
    return Lowered((Upsample(layer.stride, layer.scale),))


@lowering(L.Route)
def _route(layer: L.Route, tree: TreePath) -> Lowered:
    ops: tuple[Op, ...] = (Slice(layer.groups, layer.group_id),) if layer.groups > 1 else ()
    return Lowered(ops + ((Concat(),) if len(layer.inputs) > 1 else ()))


SHORTCUT_NORMALIZATION = {"none": "none", "relu": "relu", "avg_relu": "relu", "softmax": "softmax"}


@lowering(L.Shortcut)
def _shortcut(layer: L.Shortcut, tree: TreePath) -> Lowered:
    shape = dict(layer.weight_layout()).get("weights")
    if shape is None:
        return Lowered((WeightedSum(None, "none"), *_act(layer.activation)))
    weights = Parameter(shape, 1.0, "weights")
    normalization = SHORTCUT_NORMALIZATION[layer.weights_normalization]
    return Lowered((WeightedSum(weights, normalization), *_act(layer.activation)), {"weights": "weight"})


@lowering(L.ScaleChannels)
def _scale_channels(layer: L.ScaleChannels, tree: TreePath) -> Lowered:
    return Lowered((Scale(bool(layer.scale_wh)), *_act(layer.activation)))


@lowering(L.Sam)
def _sam(layer: L.Sam, tree: TreePath) -> Lowered:
    return Lowered((Scale(False), *_act(layer.activation)))


@lowering(L.Reorg3d, L.Reorg)
def _reorg(layer: L.Reorg3d, tree: TreePath) -> Lowered:
    rules.check_reorg(layer)
    return Lowered((Reorg(layer.stride, layer.out_shape, isinstance(layer, L.Reorg)),))


def yolo_logistic(layer: L.Yolo) -> tuple[tuple[int, int], ...]:
    """The entry ranges darknet's forward_yolo_layer squashes: all but w, h (entries 2, 3); none with
    ``new_coords=1``. [Gaussian_yolo]: all but w, h (entries 4, 6)."""
    entries = layer.classes + layer.box_entries
    if isinstance(layer, L.GaussianYolo):
        return (0, 4), (5, 6), (7, entries)
    return () if layer.new_coords else ((0, 2), (4, entries))


@lowering(L.Yolo, L.GaussianYolo)
def _yolo(layer: L.Yolo, tree: TreePath) -> Lowered:
    gaussian = isinstance(layer, L.GaussianYolo)
    kind, scaled = (GaussianHeadAct, (0, 2)) if gaussian else (HeadAct, (0, 1))
    entries = layer.classes + layer.box_entries
    return Lowered((kind(len(layer.mask), entries, yolo_logistic(layer), scaled, layer.scale_x_y),))


@lowering(L.AnchorFree)
def _anchor_free(layer: L.AnchorFree, tree: TreePath) -> Lowered:
    head = DistributionHeadAct(layer.reg_max, layer.classes)
    return Lowered((head, AnchorFreeBoxes(tuple(layer.strides))))


@lowering(L.Region)
def _region(layer: L.Region, tree: TreePath) -> Lowered:
    groups = None
    if has_tree(layer):
        groups = TreeGroups(load_tree(layer, layer.classes, tree).group_sizes, 1.0)
        rules.check_region_tree(layer)
    return Lowered((RegionAct(layer.num, layer.coords, layer.classes, bool(layer.softmax), groups),))


@lowering(L.Softmax)
def _softmax(layer: L.Softmax, tree: TreePath) -> Lowered:
    if has_tree(layer):
        groups = load_tree(layer, math.prod(layer.in_shape), tree).group_sizes
        return Lowered((TreeSoftmax(TreeGroups(groups, layer.temperature)),))
    return Lowered((Softmax(layer.groups, layer.temperature),))


@lowering(L.Detection)
def _detection(layer: L.Detection, tree: TreePath) -> Lowered:
    if layer.options.get("softmax") != "1":
        return Lowered(())
    classes, side = int(layer.options.get("classes", "1")), int(layer.options.get("side", "7"))
    return Lowered((DetectionSoftmax(classes, side),))


@lowering(L.Activation)
def _activation(layer: L.Activation, tree: TreePath) -> Lowered:
    return Lowered(_act(layer.activation))


@lowering(L.Crop)
def _crop(layer: L.Crop, tree: TreePath) -> Lowered:
    _, h, w = layer.in_shape
    top, left = (h - layer.crop_height) // 2, (w - layer.crop_width) // 2
    return Lowered((Crop(top, left, layer.crop_height, layer.crop_width, not layer.noadjust),))


@lowering(L.Implicit)
def _implicit(layer: L.Implicit, tree: TreePath) -> Lowered:
    weights = Parameter((layer.filters * layer.atoms,), 0.0, "implicit")
    return Lowered((Implicit(weights, layer.out_shape),), {"weights": "weight"})


@lowering(L.Normalization)
def _normalization(layer: L.Normalization, tree: TreePath) -> Lowered:
    return Lowered((LRN(layer.size, layer.alpha, layer.beta, layer.kappa),))


@lowering(L.Dropout, L.Empty, L.Cost, L.Contrastive)
def _identity(layer: L.Layer, tree: TreePath) -> Lowered:
    """Inference passes these layers' input on unchanged."""
    return Lowered(())
