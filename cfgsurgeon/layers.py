"""Typed layer nodes: one class per darknet section type, each stating its options, shape rule, FLOPs and the
tensors it stores in a ``.weights`` file (in file order).

Options stay in ``Layer.options`` as the text darknet would read (the single source of truth, so writing a cfg
back is lossless); the :class:`Opt` descriptors give typed access with darknet's defaults. Options that name
other layers (``layers=``, ``from=``, ``share_index=``, ``yolo_layer=``) are resolved into :class:`Ref` edges
by the graph builder; their text stays only to keep the option's place, and the cfg writer recomputes it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from .errors import CfgError, Location

Shape = tuple[int, int, int]  # (channels, height, width), darknet's C×H×W


def _keys(text: str) -> frozenset[str]:
    return frozenset(text.split())


ACTIVATIONS = _keys(
    "logistic swish mish hard_mish normalize_channels normalize_channels_softmax "
    "normalize_channels_softmax_maxval loggy relu relu6 elu selu gelu relie plse hardtan lhtan linear "
    "ramp revleaky leaky tanh stair"
)

# Read by darknet for every section (parse_network_cfg_custom); kept verbatim, not interpreted here.
COMMON_KEYS = _keys(
    "clip onlyforward dont_update burnin_update stopbackward train_only_bn dontload dontloadscales "
    "learning_rate"
)

_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")


def _parse_int(text: str) -> int:
    if not _INT.fullmatch(text):
        raise ValueError("an integer")
    return int(text)


def _parse_float(text: str) -> float:
    if not _FLOAT.fullmatch(text):
        raise ValueError("a number")
    return float(text)


def _parse_str(text: str) -> str:
    return text


def _parse_ints(text: str) -> list[int]:
    return [_parse_int(t) for t in text.rstrip(",").split(",")]


def _parse_floats(text: str) -> list[float]:
    return [_parse_float(t) for t in text.rstrip(",").split(",")]


def _format(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ",".join(_format(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


class Opt:
    """A typed view of one option; ``default`` is a value or a function of the layer (darknet's defaults
    may depend on other options, e.g. maxpool ``padding = size - 1``)."""

    parsers: ClassVar[dict[type, Callable[[str], Any]]] = {
        int: _parse_int,
        float: _parse_float,
        str: _parse_str,
        list[int]: _parse_ints,
        list[float]: _parse_floats,
    }

    def __init__(self, default: Any, kind: Any = int, choices: frozenset[str] | None = None):
        self.default = default
        self.kind = kind
        self.choices = choices
        self.key = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.key = name

    def parse(self, layer: Node, text: str) -> Any:
        try:
            value = self.parsers[self.kind](text)
        except ValueError as exc:
            raise CfgError(
                f"option '{self.key}' expects {exc}, found '{text}'", layer.where(self.key)
            ) from None
        if self.choices is not None and value not in self.choices:
            allowed = ", ".join(sorted(self.choices))
            raise CfgError(
                f"option '{self.key}' has unknown value '{text}' (one of: {allowed})", layer.where(self.key)
            )
        return value

    def __get__(self, layer: Node | None, owner: type) -> Any:
        if layer is None:
            return self
        text = layer.options.get(self.key)
        if text is None:
            return self.default(layer) if callable(self.default) else self.default
        # Shapes, lowering and checks read options thousands of times: parse each text once per node (a
        # changed text is parsed again; lists are handed out as copies, so a caller cannot alter the cache).
        parsed = layer.parsed_options.get(self.key)
        if parsed is None or parsed[0] != text:
            parsed = layer.parsed_options[self.key] = (text, self.parse(layer, text))
        value = parsed[1]
        return list(value) if isinstance(value, list) else value

    def __set__(self, layer: Node, value: Any) -> None:
        layer.options[self.key] = _format(value)


@dataclass
class Ref:
    """An edge named in the cfg by index; ``relative`` keeps the user's form (``-3`` or ``12``)."""

    target: Node
    relative: bool


class Node:
    """Something with an output: the network input or a layer."""

    kind: ClassVar[str] = ""
    names: ClassVar[tuple[str, ...]] = ()
    known_keys: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self,
        header: str,
        options: dict[str, str],
        file: str = "<string>",
        line: int = 0,
        option_lines: dict[str, int] | None = None,
    ):
        self.header = header
        self.options = options
        self.file = file
        self.line = line
        self.option_lines = option_lines or {}
        self.out_shape: Shape = (0, 0, 0)
        self.parsed_options: dict[str, tuple[str, Any]] = {}  # key → (text, value): see Opt.__get__

    def where(self, key: str | None = None) -> Location:
        line = self.option_lines.get(key, self.line) if key else self.line
        return Location(self.file, line)

    @classmethod
    def typed_options(cls) -> dict[str, Opt]:
        found: dict[str, Opt] = {}
        for klass in reversed(cls.__mro__):
            for key, value in vars(klass).items():
                if isinstance(value, Opt):
                    found[key] = value
                else:
                    found.pop(key, None)  # a subclass may switch an option off
        return found

    def check_options(self, warn: Callable[[str], None]) -> None:
        """Parse every typed option now (errors name the line) and warn about keys darknet does not read."""
        typed = self.typed_options()
        for key, text in self.options.items():
            if key in typed:
                typed[key].parse(self, text)
            elif (
                key not in self.known_keys and key not in COMMON_KEYS and key not in getattr(self, "refs", ())
            ):
                warn(f"{self.where(key)}: unknown option '{key}' in [{self.header}] (kept as written)")


class Net(Node):
    """``[net]``: the network input and training settings."""

    kind = "net"
    names = ("net", "network")
    known_keys = _keys(
        "max_batches batch learning_rate learning_rate_min sgdr_cycle sgdr_mult momentum decay "
        "subdivisions time_steps track augment_speed sequential_subdivisions try_fix_nan "
        "weights_reject_freq equidistant_point badlabels_rejection_percentage num_sigmas_reject_badlabels "
        "ema_alpha use_cuda_graph loss_scale dynamic_minibatch optimized_memory workspace_size_limit_MB "
        "adam B1 B2 eps inputs max_crop min_crop flip blur gaussian_noise mixup cutmix mosaic letter_box "
        "mosaic_bound contrastive contrastive_jit_flip contrastive_color unsupervised label_smooth_eps "
        "resize_step attention adversarial_lr max_chart_loss angle aspect saturation exposure hue power "
        "policy burn_in step scale steps scales seq_scales gamma show_receptive_field beta1 max_epochs "
        "seen"
    )
    width = Opt(0)
    height = Opt(0)
    channels = Opt(0)
    letter_box = Opt(0)

    def infer(self) -> Shape:
        if min(self.channels, self.height, self.width) <= 0:
            raise CfgError("[net] needs positive width, height and channels", self.where())
        return (self.channels, self.height, self.width)


class Layer(Node):
    """A section after ``[net]``. Subclasses state their rules; the base gives darknet's common behaviour."""

    refs: ClassVar[tuple[str, ...]] = ()  # options that name other layers by index
    required_refs: ClassVar[tuple[str, ...]] = ()
    uses_previous: ClassVar[bool] = True  # the implicit "previous layer" is an input

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.index = -1  # position in its graph, kept current by Graph.infer()
        self.sources: dict[str, list[Ref]] = {}
        self.inputs: list[Node] = []
        self.weights: dict[str, np.ndarray] | None = None

    # -- graph structure -------------------------------------------------------------------------------
    def connect(self, previous: Node) -> None:
        """Set ``inputs`` from the implicit previous layer and the resolved references."""
        self.inputs = ([previous] if self.uses_previous else []) + [
            ref.target for key in self.refs for ref in self.sources.get(key, [])
        ]

    @property
    def in_shape(self) -> Shape:
        return self.inputs[0].out_shape

    # -- rules every type states (no silent default: tests/test_registry.py) ---------------------------
    def infer(self) -> Shape:
        """The output shape; a type whose output has its input's shape says ``infer = Layer.same_shape``."""
        raise NotImplementedError(f"[{self.header}] states no shape rule")

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """Tensors stored in ``.weights`` for this layer, in file order; a type that stores none says
        ``weight_layout = Layer.no_tensors``."""
        raise NotImplementedError(f"[{self.header}] states no .weights layout")

    def same_shape(self) -> Shape:
        return self.in_shape

    def no_tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        return []

    def bflops(self) -> float:
        return 0.0

    @property
    def params(self) -> int:
        return sum(math.prod(shape) for _, shape in self.weight_layout())

    def describe(self) -> str:
        """Short geometry for tables (e.g. ``3x3/2``)."""
        return ""

    def shape_error(self, message: str) -> CfgError:
        return CfgError(f"layer {self.index} [{self.header}] {message}", self.where())


def _activation(default: str) -> Opt:
    return Opt(default, str, ACTIVATIONS)


class Convolutional(Layer):
    kind = "convolutional"
    names = ("convolutional", "conv")
    refs = ("share_index",)
    known_keys = _keys(
        "assisted_excitation cbn bin_output sway rotate stretch stretch_sway flipped dot angle grad_centr "
        "reverse coordconv stream wait_stream"
    )
    filters = Opt(1)
    size = Opt(1)
    stride = Opt(1)
    stride_x = Opt(-1)
    stride_y = Opt(-1)
    dilation = Opt(1)
    groups = Opt(1)
    pad = Opt(0)
    padding = Opt(0)
    activation = _activation("logistic")
    batch_normalize = Opt(0)
    antialiasing = Opt(0)
    xnor = Opt(0)
    binary = Opt(0)

    @property
    def strides(self) -> tuple[int, int]:
        """(stride_y, stride_x) as darknet resolves them."""
        sx = self.stride_x if self.stride_x >= 1 else self.stride
        sy = self.stride_y if self.stride_y >= 1 else self.stride
        return sy, sx

    @property
    def effective_padding(self) -> int:
        return self.size // 2 if self.pad else self.padding

    @property
    def effective_dilation(self) -> int:
        return 1 if self.size == 1 else self.dilation

    @property
    def effective_groups(self) -> int:
        return 1 if self.xnor or self.groups < 1 else self.groups

    @property
    def shares(self) -> Layer | None:
        refs = self.sources.get("share_index")
        return refs[0].target if refs else None  # type: ignore[return-value]

    def connect(self, previous: Node) -> None:
        self.inputs = [previous]  # a shared layer lends weights, not data

    def conv_output(self) -> tuple[int, int]:
        """Output (h, w) of the convolution itself (before an antialiasing blur)."""
        _, h, w = self.in_shape
        sy, sx = (1, 1) if self.antialiasing else self.strides
        pad, size = self.effective_padding, self.size
        return (h + 2 * pad - size) // sy + 1, (w + 2 * pad - size) // sx + 1

    def infer(self) -> Shape:
        c = self.in_shape[0]
        if c % self.effective_groups or self.filters % self.effective_groups:
            raise self.shape_error(
                f"groups={self.effective_groups} must divide both the input channels ({c}) "
                f"and filters ({self.filters})"
            )
        shared = self.shares
        if isinstance(shared, Convolutional) and (shared.weight_layout_for(c) != self.weight_layout_for(c)):
            raise self.shape_error(f"share_index points at a layer of different size (line {shared.line})")
        if min(self.strides) < 1:
            sy, sx = self.strides
            raise self.shape_error(f"strides must be >= 1, found stride_x={sx} stride_y={sy}")
        h, w = self.conv_output()
        if self.antialiasing:
            sy, sx = self.strides
            blur, blur_pad = (3, 1) if self.antialiasing == 1 else (2, 0)
            h, w = (h + 2 * blur_pad - blur) // sy + 1, (w + 2 * blur_pad - blur) // sx + 1
        if h <= 0 or w <= 0:
            raise self.shape_error(f"output would be empty ({h}x{w}) for input {self.in_shape}")
        return (self.filters, h, w)

    def weight_layout_for(self, in_channels: int) -> list[tuple[str, tuple[int, ...]]]:
        n = self.filters
        layout: list[tuple[str, tuple[int, ...]]] = [("biases", (n,))]
        if self.batch_normalize:
            layout += [("scales", (n,)), ("rolling_mean", (n,)), ("rolling_variance", (n,))]
        layout.append(("weights", (n, in_channels // self.effective_groups, self.size, self.size)))
        return layout

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return [] if self.shares is not None else self.weight_layout_for(self.in_shape[0])

    def bflops(self) -> float:
        h, w = self.conv_output()
        nweights = (self.in_shape[0] // self.effective_groups) * self.filters * self.size * self.size
        flops = 2.0 * nweights * h * w
        return flops / 32 / 1e9 if self.xnor else flops / 1e9

    def describe(self) -> str:
        sy, sx = self.strides
        stride = f"{sx}" if sx == sy else f"{sx}x{sy}"
        extra = f" g{self.effective_groups}" if self.effective_groups > 1 else ""
        extra += f" d{self.effective_dilation}" if self.effective_dilation > 1 else ""
        return f"{self.size}x{self.size}/{stride}{extra}"


class Connected(Layer):
    kind = "connected"
    names = ("connected", "conn")
    output = Opt(1)
    activation = _activation("logistic")
    batch_normalize = Opt(0)

    def infer(self) -> Shape:
        return (self.output, 1, 1)

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        n, inputs = self.output, math.prod(self.in_shape)
        layout: list[tuple[str, tuple[int, ...]]] = [("biases", (n,)), ("weights", (n, inputs))]
        if self.batch_normalize:
            layout += [("scales", (n,)), ("rolling_mean", (n,)), ("rolling_variance", (n,))]
        return layout


class Local(Layer):
    """``[local]``, darknet's locally connected layer (``local_layer.c``): a convolution whose filters (and
    biases) differ at every output position; no batch norm, groups or dilation."""

    kind = "local"
    names = ("local",)
    filters = Opt(1)
    size = Opt(1)
    stride = Opt(1)
    pad = Opt(0)
    activation = _activation("logistic")

    def local_output(self) -> tuple[int, int]:
        """(out_h, out_w) as darknet's local_out_height/width: ``pad`` (any non-zero value) only means "one
        pixel smaller" there, ``(h - 1)/stride + 1``; without it ``(h - size)/stride + 1``."""
        _, h, w = self.in_shape
        trim = 1 if self.pad else self.size
        return (h - trim) // self.stride + 1, (w - trim) // self.stride + 1

    def infer(self) -> Shape:
        if self.stride < 1:
            raise self.shape_error(f"stride must be >= 1, found {self.stride}")
        h, w = self.local_output()
        if h <= 0 or w <= 0:
            raise self.shape_error(f"output would be empty ({h}x{w}) for input {self.in_shape}")
        return (self.filters, h, w)

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """darknet's load_weights: one bias per output value ``[filters][out_h][out_w]``, then the filters of
        each output position in turn ``[out_h][out_w][filters][channels][size][size]``."""
        (h, w), n, c = self.local_output(), self.filters, self.in_shape[0]
        return [("biases", (n, h, w)), ("weights", (h, w, n, c, self.size, self.size))]

    def bflops(self) -> float:
        return 0.0  # darknet counts none for [local] (make_local_layer sets no bflops), as for [connected]

    def describe(self) -> str:
        return f"{self.size}x{self.size}/{self.stride}"


class MaxPool(Layer):
    kind = "maxpool"
    names = ("maxpool", "max")
    weight_layout = Layer.no_tensors
    known_keys = frozenset({"maxpool_zero_nonmax"})
    stride = Opt(1)
    stride_x = Opt(lambda layer: layer.stride)
    stride_y = Opt(lambda layer: layer.stride)
    size = Opt(lambda layer: layer.stride)
    padding = Opt(lambda layer: layer.size - 1)
    maxpool_depth = Opt(0)
    out_channels = Opt(1)
    antialiasing = Opt(0)

    def infer(self) -> Shape:
        c, h, w = self.in_shape
        if self.maxpool_depth:
            return (self.out_channels, h, w)
        if self.stride_x < 1 or self.stride_y < 1:
            raise self.shape_error(
                f"strides must be >= 1, found stride_x={self.stride_x} stride_y={self.stride_y}"
            )
        out_h = (h + self.padding - self.size) // self.stride_y + 1
        out_w = (w + self.padding - self.size) // self.stride_x + 1
        if out_h <= 0 or out_w <= 0:
            raise self.shape_error(f"output would be empty ({out_h}x{out_w}) for input {self.in_shape}")
        return (c, out_h, out_w)

    def bflops(self) -> float:
        _, out_h, out_w = self.out_shape
        return self.size * self.size * self.in_shape[0] * out_h * out_w / 1e9

    def describe(self) -> str:
        stride = f"{self.stride_x}" if self.stride_x == self.stride_y else f"{self.stride_x}x{self.stride_y}"
        return f"{self.size}x{self.size}/{stride}"


class LocalAvgPool(MaxPool):
    """Average over the valid taps of each window; same geometry as maxpool."""

    kind = "local_avgpool"
    names = ("local_avgpool", "local_avg")
    known_keys = frozenset()
    maxpool_depth = 0  # type: ignore[assignment]
    out_channels = 0  # type: ignore[assignment]


class AvgPool(Layer):
    """Global average pooling to C×1×1."""

    kind = "avgpool"
    names = ("avgpool", "avg")
    weight_layout = Layer.no_tensors

    def infer(self) -> Shape:
        return (self.in_shape[0], 1, 1)


class Route(Layer):
    """Concatenate the listed layers along channels; with ``groups`` take slice ``group_id`` of each."""

    kind = "route"
    names = ("route",)
    weight_layout = Layer.no_tensors
    refs = ("layers",)
    required_refs = ("layers",)
    uses_previous = False
    known_keys = frozenset({"stream", "wait_stream"})
    groups = Opt(1)
    group_id = Opt(0)

    def infer(self) -> Shape:
        shapes = [node.out_shape for node in self.inputs]
        first = shapes[0]
        for node, shape in zip(self.inputs[1:], shapes[1:], strict=True):
            if shape[1:] != first[1:]:
                raise self.shape_error(
                    f"joins outputs of different sizes: {_name(self.inputs[0])} is {format_shape(first)} "
                    f"but {_name(node)} is {format_shape(shape)}"
                )
        if self.groups < 1 or not 0 <= self.group_id < self.groups:
            raise self.shape_error(
                f"needs 0 <= group_id < groups, found groups={self.groups} group_id={self.group_id}"
            )
        for node, shape in zip(self.inputs, shapes, strict=True):
            if shape[0] % self.groups:
                raise self.shape_error(
                    f"groups={self.groups} does not divide the {shape[0]} channels of {_name(node)}"
                )
        return (sum(s[0] for s in shapes) // self.groups, first[1], first[2])


class Shortcut(Layer):
    """``out = w0·previous + Σ wk·from_k`` then activation; inputs may have fewer or more channels."""

    kind = "shortcut"
    names = ("shortcut",)
    refs = ("from",)
    required_refs = ("from",)
    activation = _activation("linear")
    weights_type = Opt("none", str, frozenset({"none", "per_feature", "per_layer", "per_channel"}))
    weights_normalization = Opt("none", str, frozenset({"none", "relu", "avg_relu", "softmax"}))

    def infer(self) -> Shape:
        out = self.in_shape
        for node in self.inputs[1:]:
            if node.out_shape[1:] != out[1:]:
                raise self.shape_error(
                    f"adds outputs of different sizes: {_name(self.inputs[0])} is {format_shape(out)} "
                    f"but {_name(node)} is {format_shape(node.out_shape)}"
                )
        return out

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        n = len(self.inputs)
        if self.weights_type in ("per_feature", "per_layer"):
            return [("weights", (n, 1))]
        if self.weights_type == "per_channel":
            return [("weights", (n, self.out_shape[0]))]
        return []

    def bflops(self) -> float:
        c, h, w = self.out_shape
        return c * h * w * (len(self.inputs) - 1) / 1e9


class ScaleChannels(Layer):
    """Multiply layer ``from`` by per-channel (or, with ``scale_wh``, per-pixel) factors from the input."""

    kind = "scale_channels"
    names = ("scale_channels",)
    weight_layout = Layer.no_tensors
    refs = ("from",)
    required_refs = ("from",)
    scale_wh = Opt(0)
    activation = _activation("linear")

    def infer(self) -> Shape:
        scale, target = self.in_shape, self.inputs[1].out_shape
        per_pixel_ok = scale[1:] == target[1:]
        per_channel_ok = scale[1:] == (1, 1) and scale[0] == target[0]
        if not (per_pixel_ok if self.scale_wh else per_channel_ok):
            need = "the same height and width" if self.scale_wh else f"{target[0]}x1x1"
            raise self.shape_error(
                f"scale input {_name(self.inputs[0])} is {format_shape(scale)}, needs {need} "
                f"to scale {_name(self.inputs[1])} ({format_shape(target)})"
            )
        return target


class Sam(Layer):
    """Spatial attention: element-wise product of the input and layer ``from``."""

    kind = "sam"
    names = ("sam",)
    weight_layout = Layer.no_tensors
    refs = ("from",)
    required_refs = ("from",)
    activation = _activation("linear")

    def infer(self) -> Shape:
        if self.in_shape != self.inputs[1].out_shape:
            raise self.shape_error(
                f"multiplies {_name(self.inputs[0])} ({format_shape(self.in_shape)}) by "
                f"{_name(self.inputs[1])} ({format_shape(self.inputs[1].out_shape)}): shapes differ"
            )
        return self.in_shape


class Upsample(Layer):
    """Nearest-neighbour upsampling by ``stride``; a negative stride sums ``s×s`` blocks (downsampling)."""

    kind = "upsample"
    names = ("upsample",)
    weight_layout = Layer.no_tensors
    stride = Opt(2)
    scale = Opt(1.0, float)

    def infer(self) -> Shape:
        c, h, w = self.in_shape
        s = self.stride
        if s == 0:
            raise self.shape_error("stride must not be 0")
        return (c, h * s, w * s) if s > 0 else (c, h // -s, w // -s)


class Reorg3d(Layer):
    """``[reorg3d]``: space-to-depth with the block offset as the major part of the output channel."""

    kind = "reorg3d"
    names = ("reorg3d",)
    weight_layout = Layer.no_tensors
    stride = Opt(1)
    reverse = Opt(0)

    def infer(self) -> Shape:
        c, h, w = self.in_shape
        s = self.stride
        if s < 1:
            raise self.shape_error("stride must be >= 1")
        if self.reverse:
            if c % (s * s):
                raise self.shape_error(f"reverse needs channels ({c}) divisible by stride² ({s * s})")
            return (c // (s * s), h * s, w * s)
        if h % s or w % s:
            raise self.shape_error(f"input {h}x{w} is not divisible by stride {s}")
        return (c * s * s, h // s, w // s)


class Reorg(Reorg3d):
    """``[reorg]``: YOLOv2's reorg, same geometry as reorg3d but darknet's older memory order."""

    kind = "reorg"
    names = ("reorg",)


class Yolo(Layer):
    kind = "yolo"
    names = ("yolo",)
    weight_layout = Layer.no_tensors
    known_keys = _keys(
        "max show_details max_delta counters_per_class label_smooth_eps objectness_smooth iou_normalizer "
        "obj_normalizer cls_normalizer delta_normalizer iou_loss iou_thresh_kind beta_nms nms_kind jitter "
        "resize focal_loss ignore_thresh truth_thresh iou_thresh random track_history_size sim_thresh "
        "dets_for_track dets_for_show track_ciou_norm embedding_layer map"
    )
    box_entries: ClassVar[int] = 5
    classes = Opt(20)
    num = Opt(1)
    mask = Opt(lambda layer: list(range(layer.num)), list[int])
    anchors = Opt(lambda layer: [], list[float])
    scale_x_y = Opt(1.0, float)
    new_coords = Opt(0)

    def infer(self) -> Shape:
        expected = len(self.mask) * (self.classes + self.box_entries)
        if self.in_shape[0] != expected:
            raise self.shape_error(
                f"needs {expected} input channels ({len(self.mask)} masks × (classes {self.classes} + "
                f"{self.box_entries})) but {_name(self.inputs[0])} gives {self.in_shape[0]}"
            )
        return self.in_shape

    def check_options(self, warn: Callable[[str], None]) -> None:
        super().check_options(warn)
        num = self.num
        outside = [m for m in self.mask if not 0 <= m < num]
        if outside:  # darknet reads past its anchor table here without complaint
            warn(f"{self.where('mask')}: mask {outside} is outside 0..{num - 1} (num={num})")
        if len(self.anchors) < 2 * self.num and "anchors" in self.options:
            warn(
                f"{self.where('anchors')}: {len(self.anchors)} anchor values for num={self.num} "
                f"(darknet fills the missing ones with 0.5)"
            )


class GaussianYolo(Yolo):
    kind = "Gaussian_yolo"
    names = ("Gaussian_yolo",)
    known_keys = Yolo.known_keys | {"uc_normalizer", "yolo_point"}
    box_entries = 9


class Region(Layer):
    kind = "region"
    names = ("region",)
    weight_layout = Layer.no_tensors
    known_keys = _keys(
        "max log sqrt focal_loss jitter resize rescore thresh classfix absolute random "
        "coord_scale object_scale noobject_scale mask_scale class_scale bias_match tree map"
    )
    classes = Opt(20)
    coords = Opt(4)
    num = Opt(1)
    softmax = Opt(0)
    anchors = Opt(lambda layer: [], list[float])

    def infer(self) -> Shape:
        expected = self.num * (self.coords + 1 + self.classes)
        if self.in_shape[0] != expected:
            raise self.shape_error(
                f"needs {expected} input channels (num {self.num} × (coords {self.coords} + 1 + classes "
                f"{self.classes})) but {_name(self.inputs[0])} gives {self.in_shape[0]}"
            )
        return self.in_shape


class Detection(Layer):
    """YOLOv1's detection layer (output = input)."""

    kind = "detection"
    names = ("detection",)
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    known_keys = _keys(
        "coords classes rescore num side softmax sqrt max coord_scale forced object_scale noobject_scale "
        "class_scale jitter resize random reorg"
    )


class Softmax(Layer):
    kind = "softmax"
    names = ("softmax", "soft")
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    known_keys = frozenset({"tree", "spatial", "noloss"})
    groups = Opt(1)
    temperature = Opt(1.0, float)


class Dropout(Layer):
    kind = "dropout"
    names = ("dropout",)
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    known_keys = frozenset({"dropblock", "dropblock_size_rel", "dropblock_size_abs"})
    probability = Opt(0.2, float)


class BatchNorm(Layer):
    kind = "batchnorm"
    names = ("batchnorm",)
    infer = Layer.same_shape

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        c = self.in_shape[0]
        return [("biases", (c,)), ("scales", (c,)), ("rolling_mean", (c,)), ("rolling_variance", (c,))]


class Activation(Layer):
    kind = "activation"
    names = ("activation",)
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    activation = _activation("linear")


class Crop(Layer):
    """Centre crop to ``crop_height × crop_width`` (then ``2x - 1`` unless ``noadjust``)."""

    kind = "crop"
    names = ("crop",)
    weight_layout = Layer.no_tensors
    known_keys = frozenset({"flip", "angle", "saturation", "exposure", "shift"})
    crop_height = Opt(1)
    crop_width = Opt(1)
    noadjust = Opt(0)

    def infer(self) -> Shape:
        return (self.in_shape[0], self.crop_height, self.crop_width)


class Cost(Layer):
    kind = "cost"
    names = ("cost",)
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    known_keys = frozenset({"type", "scale", "ratio"})


class Contrastive(Layer):
    kind = "contrastive"
    names = ("contrastive",)
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    refs = ("yolo_layer",)
    known_keys = frozenset({"classes", "temperature", "cls_normalizer", "max_delta", "contrastive_neg_max"})

    def connect(self, previous: Node) -> None:
        self.inputs = [previous]  # yolo_layer names the head it learns from, not a data input


class Empty(Layer):
    kind = "empty"
    names = ("empty", "silence")
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors


class Implicit(Layer):
    """A learned constant tensor of ``filters × atoms × 1`` (ignores its input)."""

    kind = "implicit"
    names = ("implicit",)
    known_keys = frozenset({"mean", "std"})
    filters = Opt(128)
    atoms = Opt(1)

    def infer(self) -> Shape:
        return (self.filters, self.atoms, 1)

    def weight_layout(self) -> list[tuple[str, tuple[int, ...]]]:
        return [("weights", (self.filters * self.atoms,))]


class Normalization(Layer):
    """Local response normalisation."""

    kind = "normalization"
    names = ("normalization", "lrn")
    infer = Layer.same_shape
    weight_layout = Layer.no_tensors
    alpha = Opt(0.0001, float)
    beta = Opt(0.75, float)
    kappa = Opt(1.0, float)
    size = Opt(5)


class AnchorFree(Layer):
    """``[anchor_free]``: YOLOv8's anchor-free detection head (ultralytics' ``Detect`` with DFL) after its
    convolutions. Each input (``layers=``, one per level, finest first) holds per cell ``4 × reg_max`` box
    logits (left, top, right, bottom: ``reg_max`` bins each) then ``classes`` class logits; ``strides``:
    the levels' strides in input pixels. The output is the decoded ``(4 + classes, cells, 1)``: per cell
    (level by level, row-major) the box centre x, y, width and height in input pixels, then the class
    probabilities."""

    kind = "anchor_free"
    names = ("anchor_free",)
    weight_layout = Layer.no_tensors
    refs = ("layers",)
    required_refs = ("layers",)
    uses_previous = False
    classes = Opt(80)
    reg_max = Opt(16)
    strides = Opt(lambda layer: [8, 16, 32], list[int])

    @property
    def box_channels(self) -> int:
        return 4 * self.reg_max

    def infer(self) -> Shape:
        strides, expected = self.strides, self.box_channels + self.classes
        if self.reg_max < 1 or self.classes < 1 or min(strides, default=0) < 1:
            raise self.shape_error("needs reg_max >= 1, classes >= 1 and positive strides")
        if len(strides) != len(self.inputs):
            raise self.shape_error(f"has {len(self.inputs)} inputs (layers=) but {len(strides)} strides")
        for node in self.inputs:
            if node.out_shape[0] != expected:
                raise self.shape_error(
                    f"needs {expected} input channels (4 × reg_max {self.reg_max} + classes {self.classes}) "
                    f"but {_name(node)} gives {node.out_shape[0]}"
                )
        cells = sum(node.out_shape[1] * node.out_shape[2] for node in self.inputs)
        return (4 + self.classes, cells, 1)


LAYER_TYPES: dict[str, type[Layer]] = {
    name: cls
    for cls in (
        Convolutional,
        Connected,
        Local,
        MaxPool,
        LocalAvgPool,
        AvgPool,
        Route,
        Shortcut,
        ScaleChannels,
        Sam,
        Upsample,
        Reorg3d,
        Reorg,
        Yolo,
        GaussianYolo,
        Region,
        Detection,
        Softmax,
        Dropout,
        BatchNorm,
        Activation,
        Crop,
        Cost,
        Contrastive,
        Empty,
        Implicit,
        Normalization,
        AnchorFree,
    )
    for name in cls.names
}

# The detection heads whose input is laid out per anchor as [box entries…, class scores…] (Gaussian_yolo is a
# Yolo): what `darknet detector test` decodes, training scores and retargeting resizes.
ANCHOR_HEADS: tuple[type[Layer], ...] = (Yolo, Region)

UNSUPPORTED = {
    "rnn": "recurrent layers are not supported",
    "gru": "recurrent layers are not supported",
    "lstm": "recurrent layers are not supported",
    "conv_lstm": "recurrent layers are not supported",
    "crnn": "recurrent layers are not supported",
    "history": "recurrent layers are not supported",
}


def format_shape(shape: Shape) -> str:
    """Darknet's way of printing a shape: width x height x channels."""
    c, h, w = shape
    return f"{w}x{h}x{c}"


def _name(node: Node) -> str:
    return "the network input" if isinstance(node, Net) else f"layer {getattr(node, 'index', '?')}"
